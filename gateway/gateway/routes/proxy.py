"""Forwarding a request to the service that should answer it, and returning its answer as is.

The gateway parses nothing it forwards: the service validates, and its own 4xx reaches the client.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from starlette.responses import Response

from gateway.cache import CACHE_LOOKUPS, cache_key
from gateway.catalog import model_versions
from gateway.config import GatewaySettings
from gateway.deps import GatewayState, require_model_scope
from gateway.keys import ApiKey
from gateway.metrics import MODEL_REQUESTS
from modelgate_core.context import annotate
from modelgate_core.errors import ModelGateError, PayloadTooLarge


async def forward(
    state: GatewayState, service: str, request: Request, path: str, body: bytes | None
) -> Response:
    """Send this request (method, `body`, content type, query) to `service` at `path`.

    With the response cache on, a cacheable request (see `cache_input`) may be answered from it.
    """
    key = None
    canonical = cache_input(state.settings, service, request, body) if state.cache is not None else None
    if state.cache is not None and canonical is not None:
        versions = await model_versions(state, service)
        if versions is not None:
            key = cache_key(path, versions, canonical)
            cached = await state.cache.get(key)
            CACHE_LOOKUPS.labels(path, "hit" if cached is not None else "miss").inc()
            if cached is not None:
                return Response(cached, media_type="application/json", headers={"x-cache": "hit"})
    answer = await state.client.request(
        state.upstreams[service],
        request.method,
        path,
        content=body or None,
        content_type=request.headers.get("content-type"),
        headers=request.headers,
        params=request.url.query or None,  # as the client sent it
    )
    headers = dict(answer.headers)
    if key is not None and state.cache is not None:
        headers["x-cache"] = "miss"
        if answer.status_code == 200:
            await state.cache.put(key, answer.content)
    return Response(answer.content, status_code=answer.status_code, headers=headers)


def cache_input(
    settings: GatewaySettings, service: str, request: Request, body: bytes | None
) -> bytes | None:
    """What identifies a prediction for the response cache, or None when it is not cached.

    JSON bodies count by their canonical form (parsed, keys sorted), so key order and spacing do not
    matter; a body that is not JSON is not cached. Uploads (vision) are large and rarely repeated: they
    are cached only when `response_cache_vision` asks for it, keyed on their exact bytes.
    """
    if request.method != "POST" or body is None:
        return None
    query = "&".join(f"{k}={v}" for k, v in sorted(request.query_params.multi_items())).encode()
    # service -> whether its (raw, non-JSON) requests are cached
    raw_opt_in = {"vision": settings.response_cache_vision}
    if service in raw_opt_in:
        return body + b"|" + query if raw_opt_in[service] else None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS) + b"|" + query


async def forward_to_model(
    state: GatewayState,
    request: Request,
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
    body = await request.body() if request.method == "POST" else None
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
    except ModelGateError as exc:
        status = exc.status_code
        raise
    finally:
        MODEL_REQUESTS.labels(name, version or "default", str(status)).inc()
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes (declared or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
