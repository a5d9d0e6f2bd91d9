"""`/v1/models`: every model behind the gateway (gathered from the services), and KServe v1's
`POST /v1/models/{name}:predict`, forwarded to the service holding the model."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from gateway.catalog import fetch_models
from gateway.deps import AuthenticatedKey, State
from gateway.openapi_fragments import WRITE_ERRORS, PredictRequest, PredictResponse, answer, errors, json_body
from gateway.routes.proxy import Incoming, forward_to_model
from modelgate_core.schemas.common import ErrorResponse, ModelInfo

router = APIRouter(prefix="/v1/models", tags=["models"])


class ModelCatalog(BaseModel):
    models: list[ModelInfo]
    unavailable: list[str] = Field(default_factory=list, description="Services that did not answer")


@router.get(
    "",
    summary="List every model with its version, domain and metrics",
    responses=errors(401, 429, shape=ErrorResponse),
)
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


# A literal `:predict` after the parameter: Starlette matches `{name}` as `[^/]+`, backtracking to leave
# `:predict`, so `/v1/models/iris:predict` is this route with name "iris".
@router.post(
    "/{name}:predict",
    summary="KServe v1 predict: rows in, predictions out",
    response_model=None,
    responses={**answer(PredictResponse), **errors(*WRITE_ERRORS, shape=ErrorResponse)},
    openapi_extra=json_body(PredictRequest),
)
async def predict(name: str, key: AuthenticatedKey, state: State, request: Request) -> Response:
    path = f"/v1/models/{name}:predict"
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=None, path=path
    )
