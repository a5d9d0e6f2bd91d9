"""The gateway's forwarding routes as plain ASGI, answered before FastAPI's router.

Almost every request the gateway sees is a forward (OIP model calls, KServe v1 `:predict`, the
services' `/v1/<service>/...` routes). For those, FastAPI's routing, dependency solving and exception
middleware cost more CPU than the forward itself (the profile is in the benchmark report, `make
bench`). `ProxyRoutes` matches these paths by splitting them, authenticates and checks scopes with
the same functions as the FastAPI dependencies, and forwards with the same functions as the FastAPI
routes. Those routes stay: they are the OpenAPI document, and they answer what this does not match
(another method: their 405; HEAD; paths FastAPI would redirect).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.deps import GatewayState, check_scope, client_address, presented_key, verify_key
from gateway.routes.domain import forward_domain
from gateway.routes.proxy import Incoming, forward_to_model, model_path
from modelgate_core.asgi import RouteTemplate, respond, route_template
from modelgate_core.oip.paths import parse_model_path

_DOMAIN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PREDICT_SUFFIX = ":predict"


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """One matched forward: a model route (`model` set) or a domain route (`service` set)."""

    template: RouteTemplate
    model: str = ""
    version: str | None = None
    upstream_path: str = ""  # for model routes
    service: str = ""
    subpath: str = ""  # for domain routes: what `{path:path}` took


def match_proxy_route(method: str, path: str, services: Collection[str]) -> ProxyRoute | None:
    """The forward `method path` asks for, or None for FastAPI's router to handle. Segments match as
    Starlette's `{name}` does (`[^/]+`, already percent-decoded); `{path:path}` takes the rest."""
    if path.startswith("/v2/"):
        found = parse_model_path(method, path)
        if found is None:
            return None
        upstream = model_path(found.name, found.version, found.suffix)
        return ProxyRoute(route_template(found.template), found.name, found.version, upstream_path=upstream)
    parts = path.split("/", 3)
    if len(parts) < 4 or parts[0] or parts[1] != "v1":
        return None
    if parts[2] == "models":
        name = parts[3][: -len(_PREDICT_SUFFIX)] if parts[3].endswith(_PREDICT_SUFFIX) else ""
        if method != "POST" or not name or "/" in name:
            return None
        return ProxyRoute(route_template("/v1/models/{name}:predict"), name, upstream_path=path)
    if parts[2] in services and method in _DOMAIN_METHODS:
        template = route_template(f"/v1/{parts[2]}/{{path:path}}")
        return ProxyRoute(template, service=parts[2], subpath=parts[3])
    return None


class ProxyRoutes:
    """Plain-ASGI middleware: answers the forwarding routes, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, services: Collection[str]) -> None:
        self.app = app
        self.services = frozenset(services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http":
            route = match_proxy_route(scope["method"], scope["path"], self.services)
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route.template
        state = scope["app"].state.gateway
        forwarded = self._forward(state, route, Incoming.of(scope, receive), client_address(scope))
        await respond(scope, receive, send, forwarded)

    @staticmethod
    async def _forward(state: GatewayState, route: ProxyRoute, request: Incoming, address: str) -> Response:
        key = await verify_key(state, presented_key(request.headers), address)
        if route.service:
            check_scope(key, route.service)
            return await forward_domain(state, route.service, request, route.subpath)
        return await forward_to_model(
            state, request, key, name=route.model, version=route.version, path=route.upstream_path
        )
