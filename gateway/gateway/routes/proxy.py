"""Forwarding a request to the service that should answer it, and returning its answer as is.

The gateway parses nothing it forwards: the service validates, and its own 4xx reaches the client.
The functions here take an `Incoming` (method, headers, query, body stream), so that the plain-ASGI
proxy routes (`gateway.proxy_routes`) and the FastAPI routes share them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

import orjson
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from gateway.cache import CACHE_LOOKUPS, cache_key
from gateway.catalog import model_versions
from gateway.config import GatewaySettings
from gateway.deps import GatewayState, require_model_scope
from gateway.keys import ApiKey
from gateway.metrics import MODEL_REQUESTS
from modelgate_core import tracing
from modelgate_core.asgi import read_body
from modelgate_core.context import MODEL_VERSION_HEADER, annotate
from modelgate_core.errors import ModelGateError
from modelgate_core.metrics import Children

_MODEL_REQUESTS = Children(MODEL_REQUESTS)


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the proxy uses of a client's request."""

    method: str
    headers: Mapping[str, str]  # lower-case names; the first of repeated headers, as Starlette reads them
    query: str  # as the client sent it
    receive: Receive

    @classmethod
    def of(cls, scope: Scope, receive: Receive) -> Incoming:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        return cls(scope["method"], headers, scope["query_string"].decode("latin-1"), receive)

    @classmethod
    def of_request(cls, request: Request) -> Incoming:
        return cls.of(request.scope, request.receive)


async def forward(
    state: GatewayState, service: str, request: Incoming, path: str, body: bytes | None
) -> Response:
    """Send this request (method, `body`, content type, query) to `service` at `path`.

    With the response cache on, a cacheable request (see `cache_input`) may be answered from it, and
    identical misses in flight at once in this process go to the service once.
    """
    key = await _cache_key(state, service, request, path, body) if state.cache is not None else None
    if key is None:
        return await _send(state, service, request, path, body)
    assert state.cache is not None
    with tracing.step("gateway.cache") as span:
        cached = await state.cache.get(key)
        if span is not None:
            span.set_attribute("modelgate.cache.hit", cached is not None)
    CACHE_LOOKUPS.labels(service, "hit" if cached is not None else "miss").inc()
    if cached is None:
        flight = state.cache_flights.get(key)
        if flight is not None:
            cached = await asyncio.shield(flight)  # another request is asking the service right now
    if cached is not None:
        return Response(cached, media_type="application/json", headers={"x-cache": "hit"})
    flight = state.cache_flights[key] = asyncio.get_running_loop().create_future()
    try:
        response = await _send(state, service, request, path, body)
        response.headers["x-cache"] = "miss"
        if response.status_code == 200:
            await state.cache.put(key, bytes(response.body))
            flight.set_result(bytes(response.body))
        return response
    finally:
        if not flight.done():
            flight.set_result(None)  # no answer to share: the others ask the service themselves
        del state.cache_flights[key]


async def _send(
    state: GatewayState, service: str, request: Incoming, path: str, body: bytes | None
) -> Response:
    answer = await state.client.request(
        state.upstreams[service],
        request.method,
        path,
        content=body or None,
        content_type=request.headers.get("content-type"),
        headers=request.headers,
        query=request.query or None,
    )
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))


async def _cache_key(
    state: GatewayState, service: str, request: Incoming, path: str, body: bytes | None
) -> str | None:
    """The cache entry this request would use, or None when it is not cached (not cacheable, model
    versions unknown, or the service's circuit is open: a service marked down is not probed)."""
    if state.upstreams[service].breaker.state != "closed":
        return None
    canonical = await cache_input(state.settings, service, request, body)
    if canonical is None:
        return None
    versions = await model_versions(state, service)
    return cache_key(path, versions, canonical) if versions is not None else None


async def cache_input(
    settings: GatewaySettings, service: str, request: Incoming, body: bytes | None
) -> bytes | None:
    """What identifies a prediction for the response cache, or None when it is not cached.

    JSON bodies count by their canonical form (parsed, keys sorted), so key order and spacing do not
    matter; a body that is not JSON is not cached. Uploads (vision) are large and rarely repeated: they
    are cached only when `response_cache_vision` asks for it, keyed on the form's fields and the bytes
    of its files (never on the multipart boundary, which every client picks anew).
    """
    if request.method != "POST" or body is None:
        return None
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(request.query, keep_blank_values=True))).encode()
    # service -> whether its (raw, non-JSON) requests are cached
    raw_opt_in = {"vision": settings.response_cache_vision}
    if service in raw_opt_in:
        if not raw_opt_in[service]:
            return None
        form = await form_identity(request.headers.get("content-type", ""), body)
        return form + b"|" + query if form is not None else None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS) + b"|" + query


async def form_identity(content_type: str, body: bytes) -> bytes | None:
    """A multipart form as its fields in order, each file as the sha256 of its bytes; None when the
    body is not a form the service could read (it answers that itself, uncached)."""
    if not content_type.startswith("multipart/form-data"):
        return None

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(Headers({"content-type": content_type}), chunks()).parse()
    except (MultiPartException, ValueError):
        return None
    parts: list[str] = []
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append(f"{name}=file:{hashlib.sha256(await value.read()).hexdigest()}")
            else:
                parts.append(f"{name}={value}")
    finally:
        await form.close()
    return "&".join(parts).encode()


def model_path(name: str, version: str | None, suffix: str = "") -> str:
    """A model's OIP path on its service: `/v2/models/{name}[/versions/{version}]{suffix}`."""
    return f"/v2/models/{name}" + (f"/versions/{version}" if version is not None else "") + suffix


async def forward_to_model(
    state: GatewayState,
    request: Incoming,
    key: ApiKey,
    *,
    name: str,
    version: str | None,
    path: str,
) -> Response:
    """Send this request to the service holding model `name` at `path` (built from the located name,
    never from the raw URL); 404/409 from the directory, 403 unless the key may call this model."""
    location = await state.directory.locate(name, version)
    require_model_scope(key, name, location.service)
    annotate(model=name)
    body = await read_body(request.receive) if request.method == "POST" else None
    status = 500
    try:
        answer = await state.client.request(
            state.upstreams[location.service],
            request.method,
            path,
            content=body or None,
            content_type=request.headers.get("content-type") if body else None,
            headers=request.headers,
        )
        status = answer.status_code
        # Count the version that answered, which a canary split chose; digits only, so a label's values
        # stay the versions that exist whatever a service sends.
        answered = answer.headers.get(MODEL_VERSION_HEADER, "")
        if version is None and answered.isdigit() and len(answered) <= 9:
            version = answered
    except ModelGateError as exc:
        status = exc.status_code
        raise
    finally:
        _MODEL_REQUESTS(name, version or "default", str(status)).inc()
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))
