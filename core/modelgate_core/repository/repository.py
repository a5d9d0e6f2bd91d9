"""The model repository as one service's worker sees it: which folders are its models, what is
loaded, and keeping that in step with the folder and with explicit load/unload calls.

Layout: `<root>/<name>/<version>/model-settings.json` + the model's files, and optionally
`<root>/<name>/model.json` (`policy`: which versions are served, the default, a canary, a shadow).
Versions are positive integers (other folder names are ignored with a warning, as Triton does); when a
request names none, the traffic decides (`traffic`): by default the highest ready version. A service
loads the folders whose runtime it owns (`RUNTIME_SERVICES`) and leaves the others to their service;
a folder no service can own (bad JSON, unknown runtime) is reported by the service configured to
report it (`report_unclaimed`).

A version is loaded once its files have stopped changing between two scans (a folder still being
copied in is not loaded half-way), reloaded when they change, and dropped when its folder goes,
after its in-flight requests finish. A version that fails to load is UNAVAILABLE with the reason,
in the index and the logs; it never affects the other models.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio.to_thread

from modelgate_core.artifacts import ArtifactError
from modelgate_core.batching import BatchPolicy
from modelgate_core.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from modelgate_core.metrics import MODEL_READY
from modelgate_core.oip.types import ModelState, RepositoryEntry
from modelgate_core.repository.control import CONTROL_CHECK_SECONDS, Control
from modelgate_core.repository.policy import (
    ModelPolicy,
    ModelPolicyError,
    Traffic,
    TrafficOverrides,
    read_policy,
)
from modelgate_core.repository.runtime import ModelContext, ModelRuntime
from modelgate_core.repository.served import DEFAULT_MAX_QUEUED, INLINE_BELOW_SECONDS, ServedVersion
from modelgate_core.repository.settings import (
    RUNTIME_SERVICES,
    SETTINGS_FILE,
    ModelSettings,
    ModelSettingsError,
    is_model_name,
    read_settings,
)
from modelgate_core.repository.traffic import Mirror, ModelRoutes, Routed

logger = logging.getLogger("modelgate.repository")

RuntimeFactory = Callable[[ModelContext], ModelRuntime]
# Files, sizes and modification times of a version folder: equal signatures, same files.
Signature = tuple[tuple[str, int, int], ...]


@dataclass
class ServingOptions:
    """How this service runs its models: parallel calls per version, batching, requests that may wait
    per version (more are refused with 503), unload patience."""

    max_concurrency: int = 1
    batching: BatchPolicy | None = None
    max_queued: int = DEFAULT_MAX_QUEUED
    unload_timeout: float = 30.0
    # Light models faster than this run on the event loop (see `served.INLINE_BELOW_SECONDS`); 0: never.
    inline_below_seconds: float = INLINE_BELOW_SECONDS


@dataclass
class _Found:
    """A version folder seen by a scan."""

    name: str
    version: str
    folder: Path
    signature: Signature
    settings: ModelSettings | None = None
    error: str = ""


@dataclass
class _Version:
    name: str
    version: str
    state: ModelState = "LOADING"
    reason: str = ""
    signature: Signature | None = None
    served: ServedVersion | None = None


@dataclass
class _Policy:
    """A model's policy as this worker applies it: model.json with any admin override of its traffic."""

    policy: ModelPolicy
    source: str = "defaults"  # defaults | model.json | admin
    error: str = ""  # why the current model.json is not used (the last good policy still is)


@dataclass
class _Scan:
    mine: dict[tuple[str, str], _Found] = field(default_factory=dict)
    # Folders of this service's runtimes that cannot be used, and unclaimed broken ones it reports.
    broken: dict[tuple[str, str], _Found] = field(default_factory=dict)
    # model.json of every model folder that has one of this service's versions.
    policies: dict[str, tuple[ModelPolicy | None, str, str]] = field(default_factory=dict)


class ModelRepository:
    """One worker's view of the repository; `start` it in the app's lifespan."""

    def __init__(
        self,
        root: Path,
        service: str,
        runtimes: Mapping[str, RuntimeFactory],
        control: Control,
        *,
        options: ServingOptions | None = None,
        poll_seconds: float = 2.0,
        report_unclaimed: bool = False,
        load_timeout: float = 300.0,
        traffic_dir: Path | None = None,
    ) -> None:
        unknown = sorted(set(runtimes) - set(RUNTIME_SERVICES))
        if unknown:
            raise ValueError(f"runtimes {unknown} are not in RUNTIME_SERVICES")
        self.root = root
        self.service = service
        self.runtimes = dict(runtimes)
        self.control = control
        self.options = options or ServingOptions()
        self.poll_seconds = poll_seconds
        self.report_unclaimed = report_unclaimed
        self.load_timeout = load_timeout
        self.versions: dict[tuple[str, str], _Version] = {}
        self.broken: dict[tuple[str, str], _Found] = {}
        # Admin changes of a model's traffic; by default beside the workers' control files (this service
        # instance only, until it restarts): MODEL_TRAFFIC_DIR makes them shared and lasting.
        self.overrides = TrafficOverrides(traffic_dir or control.directory / "traffic")
        self.policies: dict[str, _Policy] = {}
        # Version folders on disk that the model's version policy leaves out.
        self.excluded: dict[tuple[str, str], _Found] = {}
        self._routes: dict[str, ModelRoutes] = {}
        self._mirrors: dict[str, Mirror] = {}
        self.started = False
        self._generation = 0
        self._previous: dict[tuple[str, str], Signature] = {}
        self._reconciling = asyncio.Lock()
        self._warned: set[str] = set()

    # ---- serving ---------------------------------------------------------------------------------

    def route(self, name: str, version: str | None = None) -> Routed:
        """The version that answers this request for `name`: `version`, or the one the traffic chooses
        (the default, or the canary for its share), with the shadow mirroring it; 404 or 503 otherwise."""
        if version is None and (routes := self._routes.get(name)) is not None:
            return routes.choose()
        return self.get(name, version).pinned

    def get(self, name: str, version: str | None = None) -> ServedVersion:
        """`version` of `name`, or its default version; 404 or 503 when it cannot answer."""
        if version is None and (routes := self._routes.get(name)) is not None:
            return routes.default.served
        known = sorted((v for (n, _), v in self.versions.items() if n == name), key=_version_key)
        if not known:
            if not self.started:
                # Before the first pass over the folder nothing is known yet: the model may well be there.
                raise ServiceUnavailable(f"The model repository is loading; model '{name}' is not known yet")
            raise NotFound(f"Unknown model '{name}'")
        if version is not None:
            chosen = next((v for v in known if v.version == version), None)
            if chosen is None:
                raise NotFound(f"Unknown version '{version}' of model '{name}'")
        else:
            ready = [v for v in known if v.served is not None]
            chosen = ready[-1] if ready else known[-1]
        if chosen.served is None:
            detail = f": {chosen.reason}" if chosen.reason else ""
            raise ServiceUnavailable(f"Model '{name}' version {chosen.version} is {chosen.state}{detail}")
        return chosen.served

    def require(self, name: str) -> Routed:
        """`route(name)` for a route built on one named model: its absence is the service's problem
        (503, the model is not there), not an unknown resource the caller asked for."""
        try:
            return self.route(name)
        except NotFound:
            raise ServiceUnavailable(f"Model '{name}' is not in the model repository") from None

    def versions_of(self, name: str) -> list[str]:
        return [v.version for v in sorted(self.versions.values(), key=_version_key) if v.name == name]

    def index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """What this worker holds: every version it tracks and the broken folders it reports."""
        return self._entries(self.broken, {}, ready_only)

    async def index_now(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """`index`, plus the folders on disk this worker has not picked up yet ("not loaded yet"):
        the repository extension lists what the repository holds, as Triton does, so a `load` can
        name a folder copied in a moment ago."""
        scan = await anyio.to_thread.run_sync(self._scan)
        pending = {key: found for key, found in scan.mine.items() if key not in self.versions}
        return self._entries(scan.broken, pending, ready_only)

    def _entries(
        self, broken: dict[tuple[str, str], _Found], pending: dict[tuple[str, str], _Found], ready_only: bool
    ) -> list[RepositoryEntry]:
        entries = [
            RepositoryEntry(name=v.name, version=v.version, state=v.state, reason=v.reason)
            for v in self.versions.values()
        ]
        entries += [
            RepositoryEntry(name=f.name, version=f.version, state="UNAVAILABLE", reason=f.error)
            for key, f in broken.items()
            if key not in self.versions
        ]
        entries += [
            RepositoryEntry(name=f.name, version=f.version, state="UNAVAILABLE", reason="not loaded yet")
            for key, f in pending.items()
            if key not in broken and key not in self.excluded
        ]
        entries += [
            RepositoryEntry(
                name=f.name, version=f.version, state="UNAVAILABLE", reason="not in the version policy"
            )
            for key, f in self.excluded.items()
            if key not in self.versions
        ]
        entries.sort(key=lambda e: (e.name, int(e.version or 0)))
        return [e for e in entries if e.state == "READY"] if ready_only else entries

    # ---- keeping in step -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load everything there is now (no settling wait at start-up), then report."""
        self._generation = self.control.read().generation
        await self.reconcile(settle=False)
        self.started = True

    async def run(self) -> None:
        """Poll the folder and the control file until cancelled."""
        next_scan = time.monotonic() + self.poll_seconds
        while True:
            await asyncio.sleep(CONTROL_CHECK_SECONDS)
            control_changed = self.control.changed()
            if control_changed or time.monotonic() >= next_scan:
                try:
                    await self.reconcile()
                except Exception:  # the poller must survive anything a folder can do to it
                    logger.exception("repository reconcile failed")
                next_scan = time.monotonic() + self.poll_seconds

    async def reconcile(self, *, settle: bool = True) -> None:
        """Scan the folder, then load, reload and unload until this worker matches it."""
        async with self._reconciling:
            control = self.control.read()
            forced = {name for name, gen in control.loads.items() if gen > self._generation}
            scan = await anyio.to_thread.run_sync(self._scan)
            self.broken = scan.broken
            self._apply_policies(scan)
            present = {key: found for key, found in scan.mine.items() if key[0] not in control.unloaded}
            wanted = self._served_by_policy(present)
            for key, found in sorted(wanted.items()):
                current = self.versions.get(key)
                retry = found.name in forced and (current is None or current.served is None)
                if current is not None and current.signature == found.signature and not retry:
                    continue
                settled = self._previous.get(key) == found.signature
                if settle and not settled and found.name not in forced:
                    if current is None:
                        self.versions[key] = _Version(found.name, found.version, "LOADING", "files changing")
                    continue
                await self._load(key, found)
            for key in [k for k in self.versions if k not in wanted]:
                reason = "unloaded" if key in scan.mine else ""
                await self._unload(key, keep_as=reason or None)
            self._previous = {key: found.signature for key, found in scan.mine.items()}
            self._generation = max(self._generation, control.generation)
            self._rebuild_routes()
            self._report()

    def _apply_policies(self, scan: _Scan) -> None:
        """Take each model's policy from this scan; a model.json that does not validate keeps the last
        good policy in force (one bad edit must not take a model off the air) and says why."""
        policies: dict[str, _Policy] = {}
        for name, (policy, digest, error) in scan.policies.items():
            previous = self.policies.get(name)
            if policy is None:
                kept = previous.policy if previous is not None else ModelPolicy()
                if previous is None or previous.error != error:
                    logger.warning("model.json not used", extra={"model": name, "reason": error})
                policies[name] = _Policy(kept, previous.source if previous else "defaults", error)
                continue
            override = self.overrides.read(name, digest)
            if override is not None:
                policies[name] = _Policy(policy.with_traffic(override), "admin")
            else:
                policies[name] = _Policy(policy, "model.json" if digest else "defaults")
        self.policies = policies

    def _served_by_policy(self, present: dict[tuple[str, str], _Found]) -> dict[tuple[str, str], _Found]:
        """The version folders the models' version policies serve; the others are `excluded`."""
        by_model: dict[str, list[str]] = {}
        for name, version in present:
            by_model.setdefault(name, []).append(version)
        served = {
            (name, version)
            for name, versions in by_model.items()
            for version in self._policy(name).policy.serves(versions)
        }
        self.excluded = {key: found for key, found in present.items() if key not in served}
        return {key: found for key, found in present.items() if key in served}

    def _policy(self, name: str) -> _Policy:
        return self.policies.get(name) or _Policy(ModelPolicy())

    def _rebuild_routes(self) -> None:
        """Precompute every model's unversioned routing from its traffic and its ready versions.

        A default or canary that is not ready (still loading, failed, gone) is passed over: the highest
        ready version answers meanwhile, so changing the traffic never turns requests into 503s."""
        routes: dict[str, ModelRoutes] = {}
        mirrors: dict[str, Mirror] = {}
        # Each model's ready versions, lowest first.
        ready_by_model: dict[str, dict[str, ServedVersion]] = {}
        for (name, version), entry in sorted(self.versions.items(), key=lambda item: int(item[0][1])):
            if entry.served is not None:
                ready_by_model.setdefault(name, {})[version] = entry.served
        for name, ready in ready_by_model.items():
            traffic = self._policy(name).policy
            canary = traffic.canary if traffic.canary and traffic.canary.version in ready else None
            shadow = traffic.shadow if traffic.shadow and traffic.shadow.version in ready else None
            default = ready.get(traffic.default_version or "")
            if default is None:
                roles = {r.version for r in (canary, shadow) if r is not None}
                candidates = [served for version, served in ready.items() if version not in roles]
                default = candidates[-1] if candidates else list(ready.values())[-1]
            mirror = None
            if shadow is not None and shadow.version != default.version:
                mirror = self._mirrors.get(name)
                if mirror is None or mirror.shadow is not ready[shadow.version] or mirror.spec != shadow:
                    mirror = Mirror(name, ready[shadow.version], shadow)
                mirrors[name] = mirror
            routed_default = Routed(default, mirror) if mirror is not None else default.pinned
            if canary is not None and canary.version != default.version:
                routes[name] = ModelRoutes(routed_default, ready[canary.version].pinned, canary.percent)
            else:
                routes[name] = ModelRoutes(routed_default)
        self._routes, self._mirrors = routes, mirrors

    def traffic(self, name: str) -> dict[str, Any]:
        """The traffic of `name` as configured and as applied now, for the admin API and metadata."""
        if not any(n == name for n, _ in self.versions):
            raise NotFound(f"Unknown model '{name}'")
        state = self._policy(name)
        routes = self._routes.get(name)
        configured = state.policy.traffic().model_dump(mode="json", exclude_none=True)
        return {
            "name": name,
            "source": state.source,
            **({"error": state.error} if state.error else {}),
            "configured": configured,
            "serving": {
                "default_version": routes.default.version if routes else None,
                "canary": (
                    {"version": routes.canary.version, "percent": routes.canary_percent}
                    if routes and routes.canary
                    else None
                ),
                "shadow": routes.default.mirror.shadow.version if routes and routes.default.mirror else None,
            },
            "versions": self.versions_of(name),
        }

    async def set_traffic(self, name: str, traffic: Traffic) -> dict[str, Any]:
        """Replace the traffic of `name` in every worker (an override of model.json's); answer once
        every worker of this service applies it. Versions it names must have a folder."""
        scan = await anyio.to_thread.run_sync(self._scan)
        on_disk = {v for n, v in scan.mine if n == name}
        if not on_disk:
            raise NotFound(f"Unknown model '{name}'")
        missing = sorted(traffic.named_versions() - on_disk, key=int)
        if missing:
            raise BadRequest(f"Model '{name}' has no version {', '.join(missing)} in the repository")
        if traffic.shadow is not None and traffic.shadow.compare is not None:
            outputs = {
                s.name
                for v in self.versions.values()
                if v.name == name and v.served
                for s in v.served.outputs
            }
            unknown = sorted(set(traffic.shadow.compare) - outputs)
            if outputs and unknown:
                has = ", ".join(sorted(outputs))
                raise BadRequest(f"Model '{name}' has no output {unknown[0]!r} to compare; it has {has}")
        _, digest, _ = scan.policies.get(name, (None, "", ""))
        self.overrides.write(name, traffic, digest)
        with self.control.locked() as state:
            state.generation += 1
            # As for a load: every worker loads the versions named now, without waiting for their
            # folders to settle, so that the call answers when the traffic is served everywhere.
            state.loads[name] = state.generation
            generation = state.generation
        await self.reconcile(settle=False)
        await self._wait_for_workers(generation)
        return self.traffic(name)

    async def promote(self, name: str) -> dict[str, Any]:
        """The canary becomes the default (its share becomes all); the shadow stays."""
        current = self._policy(name).policy.traffic()
        if current.canary is None:
            raise Conflict(f"Model '{name}' has no canary to promote")
        promoted = current.canary.version
        # A shadow of the version becoming the default would shadow itself: it goes.
        shadow = current.shadow if current.shadow is not None and current.shadow.version != promoted else None
        return await self.set_traffic(name, Traffic(default_version=promoted, shadow=shadow))

    async def rollback(self, name: str) -> dict[str, Any]:
        """Remove the canary: the default answers every unversioned request again."""
        current = self._policy(name).policy.traffic()
        return await self.set_traffic(
            name, Traffic(default_version=current.default_version, shadow=current.shadow)
        )

    async def _load(self, key: tuple[str, str], found: _Found) -> None:
        old = self.versions.get(key)
        entry = _Version(found.name, found.version, "LOADING", "", found.signature)
        self.versions[key] = entry
        if old is not None and old.served is not None:
            # Keep answering with the old files until the new ones are loaded.
            entry.served, entry.state = old.served, "READY"
        started = time.perf_counter()
        try:
            served = await anyio.to_thread.run_sync(self._load_blocking, found)
        except Exception as exc:  # noqa: BLE001 - any failure is this version's reason, never the service's
            entry.state, entry.reason, entry.served = "UNAVAILABLE", _reason(exc), None
            logger.warning(
                "model failed to load",
                extra={"model": found.name, "version": found.version, "reason": entry.reason},
            )
            if old is not None and old.served is not None:
                await self._retire(old.served)
            return
        entry.state, entry.reason, entry.served = "READY", "", served
        self._rebuild_routes()
        MODEL_READY.labels(found.name).set(1)
        logger.info(
            "model loaded",
            extra={
                "model": found.name,
                "version": found.version,
                "runtime": served.runtime.runtime,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )
        if old is not None and old.served is not None:
            await self._retire(old.served)

    def _load_blocking(self, found: _Found) -> ServedVersion:
        assert found.settings is not None
        context = ModelContext.of_folder(found.name, found.version, found.folder, found.settings)
        runtime = self.runtimes[found.settings.runtime](context)
        runtime.load()
        if not runtime.inputs or not runtime.outputs:
            raise ValueError(f"runtime {runtime.runtime!r} declared no inputs or outputs")
        return ServedVersion(
            runtime,
            max_concurrency=self.options.max_concurrency,
            batching=self.options.batching,
            max_queued=self.options.max_queued,
            inline_below_seconds=self.options.inline_below_seconds,
        )

    async def _unload(self, key: tuple[str, str], keep_as: str | None) -> None:
        entry = self.versions[key]
        served = entry.served
        if keep_as is None:
            del self.versions[key]
        else:
            self.versions[key] = _Version(entry.name, entry.version, "UNAVAILABLE", keep_as)
        # New requests stop choosing it before its in-flight ones are waited for.
        self._rebuild_routes()
        if served is not None:
            await self._retire(served)
            logger.info("model unloaded", extra={"model": entry.name, "version": entry.version})
        if not any(v.served is not None for (n, _), v in self.versions.items() if n == entry.name):
            MODEL_READY.labels(entry.name).set(0)

    async def _retire(self, served: ServedVersion) -> None:
        """Let the requests that use `served` finish, then release it."""
        if not await served.drained(self.options.unload_timeout):
            logger.warning(
                "unloading with requests still in flight",
                extra={"model": served.name, "version": served.version},
            )
        await anyio.to_thread.run_sync(served.runtime.unload)
        await anyio.to_thread.run_sync(_release_memory)

    def _report(self) -> None:
        models = {f"{v.name}/{v.version}": [v.state, v.reason] for v in self.versions.values()}
        try:
            self.control.report(self._generation, models)
        except OSError as exc:
            logger.warning("cannot write the worker report", extra={"error": repr(exc)})

    # ---- explicit calls (the repository extension) -----------------------------------------------

    async def load(self, name: str) -> list[RepositoryEntry]:
        """Load (or reload) every version of `name` in every worker; answer when done.

        404 when the repository has no folder of this service for it (then every worker drops what
        it still held of it); 400 when it failed, with why.
        """
        scan = await anyio.to_thread.run_sync(self._scan)
        exists = any(n == name for n, _ in scan.mine) or any(n == name for n, _ in scan.broken)
        # Even for a folder that is gone, every worker looks now: a load means "match the folder".
        with self.control.locked() as state:
            state.generation += 1
            state.unloaded.discard(name)
            state.loads[name] = state.generation
            generation = state.generation
        # Reload from scratch: a failed or changed folder gets a fresh attempt now.
        for key in [k for k in self.versions if k[0] == name]:
            self.versions[key].signature = None
        await self.reconcile(settle=False)
        await self._wait_for_workers(generation)
        if not exists:
            raise NotFound(f"No model '{name}' in the repository")
        entries = [e for e in self.index() if e.name == name]
        failed = [e for e in entries if e.state != "READY"]
        if failed or not entries:
            reasons = "; ".join(f"version {e.version}: {e.reason or e.state}" for e in failed)
            raise BadRequest(f"Model '{name}' failed to load: {reasons or 'no version folder'}")
        return entries

    async def unload(self, name: str) -> None:
        """Unload every version of `name` in every worker (after their in-flight requests)."""
        if not any(n == name for n, _ in self.versions):
            raise NotFound(f"Unknown model '{name}'")
        with self.control.locked() as state:
            state.generation += 1
            state.unloaded.add(name)
            state.loads.pop(name, None)
            generation = state.generation
        await self.reconcile(settle=False)
        await self._wait_for_workers(generation)

    async def _wait_for_workers(self, generation: int) -> None:
        deadline = time.monotonic() + self.load_timeout
        while True:
            behind = [
                pid for pid, report in self.control.workers().items() if report["generation"] < generation
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"Workers {behind} did not follow within {self.load_timeout:.0f}s")
            await asyncio.sleep(CONTROL_CHECK_SECONDS / 2)

    # ---- scanning (in a thread) ------------------------------------------------------------------

    def _scan(self) -> _Scan:
        scan = _Scan()
        if not self.root.is_dir():
            self._warn_once(str(self.root), f"model repository {self.root} does not exist")
            return scan
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            if not is_model_name(model_dir.name):
                self._warn_once(str(model_dir), f"ignoring {model_dir.name!r}: not a valid model name")
                continue
            for version_dir in sorted(model_dir.iterdir()):
                if version_dir.name.startswith(".") or not version_dir.is_dir():
                    continue
                if not version_dir.name.isdigit() or int(version_dir.name) < 1:
                    self._warn_once(
                        str(version_dir),
                        f"ignoring {model_dir.name}/{version_dir.name}: versions are positive integers",
                    )
                    continue
                self._classify(scan, model_dir.name, str(int(version_dir.name)), version_dir)
            if any(n == model_dir.name for n, _ in scan.mine):
                try:
                    policy, digest = read_policy(model_dir)
                    scan.policies[model_dir.name] = (policy, digest, "")
                except ModelPolicyError as exc:
                    scan.policies[model_dir.name] = (None, "", str(exc))
        return scan

    def _classify(self, scan: _Scan, name: str, version: str, folder: Path) -> None:
        key = (name, version)
        found = _Found(name, version, folder, _signature(folder))
        try:
            found.settings = read_settings(folder)
        except ModelSettingsError as exc:
            found.error = str(exc)
            if self.report_unclaimed or self._claims_by_text(folder):
                scan.broken[key] = found
            return
        if RUNTIME_SERVICES[found.settings.runtime] != self.service:
            return
        if found.settings.runtime not in self.runtimes:
            found.error = f"runtime {found.settings.runtime!r} is not installed in this service"
            scan.broken[key] = found
            return
        scan.mine[key] = found

    def _claims_by_text(self, folder: Path) -> bool:
        """A settings file that does not validate but names one of our runtimes is ours to report."""
        try:
            text = (folder / SETTINGS_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        return any(f'"{runtime}"' in text for runtime in self.runtimes)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def _signature(folder: Path) -> Signature:
    entries = []
    for path in sorted(folder.rglob("*")):
        try:
            if path.is_file():
                st = path.stat()
                entries.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
        except OSError:
            continue  # removed while scanning: the next scan sees the folder as it is
    return tuple(entries)


def _version_key(v: _Version) -> int:
    return int(v.version)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _release_memory() -> None:
    """After an unload: free the model's objects now and hand glibc's freed arenas back to the system,
    so a worker's resident memory comes back down instead of staying at its peak."""
    gc.collect()
    trim = getattr(_LIBC, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ArtifactError | ModelSettingsError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
