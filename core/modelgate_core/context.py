"""Per-request context (request ID, access-log fields, the caller's deadline) carried in a contextvar.

Plain ASGI middleware sets it once per request; handlers, the proxy and log records read it. A
contextvar (not `request.state`) is used so that log records made anywhere — including sync code run
in the thread pool, which copies the context — carry the request ID.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
# The caller's remaining time budget, in whole milliseconds, when it sent the request (the gateway sends
# its read timeout): past it nobody waits for the answer, so a service drops work not yet begun.
DEADLINE_HEADER = "x-request-deadline-ms"
# Which repository version answered an inference request (a canary split chooses per request).
MODEL_VERSION_HEADER = "x-model-version"
# A longer budget is taken as this one: 10 minutes, more than any caller of ours waits (the gateway's
# longest timeout is MODEL_LOAD_TIMEOUT, 120 s).
MAX_DEADLINE_MS = 600_000
_REQUEST_ID_KEY = REQUEST_ID_HEADER.encode()
_DEADLINE_KEY = DEADLINE_HEADER.encode()
# A client-supplied request ID is kept only if it is short and made of safe characters, so it cannot
# inject headers or forge log lines; anything else is replaced by a fresh one.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(slots=True)
class RequestContext:
    """What one request has learnt so far, for its access-log line."""

    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    # Extra response headers decided before the response exists (rate-limit state, for instance).
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Named durations in ms for the `Server-Timing` header (upstream, model, ...).
    timings: dict[str, float] = field(default_factory=dict)
    # When the caller gives up, on `time.monotonic()`'s clock (from `DEADLINE_HEADER`); None: never.
    deadline: float | None = None
    # The request's trace (32 hex digits) while tracing is on (`modelgate_core.tracing`); None: off.
    trace_id: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("modelgate_request", default=None)


def new_request_id() -> str:
    """Return a fresh random request ID (32 hex characters, 128 random bits).

    From `random`, not `os.urandom`: a request ID correlates log lines, it guards nothing, and a system
    call per request is measurable on the hot path. `random` reseeds in every forked worker.
    """
    return f"{random.getrandbits(128):032x}"


def accept_request_id(candidate: str | None) -> str:
    """Keep a valid incoming request ID, otherwise generate one."""
    if candidate and _SAFE_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def deadline_from_header(value: bytes, now: float) -> float | None:
    """The local deadline of a request that arrived at `now` (monotonic) with `DEADLINE_HEADER: value`:
    None when the value is not a whole number of milliseconds (ignored, as if absent); capped at
    `MAX_DEADLINE_MS`."""
    # bytes.isdigit: ASCII digits only (no sign, space, fraction or other script); the length bound keeps
    # int() cheap and inside Python's limit on digits, which would raise.
    if len(value) > 16 or not value.isdigit():
        return None
    return now + min(int(value), MAX_DEADLINE_MS) / 1000


def context_for(headers: Iterable[tuple[bytes, bytes]]) -> RequestContext:
    """The context of a request with these ASGI headers: its request ID (kept if valid, else a fresh one)
    and its deadline, both found in one pass (the first of repeated headers counts, as Starlette reads
    them)."""
    request_id: bytes | None = None
    deadline: bytes | None = None
    for key, value in headers:
        if key == _REQUEST_ID_KEY:
            if request_id is None:
                request_id = value
        elif key == _DEADLINE_KEY and deadline is None:
            deadline = value
    return RequestContext(
        accept_request_id(None if request_id is None else request_id.decode("latin-1")),
        deadline=None if deadline is None else deadline_from_header(deadline, time.monotonic()),
    )


def current_context() -> RequestContext | None:
    """Return the context of the request being handled, if any."""
    return _current.get()


def current_request_id() -> str | None:
    """Return the ID of the request being handled, if any."""
    ctx = _current.get()
    return ctx.request_id if ctx else None


def current_deadline() -> float | None:
    """When the caller of the request being handled gives up (`time.monotonic()`), if it said."""
    ctx = _current.get()
    return ctx.deadline if ctx else None


def annotate(**fields: Any) -> None:
    """Add fields to the current request's access-log line (no-op outside a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.fields.update(fields)


def add_response_header(name: str, value: str) -> None:
    """Have the current request's response carry this header (no-op outside a request)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.response_headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


def record_timing(name: str, milliseconds: float) -> None:
    """Report a duration in the current response's `Server-Timing` header."""
    ctx = _current.get()
    if ctx is not None:
        ctx.timings[name] = milliseconds


def bind(ctx: RequestContext) -> object:
    """Make `ctx` current; returns a token for `unbind`."""
    return _current.set(ctx)


def unbind(token: object) -> None:
    """Restore the context that was current before `bind`."""
    _current.reset(token)  # type: ignore[arg-type]
