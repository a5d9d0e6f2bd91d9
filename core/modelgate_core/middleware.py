"""Plain ASGI middleware (not `BaseHTTPMiddleware`, which costs throughput and breaks contextvars).

`RequestContextMiddleware` does, in one pass per request: request ID (kept or generated, returned in
`X-Request-ID`), the context the rest of the code logs with, one JSON access-log line, and the HTTP
metrics. `BodyLimitMiddleware` refuses bodies over a size limit while they are read, before any parser
sees them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelgate_core import context, tracing
from modelgate_core.asgi import header
from modelgate_core.errors import error_body, is_oip_path
from modelgate_core.metrics import HTTP_IN_FLIGHT, HTTP_LATENCY, HTTP_REQUESTS, Children

access_logger = logging.getLogger("modelgate.access")
error_logger = logging.getLogger("modelgate.errors")

# Paths that are polled all the time; they are still measured but not access-logged at INFO.
_QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


class RequestContextMiddleware:
    """Request ID, per-request context (with the caller's deadline), access log and HTTP metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        self._in_flight = HTTP_IN_FLIGHT.labels(service)
        self._requests = Children(HTTP_REQUESTS)
        self._latency = Children(HTTP_LATENCY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Request ID and the caller's deadline (X-Request-Deadline-Ms) in one pass over the headers.
        ctx = context.context_for(scope.get("headers", ()))
        request_id = ctx.request_id
        token = context.bind(ctx)
        # Tracing off: this one test per request is all it costs (see modelgate_core.tracing).
        active = tracing.tracer
        traced = (
            None
            if active is None or scope["path"] in _QUIET_PATHS
            else tracing.start_server_span(active, scope, ctx)
        )
        failure: BaseException | None = None
        status = 500
        started = time.perf_counter()
        request_id_header = (b"x-request-id", request_id.encode())

        started_response = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                ctx.timings[self.service] = (time.perf_counter() - started) * 1000
                message["headers"] = [
                    *message.get("headers", []),
                    *ctx.response_headers,
                    request_id_header,
                    (b"server-timing", server_timing(ctx.timings)),
                ]
            await send(message)

        in_flight = self._in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as exc:
            failure = exc
            if started_response:
                raise  # too late for an error answer: the server closes the connection
            # Answered here, inside the request's context, so that the 500 carries its request ID
            # (body and header) and Server-Timing; Starlette's outermost handler would not.
            error_logger.exception("unhandled error")
            body = error_body(500, "internal_error", "Internal server error", oip=is_oip_path(scope["path"]))
            await send_json(send_with_request_id, 500, body)
        finally:
            in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", None) or "<unmatched>"
            method = scope["method"]
            self._requests(self.service, route_path, method, str(status)).inc()
            self._latency(self.service, route_path, method).observe(elapsed)
            if traced is not None:
                tracing.end_server_span(traced, status, getattr(route, "path", None), ctx.fields, failure)
            path = scope["path"]
            level = logging.DEBUG if path in _QUIET_PATHS and status < 400 else logging.INFO
            if access_logger.isEnabledFor(level):
                access_logger.log(
                    level,
                    "request",
                    extra={
                        "method": method,
                        "path": path,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 3),
                        **ctx.fields,
                    },
                )
            context.unbind(token)


def limits_by_path(default: int, overrides: Mapping[str, int]) -> Callable[[str], int]:
    """A `limit_for` that gives `overrides[path]` to those paths (uploads) and `default` to the rest."""

    def limit_for(path: str) -> int:
        return overrides.get(path, default)

    return limit_for


def tensor_body_limits(
    json_limit: int, upload_limit: int, upload_paths: Sequence[str] = ()
) -> Callable[[str], int]:
    """A `limit_for` for an app that takes tensors: `upload_limit` for inference bodies (OIP infer,
    `:predict`, which carry data, binary or base64) and the named upload paths, `json_limit` elsewhere."""
    uploads = frozenset(upload_paths)

    def limit_for(path: str) -> int:
        if path in uploads or path.endswith("/infer") or path.endswith(":predict"):
            return upload_limit
        return json_limit

    return limit_for


def server_timing(timings: dict[str, float]) -> bytes:
    """`Server-Timing` value: where the time went, so a client can see it without our metrics."""
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in timings.items()).encode()


class BodyLimitMiddleware:
    """Refuse request bodies larger than a limit with 413, counting bytes as they arrive.

    `limit_for(path)` returns the limit for a path, so uploads can have a larger one than JSON.
    A declared `Content-Length` over the limit is refused before the app sees anything.

    A refused body is still read and thrown away, up to `drain_bound(limit)` bytes in all, before the
    413 goes out with `connection: close`: clients such as urllib and `requests` send the whole body
    before they read the answer, and closing while its bytes still arrive resets the connection, so
    they would see "connection reset by peer" instead of the 413. Past the bound nothing more is read:
    the 413 is sent and the connection closed.
    """

    # However small the limit, this much of a refused body is read: more than loopback and LAN socket
    # buffers hold, so a near miss gets its 413 rather than a reset.
    DRAIN_MINIMUM = 8 * 1024 * 1024
    # A client that sends nothing for this long while its refused body is drained (one that declared
    # more than it sends, say) gets its 413 now rather than waiting on us as we wait on it.
    DRAIN_IDLE_SECONDS = 2.0

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    @classmethod
    def drain_bound(cls, limit: int) -> int:
        """The most bytes of a body refused under `limit` that are read before answering."""
        return max(2 * limit, cls.DRAIN_MINIMUM)

    @classmethod
    async def _drain(cls, receive: Receive, received: int, bound: int) -> bool:
        """Read and drop the rest of a body of which `received` bytes were read; True when it ended
        within `bound` bytes in all, False past the bound, when the client stalls or went away."""
        while received <= bound:
            try:
                message = await asyncio.wait_for(receive(), cls.DRAIN_IDLE_SECONDS)
            except TimeoutError:
                return False
            if message["type"] != "http.request":
                return False
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return received <= bound
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        bound = self.drain_bound(limit)
        declared = header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            # A client waiting for "100 Continue" has sent nothing yet; reading would invite the body.
            waiting = (header(scope, b"expect") or "").lower() == "100-continue"
            if declared.isdigit() and int(declared) <= bound and not waiting:
                await self._drain(receive, 0, bound)
            await _send_too_large(send, limit, oip=is_oip_path(scope["path"]))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if message.get("more_body", False):
                        await self._drain(receive, received, bound)
                    # An HTTPException passes through FastAPI's body parsing untouched and reaches
                    # the common error handler, so the client gets the usual 413 error shape.
                    raise HTTPException(
                        413,
                        f"Request body exceeds the limit of {limit} bytes",
                        headers={"connection": "close"},
                    )
            return message

        await self.app(scope, limited_receive, send)


async def _send_too_large(send: Send, limit: int, *, oip: bool) -> None:
    """The 413 of a body refused on its declared length; `connection: close`, as its rest may be unread."""
    body = error_body(413, "payload_too_large", f"Request body exceeds the limit of {limit} bytes", oip=oip)
    await send_json(send, 413, body, {"connection": "close"})


async def send_json(send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """Send a complete JSON response from ASGI middleware."""
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
