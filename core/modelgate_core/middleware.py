"""Plain ASGI middleware (not `BaseHTTPMiddleware`, which costs throughput and breaks contextvars).

`RequestContextMiddleware` does, in one pass per request: request ID (kept or generated, returned in
`X-Request-ID`), the context the rest of the code logs with, one JSON access-log line, and the HTTP
metrics. `BodyLimitMiddleware` refuses bodies over a size limit while they are read, before any parser
sees them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelgate_core import context
from modelgate_core.errors import error_body, is_oip_path
from modelgate_core.metrics import HTTP_IN_FLIGHT, HTTP_LATENCY, HTTP_REQUESTS

access_logger = logging.getLogger("modelgate.access")
error_logger = logging.getLogger("modelgate.errors")

# Paths that are polled all the time; they are still measured but not access-logged at INFO.
_QUIET_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestContextMiddleware:
    """Request ID, per-request context, access log and HTTP metrics."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = context.accept_request_id(_header(scope, b"x-request-id"))
        ctx = context.RequestContext(request_id)
        token = context.bind(ctx)
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

        in_flight = HTTP_IN_FLIGHT.labels(self.service)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
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
            HTTP_REQUESTS.labels(self.service, route_path, method, str(status)).inc()
            HTTP_LATENCY.labels(self.service, route_path, method).observe(elapsed)
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
    A declared `Content-Length` over the limit is refused before reading anything.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_too_large(send, limit, oip=is_oip_path(scope["path"]))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException passes through FastAPI's body parsing untouched and reaches
                    # the common error handler, so the client gets the usual 413 error shape.
                    raise HTTPException(413, f"Request body exceeds the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def _send_too_large(send: Send, limit: int, *, oip: bool) -> None:
    body = error_body(413, "payload_too_large", f"Request body exceeds the limit of {limit} bytes", oip=oip)
    await send_json(send, 413, body, {"connection": "close"})


async def send_json(send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    """Send a complete JSON response from ASGI middleware."""
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
