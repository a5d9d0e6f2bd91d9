"""`/v2/models/...`: the Open Inference Protocol's model endpoints, forwarded to the service holding
the model (found in the model directory). Metadata, readiness and infer, each with and without a
version; infer bodies (JSON, or JSON then raw tensor bytes) go through unparsed, both ways."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.deps import AuthenticatedKey, State
from gateway.openapi_fragments import (
    INFER_ANSWER,
    INFER_BODY,
    READ_ERRORS,
    WRITE_ERRORS,
    answer,
    errors,
)
from gateway.routes.proxy import Incoming, forward_to_model, model_path
from modelgate_core.oip.types import ModelMetadata, ModelReady

router = APIRouter(prefix="/v2/models", tags=["inference"])

_METADATA = {**answer(ModelMetadata), **errors(*READ_ERRORS)}
_READY = {**answer(ModelReady, "Whether the model (version) is ready"), **errors(*READ_ERRORS)}
_INFER = {**INFER_ANSWER, **errors(*WRITE_ERRORS)}


@router.get("/{name}", summary="Model metadata", response_model=None, responses=_METADATA)
async def model_metadata(name: str, key: AuthenticatedKey, state: State, request: Request) -> Response:
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=None, path=model_path(name, None)
    )


@router.get(
    "/{name}/versions/{version}", summary="Model version metadata", response_model=None, responses=_METADATA
)
async def model_version_metadata(
    name: str, version: str, key: AuthenticatedKey, state: State, request: Request
) -> Response:
    path = model_path(name, version)
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=version, path=path
    )


@router.get("/{name}/ready", summary="Model readiness", response_model=None, responses=_READY)
async def model_ready(name: str, key: AuthenticatedKey, state: State, request: Request) -> Response:
    path = model_path(name, None, "/ready")
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=None, path=path
    )


@router.get(
    "/{name}/versions/{version}/ready",
    summary="Model version readiness",
    response_model=None,
    responses=_READY,
)
async def model_version_ready(
    name: str, version: str, key: AuthenticatedKey, state: State, request: Request
) -> Response:
    path = model_path(name, version, "/ready")
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=version, path=path
    )


@router.post(
    "/{name}/infer", summary="Inference", response_model=None, responses=_INFER, openapi_extra=INFER_BODY
)
async def infer(name: str, key: AuthenticatedKey, state: State, request: Request) -> Response:
    path = model_path(name, None, "/infer")
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=None, path=path
    )


@router.post(
    "/{name}/versions/{version}/infer",
    summary="Inference on one version",
    response_model=None,
    responses=_INFER,
    openapi_extra=INFER_BODY,
)
async def infer_version(
    name: str, version: str, key: AuthenticatedKey, state: State, request: Request
) -> Response:
    path = model_path(name, version, "/infer")
    return await forward_to_model(
        state, Incoming.of_request(request), key, name=name, version=version, path=path
    )
