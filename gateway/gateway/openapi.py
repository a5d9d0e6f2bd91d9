"""The gateway's OpenAPI document: its own routes, plus each service's domain routes as it documents them.

The gateway holds no model schema. Its own document covers the routes it implements (the /v2
protocol, `/v1/models`, health); each service's `/openapi.json` adds its `/v1/<service>/...` paths and
the component schemas they reference (renamed `<service>_<Name>` where a different schema already has
the name). Every service operation is given the gateway's security schemes and the errors the gateway
itself can answer. A service that does not answer is left out, and `info.description` says so.
The result is cached per worker: `ttl_seconds` when complete, less while a service is missing.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from gateway.deps import GatewayState
from gateway.openapi_fragments import GATEWAY_ERRORS, REQUEST_MODELS, RESPONSE_MODELS, errors
from modelgate_core.errors import ModelGateError
from modelgate_core.schemas.common import ErrorResponse

logger = logging.getLogger("gateway.openapi")

Document = dict[str, Any]

# FastAPI names the schemes after the security classes in `gateway.deps`.
SECURITY_SCHEMES: dict[str, Any] = {
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "API key"},
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "API key as a bearer token"},
}
SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_COMPONENTS_REF = "#/components/"
# How long a document missing a service is kept: that service is probably just starting.
_INCOMPLETE_TTL_SECONDS = 5.0


def gateway_document(app: FastAPI) -> Document:
    """The gateway's own routes, with the schemas of the bodies it reads raw."""
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, schema in _fragment_schemas().items():
        if name in schemas and schemas[name] != schema:
            raise RuntimeError(f"two different schemas named {name!r} in the gateway's own document")
        schemas[name] = schema
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    return document


def _fragment_schemas() -> dict[str, Any]:
    """The schemas `gateway.openapi_fragments` refers to, written by FastAPI itself on throwaway routes,
    so that they come out exactly as a service's FastAPI writes the same model (and are then shared)."""
    router = APIRouter()
    for model in REQUEST_MODELS:
        router.add_api_route(f"/{model.__name__}", _taking(model), methods=["POST"])
    for model in RESPONSE_MODELS:
        router.add_api_route(f"/{model.__name__}", _noop, methods=["GET"], response_model=model)
    schemas: dict[str, Any] = get_openapi(title="", version="", routes=router.routes)["components"]["schemas"]
    # The throwaway bodies bring FastAPI's default 422 along; no route of ours answers that shape.
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return schemas


async def _noop() -> None:
    """Never called: the endpoint of a route that exists only to be documented."""


def _taking(model: type[BaseModel]) -> Callable[..., Any]:
    async def endpoint(body: Any) -> None:
        """Never called."""

    endpoint.__annotations__ = {"body": model, "return": None}
    return endpoint


def merge_service(document: Document, service: str, service_document: Mapping[str, Any]) -> int:
    """Add `service`'s `/v1/<service>/...` paths (and what they reference) to `document`.

    Returns how many paths were added. `document` is changed in place; `service_document` is not.
    """
    prefix = f"/v1/{service}"
    source_paths = service_document.get("paths")
    if not isinstance(source_paths, Mapping):
        return 0
    paths = {
        path: item
        for path, item in source_paths.items()
        if isinstance(item, Mapping) and (path == prefix or path.startswith(prefix + "/"))
    }
    source_components = service_document.get("components") or {}
    target_components = document.setdefault("components", {})
    renames = _place_components(
        target_components, source_components, _referenced(paths, source_components), service
    )
    for (kind, name), new_name in renames.items():
        if new_name is not None:
            target_components.setdefault(kind, {})[new_name] = _rewrite(
                source_components[kind][name], renames
            )
    operation_ids = {
        op.get("operationId") for item in document.get("paths", {}).values() for op in _operations(item)
    }
    for path, item in paths.items():
        rewritten = _rewrite(item, renames)
        for operation in _operations(rewritten):
            operation["security"] = copy.deepcopy(SECURITY)
            responses = operation.setdefault("responses", {})
            for status, response in errors(*GATEWAY_ERRORS, shape=ErrorResponse).items():
                responses.setdefault(str(status), response)
            if operation.get("operationId") in operation_ids:
                operation["operationId"] = f"{service}_{operation['operationId']}"
            operation_ids.add(operation.get("operationId"))
        document.setdefault("paths", {})[path] = rewritten
    return len(paths)


def _operations(item: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for method, operation in item.items():
        if method in _HTTP_METHODS and isinstance(operation, dict):
            yield operation


def _refs(node: Any) -> Iterator[tuple[str, str]]:
    """Every `(kind, name)` that `node` references as `#/components/<kind>/<name>`."""
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENTS_REF):
            kind, _, name = ref.removeprefix(_COMPONENTS_REF).partition("/")
            if name and "/" not in name:
                yield kind, name
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _referenced(paths: Mapping[str, Any], components: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The components `paths` need, directly or through other components."""
    wanted: set[tuple[str, str]] = set()
    pending = list(_refs(paths))
    while pending:
        key = pending.pop()
        kind, name = key
        if key in wanted or name not in (components.get(kind) or {}):
            continue
        wanted.add(key)
        pending.extend(_refs(components[kind][name]))
    return wanted


def _place_components(
    target: Mapping[str, Any], source: Mapping[str, Any], wanted: set[tuple[str, str]], service: str
) -> dict[tuple[str, str], str | None]:
    """For each wanted source component, the name it gets in the target, or None to reuse the target's
    identical one. A component is only reused if everything it references is reused too."""
    reuse = {
        (kind, name)
        for kind, name in wanted
        if name in (target.get(kind) or {}) and target[kind][name] == source[kind][name]
    }
    changed = True
    while changed:
        changed = False
        for key in list(reuse):
            if any(dep not in reuse for dep in _refs(source[key[0]][key[1]]) if dep in wanted):
                reuse.discard(key)
                changed = True
    placed: dict[tuple[str, str], str | None] = dict.fromkeys(reuse)
    taken = {(kind, name) for kind, names in target.items() if isinstance(names, Mapping) for name in names}
    for kind, name in sorted(wanted - reuse):
        candidate, n = name, 1
        if (kind, candidate) in taken:
            candidate = f"{service}_{name}"
        while (kind, candidate) in taken:
            n += 1
            candidate = f"{service}_{name}_{n}"
        taken.add((kind, candidate))
        placed[(kind, name)] = candidate
    return placed


def _rewrite(node: Any, renames: Mapping[tuple[str, str], str | None]) -> Any:
    """A deep copy of `node` with its component references following `renames`."""
    if isinstance(node, Mapping):
        out = {key: _rewrite(value, renames) for key, value in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_COMPONENTS_REF):
            kind, _, name = ref.removeprefix(_COMPONENTS_REF).partition("/")
            new_name = renames.get((kind, name))
            if new_name is not None:
                out["$ref"] = f"{_COMPONENTS_REF}{kind}/{new_name}"
        return out
    if isinstance(node, list):
        return [_rewrite(value, renames) for value in node]
    return node


class ApiDocument:
    """The merged document, rebuilt at most every `ttl_seconds` per worker; concurrent callers share
    one rebuild."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._own: Document | None = None
        self._body: bytes | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def body(self, app: FastAPI, state: GatewayState) -> bytes:
        """The document as JSON."""
        if self._body is not None and self.clock() < self._expires:
            return self._body
        async with self._lock:
            if self._body is None or self.clock() >= self._expires:
                document, missing = await self._build(app, state)
                self._body = orjson.dumps(document)
                ttl = min(self.ttl_seconds, _INCOMPLETE_TTL_SECONDS) if missing else self.ttl_seconds
                self._expires = self.clock() + ttl
            return self._body

    async def _build(self, app: FastAPI, state: GatewayState) -> tuple[Document, list[str]]:
        if self._own is None:
            self._own = gateway_document(app)
        document = copy.deepcopy(self._own)
        names = list(state.upstreams)
        fetched = await asyncio.gather(*(_fetch_document(state, name) for name in names))
        missing = []
        for name, service_document in zip(names, fetched, strict=True):
            if service_document is None:
                missing.append(name)
                continue
            if merge_service(document, name, service_document) == 0:
                logger.warning("service documents no domain route", extra={"upstream": name})
        if missing:
            document["info"]["description"] = (
                f"{document['info'].get('description', '')}\n\n**Not documented right now** (not answering): "
                f"{', '.join(missing)}; their `/v1/<service>/...` routes are missing from this document."
            )
        return document, missing


async def _fetch_document(state: GatewayState, service: str) -> dict[str, Any] | None:
    try:
        answer = await state.client.request(
            state.upstreams[service],
            "GET",
            "/openapi.json",
            timeout=state.settings.readiness_timeout,
            probe=True,
        )
    except ModelGateError:
        return None
    if answer.status_code != 200:
        return None
    try:
        document = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None
