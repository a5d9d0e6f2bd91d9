"""`/v1/<service>/...`: each service's own domain routes, forwarded unparsed (the service validates).

One catch-all per configured service, guarded by the scope named like the service. Every method is
forwarded, so that the service's own 404 and 405 (with its `Allow`) are what a client sees; what each
route takes and answers is documented in the service's OpenAPI, merged into the gateway's. The plain-ASGI
proxy routes (`gateway.proxy_routes`) answer these paths first; the route here documents and backs them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.deps import GatewayState, State, require_scope
from gateway.routes.proxy import Incoming, forward
from modelgate_core.asgi import read_body
from modelgate_core.errors import NotFound

_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def domain_router(service: str) -> APIRouter:
    """The catch-all for `/v1/{service}/...`."""
    router = APIRouter(prefix=f"/v1/{service}", tags=[service])

    @router.api_route(
        "/{path:path}",
        methods=_METHODS,
        include_in_schema=False,
        dependencies=[Depends(require_scope(service))],
    )
    async def forward_domain_route(path: str, state: State, request: Request) -> Response:
        return await forward_domain(state, service, Incoming.of_request(request), path)

    return router


async def forward_domain(state: GatewayState, service: str, request: Incoming, path: str) -> Response:
    """Forward `request` for `/v1/{service}/{path}` (the caller's key already holds the scope)."""
    if not _is_plain_path(path):
        raise NotFound(f"Not found: /v1/{service}/{path}")
    body = None
    if request.method not in _BODYLESS:
        is_upload = request.headers.get("content-type", "").startswith("multipart/form-data")
        settings = state.settings
        limit = settings.max_upload_bytes if is_upload else settings.max_json_bytes
        body = await read_body(request.receive, limit, request.headers.get("content-length"))
    return await forward(state, service, request, f"/v1/{service}/{path}", body)


def _is_plain_path(path: str) -> bool:
    """No dot segments (the client would climb out of `/v1/<service>/` on the service) and nothing that
    would change the URL's meaning once put back together (`?`, `#`, a second round of escapes)."""
    return not any(segment in (".", "..") for segment in path.split("/")) and not any(
        c in path for c in "?#%\\"
    )
