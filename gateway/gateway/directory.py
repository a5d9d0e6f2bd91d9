"""The model directory: which service holds which model, learnt from every service's repository index.

Nothing about any model is written in the gateway: a model folder added to a service shows up in that
service's `POST /v2/repository/index`, and the directory picks it up

- when its view is older than `ttl_seconds` (in the background: the request that notices is answered
  from the current view), and
- at once on an unknown name, at most once per `miss_interval_seconds` so that a stream of made-up
  names cannot turn into a stream of index reads.

Concurrent callers share one re-read. A service that stops answering keeps its last known models for
`stale_after_seconds` from the first re-read it failed, so a short restart does not make its models
unknown (however long ago the last re-read was). A name two services claim is
a 409 naming both, never a guess.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from gateway.upstream import Upstream, UpstreamClient
from modelgate_core.errors import Conflict, ModelGateError, NotFound, ServiceUnavailable
from modelgate_core.oip.types import RepositoryEntry
from modelgate_core.repository.settings import is_model_name

logger = logging.getLogger("gateway.directory")

# service name -> that service's index entries; raises (anything) when the service gives none.
IndexFetcher = Callable[[str], Awaitable[list[RepositoryEntry]]]


class IndexUnavailable(Exception):
    """A service gave no usable repository index."""


@dataclass(frozen=True, slots=True)
class ModelLocation:
    """Where a model lives: the service that claims it and the versions it lists."""

    name: str
    service: str
    versions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _ServiceView:
    entries: tuple[RepositoryEntry, ...]
    answered_at: float  # clock time of the last answer these entries came from
    answering: bool  # whether the latest attempt got an answer
    # Clock time of the first failed attempt since the last answer: staleness counts from there, not
    # from the last answer, which may be long ago when no traffic asked for a re-read.
    silent_since: float | None = None


class ModelDirectory:
    """Which service holds which model; see the module docstring for when it re-reads."""

    def __init__(
        self,
        services: Sequence[str],
        fetch_index: IndexFetcher,
        *,
        ttl_seconds: float = 2.0,
        stale_after_seconds: float = 30.0,
        miss_interval_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services = tuple(services)
        self.fetch_index = fetch_index
        self.ttl_seconds = ttl_seconds
        self.stale_after_seconds = stale_after_seconds
        self.miss_interval_seconds = miss_interval_seconds
        self.clock = clock
        self._views: dict[str, _ServiceView] = {}
        self._owners: dict[str, tuple[str, ...]] = {}
        self._refreshed_at: float | None = None
        self._last_miss_refresh: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._starts = 0  # how many re-reads have started; orders them for `refresh`
        self._reported_conflicts: dict[str, tuple[str, ...]] = {}

    async def locate(
        self, name: str, version: str | None = None, *, always_refresh_on_miss: bool = False
    ) -> ModelLocation:
        """The service holding `name` (and `version`, when given).

        404 when unknown even after a re-read, 503 when unknown but some service is not answering (it
        may hold it), 409 when two services claim it.
        `always_refresh_on_miss` skips the miss rate limit (for rare admin calls).
        """
        just_read = self._refreshed_at is None
        if just_read:
            await self.refresh()
        elif self.clock() - self._refreshed_at >= self.ttl_seconds and not self._running():  # type: ignore[operator]
            # Stale: re-read in the background and answer from the current view meanwhile, so that no
            # request on a known model waits for three index reads (an unknown name still waits).
            self._starts += 1
            self._task = asyncio.create_task(self._read_all(), context=contextvars.Context())
        location = self._find(name, version)
        if location is None:
            now = self.clock()
            due = (
                self._last_miss_refresh is None or now - self._last_miss_refresh >= self.miss_interval_seconds
            )
            if just_read and not always_refresh_on_miss:
                self._last_miss_refresh = now  # the read this call just waited for is as fresh as any
            elif due or always_refresh_on_miss:
                self._last_miss_refresh = now
                await self.refresh(reuse_running=not always_refresh_on_miss)
            elif self._running():
                await self.refresh()  # one is under way anyway: sharing it costs nothing
            location = self._find(name, version)
        if location is None:
            silent = [s for s in self.services if not (v := self._views.get(s)) or not v.answering]
            # A version its answering owner does not list is unknown: no other service can hold it.
            if silent and not (version is not None and name in self._owners):
                # A service that does not answer may hold it: not knowing is not "there is none".
                raise ServiceUnavailable(
                    f"{self._unknown_message(name, version)} among the services that answer; "
                    f"not answering now: {', '.join(silent)}",
                    headers={"retry-after": "1"},
                )
            raise NotFound(self._unknown_message(name, version))
        return location

    async def refresh(self, *, reuse_running: bool = True) -> None:
        """Re-read every service's index.

        `reuse_running=True` joins a re-read already under way; False waits for one that starts after
        this call (what a caller needs after it changed a service's repository itself).
        """
        floor = self._starts - 1 if reuse_running and self._running() else self._starts
        while True:
            task = self._task
            if task is not None and not task.done():
                # shield: a caller that goes away (client disconnect) must not cancel everyone's re-read.
                await asyncio.shield(task)
                if self._starts > floor:
                    return
                continue
            if self._starts > floor:
                return
            self._starts += 1
            self._task = asyncio.create_task(self._read_all())

    def entries(self) -> list[RepositoryEntry]:
        """Every known index entry, sorted by name and version.

        The last known entries of a service that did not answer the latest re-read are reported
        UNAVAILABLE with that as the reason, rather than as whatever they were.
        """
        merged: list[RepositoryEntry] = []
        for service, view in self._views.items():
            for entry in view.entries:
                if view.answering:
                    merged.append(entry)
                else:
                    reason = f"the {service} service is not answering"
                    merged.append(entry.model_copy(update={"state": "UNAVAILABLE", "reason": reason}))
        return sorted(merged, key=lambda e: (e.name, e.version or ""))

    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _find(self, name: str, version: str | None) -> ModelLocation | None:
        owners = self._owners.get(name)
        if not owners:
            return None
        if len(owners) > 1:
            raise Conflict(
                f"Model '{name}' is claimed by several services: {', '.join(owners)}; "
                "rename one of the model folders"
            )
        service = owners[0]
        versions = tuple(
            e.version for e in self._views[service].entries if e.name == name and e.version is not None
        )
        if version is not None and version not in versions:
            return None
        return ModelLocation(name, service, versions)

    def _unknown_message(self, name: str, version: str | None) -> str:
        message = (
            f"Unknown version '{version}' of model '{name}'"
            if version is not None and name in self._owners
            else f"Unknown model '{name}'"
        )
        return message

    async def _read_all(self) -> None:
        results = await asyncio.gather(*(self._read(s) for s in self.services), return_exceptions=True)
        now = self.clock()
        for service, result in zip(self.services, results, strict=True):
            if isinstance(result, BaseException):
                self._keep_stale(service, now, result)
            else:
                self._views[service] = _ServiceView(tuple(result), now, answering=True)
        self._rebuild_owners()
        self._refreshed_at = now

    async def _read(self, service: str) -> list[RepositoryEntry]:
        entries = await self.fetch_index(service)
        usable = []
        for entry in entries:
            if is_model_name(entry.name) and (entry.version is None or is_model_name(entry.version)):
                usable.append(entry)
            else:
                logger.warning(
                    "unusable model name in repository index",
                    extra={
                        "upstream": service,
                        "model": entry.name[:100],
                        "version": str(entry.version)[:100],
                    },
                )
        return usable

    def _keep_stale(self, service: str, now: float, error: BaseException) -> None:
        view = self._views.get(service)
        logger.warning(
            "repository index unavailable", extra={"upstream": service, "error": repr(error)[:300]}
        )
        if view is None:
            return
        silent_since = now if view.silent_since is None else view.silent_since
        if now - silent_since >= self.stale_after_seconds:
            del self._views[service]
        else:
            self._views[service] = _ServiceView(view.entries, view.answered_at, False, silent_since)

    def _rebuild_owners(self) -> None:
        owners: dict[str, list[str]] = {}
        for service in self.services:  # configured order, so a conflict names services the same way
            view = self._views.get(service)
            for name in sorted({e.name for e in view.entries} if view else ()):
                owners.setdefault(name, []).append(service)
        self._owners = {name: tuple(services) for name, services in owners.items()}
        conflicts = {name: s for name, s in self._owners.items() if len(s) > 1}
        for name, services in conflicts.items():
            if self._reported_conflicts.get(name) != services:  # once per conflict, not per re-read
                logger.warning(
                    "model claimed by several services", extra={"model": name, "services": list(services)}
                )
        self._reported_conflicts = conflicts


def upstream_index_fetcher(
    client: UpstreamClient, upstreams: Mapping[str, Upstream], timeout: float
) -> IndexFetcher:
    """Read a service's `POST /v2/repository/index` through the pooled client.

    Sent as a probe: a re-read must not trip the breaker that protects real traffic, nor show up as
    the request's upstream in its access-log line. A service whose breaker is open is not asked at
    all (its models stay known, stale, for a while): asking would only make the request that pays for
    the re-read wait on a service known to fail.
    """

    async def fetch(service: str) -> list[RepositoryEntry]:
        upstream = upstreams[service]
        if upstream.breaker.state == "open":
            raise IndexUnavailable("circuit open")
        try:
            answer = await client.request(
                upstream,
                "POST",
                "/v2/repository/index",
                content=b"{}",
                content_type="application/json",
                timeout=timeout,
                probe=True,
            )
        except ModelGateError as exc:
            raise IndexUnavailable(exc.message) from exc
        if answer.status_code != 200:
            raise IndexUnavailable(f"HTTP {answer.status_code}")
        try:
            raw = orjson.loads(answer.content)
            if not isinstance(raw, list):
                raise IndexUnavailable("the index is not a list")
            return [RepositoryEntry.model_validate(item) for item in raw]
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise IndexUnavailable(f"malformed index: {exc}") from exc

    return fetch
