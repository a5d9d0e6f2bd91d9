"""Small pieces for plain-ASGI routes, which answer hot paths before FastAPI's router (see
`modelgate_core.oip.asgi_routes` and the gateway's `proxy_routes`)."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from modelgate_core.errors import ModelGateError, PayloadTooLarge, error_response_for


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """A matched route's template, put in the scope as Starlette puts its route object (which has the
    same `path`): the access log and metrics name requests by it."""

    path: str


_TEMPLATES: dict[str, RouteTemplate] = {}


def route_template(path: str) -> RouteTemplate:
    """The one `RouteTemplate` for `path` (templates are few and fixed: made once, then shared)."""
    template = _TEMPLATES.get(path)
    if template is None:
        template = _TEMPLATES[path] = RouteTemplate(path)
    return template


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower-case bytes), as Starlette reads it."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def respond(scope: Scope, receive: Receive, send: Send, answer: Awaitable[Response]) -> None:
    """Send the response `answer` gives, or, when it raises a `ModelGateError` or an `HTTPException`
    (the body limit's 413), the error answer FastAPI's handlers would give (`error_response_for`);
    nothing when the client went away mid-body. Anything else reaches `RequestContextMiddleware`'s 500."""
    try:
        response = await answer
    except ClientDisconnect:
        return  # nobody to answer
    except (ModelGateError, HTTPException) as exc:
        response = error_response_for(exc, scope["path"])
    await response(scope, receive, send)


async def read_body(receive: Receive, limit: int | None = None, declared: str | None = None) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes (`declared` as the request's
    Content-Length, or while streaming). Without a limit, `BodyLimitMiddleware`'s holds."""
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()  # nothing to work on: the client went away mid-body
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)
