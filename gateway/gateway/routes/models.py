"""`GET /v1/models`: every model behind the gateway, gathered from the services."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.deps import AuthenticatedKey, GatewayState, State
from gateway.upstream import Upstream
from modelgate_core.errors import ModelGateError
from modelgate_core.schemas.common import ModelInfo

router = APIRouter(tags=["models"])


class ModelCatalog(BaseModel):
    models: list[ModelInfo]
    unavailable: list[str] = Field(default_factory=list, description="Services that did not answer")


async def fetch_models(
    state: GatewayState, upstream: Upstream, *, probe: bool = False
) -> list[ModelInfo] | None:
    """The service's own catalogue, or None when it does not answer properly."""
    try:
        answer = await state.client.request(
            upstream, "GET", "/v1/models", timeout=state.settings.readiness_timeout, probe=probe
        )
    except ModelGateError:
        return None
    if answer.status_code != 200:
        return None
    try:
        return [ModelInfo.model_validate(m) for m in orjson.loads(answer.content)["models"]]
    except (KeyError, TypeError, ValueError):  # a malformed catalogue counts as no answer
        return None


@router.get("/models", summary="List every model with its version, domain and metrics")
async def list_models(_key: AuthenticatedKey, state: State) -> ModelCatalog:
    upstreams = list(state.upstreams.values())
    answers = await asyncio.gather(*(fetch_models(state, u) for u in upstreams))
    catalog = ModelCatalog(models=[])
    for upstream, models in zip(upstreams, answers, strict=True):
        if models is None:
            catalog.unavailable.append(upstream.name)
        else:
            catalog.models.extend(models)
    return catalog
