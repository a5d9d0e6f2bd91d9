"""The gateway's own OIP server endpoints: `GET /v2`, `/v2/health/live`, `/v2/health/ready` (no key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.openapi_fragments import ServerLive, ServerReady, answer, errors
from gateway.readiness import readiness_for
from modelgate_core.errors import ServiceUnavailable
from modelgate_core.oip.types import ServerMetadata

router = APIRouter(prefix="/v2", tags=["server"])

# What this gateway speaks besides the core protocol: binary tensors are passed through to the services,
# and the repository extension is the merged view of every service's repository.
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@router.get("", summary="Server metadata", response_model=None, responses=answer(ServerMetadata))
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="modelgate", version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live", summary="Server liveness", response_model=None, responses=answer(ServerLive))
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    summary="Server readiness: the gateway can serve at least one service",
    description=(
        "The same verdict as `/health/ready`: ready while at least one model service is ready (a down "
        "service's models answer 503 on their own) and the gateway is not shutting down. "
        "`/health/ready` names each component's status, Redis's included."
    ),
    responses={**answer(ServerReady), **errors(503)},
)
async def server_ready(request: Request) -> Response:
    report = await readiness_for(request.app)()
    if not report.ready:
        raise ServiceUnavailable(f"Not ready: {', '.join(report.not_ready()) or 'unknown'}")
    return Response(b'{"ready":true}', media_type="application/json")
