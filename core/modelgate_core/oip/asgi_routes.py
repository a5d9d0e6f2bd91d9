"""OIP inference as a plain-ASGI route, answered before FastAPI's router.

`POST /v2/models/{name}[/versions/{version}]/infer` is nearly every request a service gets, and for a
small model FastAPI's routing and exception middleware cost as much CPU as the model (the profile is
in the benchmark report, `make bench`). `InferRoutes` answers it with the same data plane call as the
FastAPI route in `modelgate_core.oip.rest`, which stays: it is the OpenAPI document, and it answers
whatever this does not match.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from modelgate_core.asgi import header, read_body, respond, route_template
from modelgate_core.oip.dataplane import DataPlane
from modelgate_core.oip.paths import ModelPath, parse_model_path
from modelgate_core.oip.types import HEADER_LENGTH_HEADER

_HEADER_LENGTH = HEADER_LENGTH_HEADER.encode()


class InferRoutes:
    """Plain-ASGI middleware: answers OIP infer calls from `plane`, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = parse_model_path(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None or found.step != "infer":
            await self.app(scope, receive, send)
            return
        scope["route"] = route_template(found.template)
        await respond(scope, receive, send, self._infer(found, scope, receive))

    async def _infer(self, found: ModelPath, scope: Scope, receive: Receive) -> Response:
        body = await read_body(receive)
        answer, headers = await self.plane.infer(
            found.name, found.version, body, header(scope, _HEADER_LENGTH)
        )
        return Response(answer, headers=headers)
