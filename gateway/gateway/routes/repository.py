"""`/v2/repository/...`: the OIP model repository extension over every service (scope `admin`).

The index is the merge of every service's; load, unload and traffic changes go to the service holding
the model, and the model directory is re-read once the service has answered, so routing follows at once.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.deps import AdminKey, State
from gateway.openapi_fragments import (
    WRITE_ERRORS,
    RepositoryIndexRequest,
    RepositoryLoadRequest,
    RepositoryLoadResponse,
    RepositoryUnloadResponse,
    TrafficState,
    answer,
    errors,
    json_body,
)
from modelgate_core.context import annotate
from modelgate_core.errors import BadRequest
from modelgate_core.oip.types import RepositoryEntry
from modelgate_core.repository.policy import Traffic

router = APIRouter(prefix="/v2/repository", tags=["model repository"])

_INDEX_ERRORS = errors(400, 401, 403, 413, 422, 429)


@router.post(
    "/index",
    summary="Every model version of every service, with its state",
    response_model=None,
    responses={**answer(RepositoryEntry, "The index", array=True), **_INDEX_ERRORS},
    openapi_extra=json_body(RepositoryIndexRequest, required=False),
)
async def repository_index(_key: AdminKey, state: State, request: Request) -> Response:
    query = _index_request(await request.body())
    await state.directory.refresh(reuse_running=False)
    entries = [e for e in state.directory.entries() if e.state == "READY" or not query.ready]
    return Response(
        orjson.dumps([e.model_dump(mode="json", exclude_none=True) for e in entries]),
        media_type="application/json",
    )


def _index_request(body: bytes) -> RepositoryIndexRequest:
    if not body.strip():
        return RepositoryIndexRequest()
    try:
        return RepositoryIndexRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid repository index request: {problems}") from exc


async def _change(state: State, request: Request, name: str, action: str, method: str = "POST") -> Response:
    # Admin calls are rare: an unknown name always gets a fresh look before the 404.
    location = await state.directory.locate(name, always_refresh_on_miss=True)
    annotate(model=name)
    body = await request.body()
    try:
        answer = await state.client.request(
            state.upstreams[location.service],
            method,
            f"/v2/repository/models/{name}/{action}",
            content=body or None,
            content_type=request.headers.get("content-type") if body else None,
            timeout=state.settings.model_load_timeout,
        )
    finally:
        # Whatever the outcome, the service's repository may have changed: re-read it before answering.
        await state.directory.refresh(reuse_running=False)
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))


_LOADED = {**answer(RepositoryLoadResponse, "Loaded: the state of each version"), **errors(*WRITE_ERRORS)}
_UNLOADED = {**answer(RepositoryUnloadResponse, "Unloaded"), **errors(*WRITE_ERRORS)}


@router.post(
    "/models/{name}/load",
    summary="Load a model on the service holding it; answers when done",
    response_model=None,
    responses=_LOADED,
    openapi_extra=json_body(RepositoryLoadRequest, required=False),
)
async def load_model(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "load")


@router.post(
    "/models/{name}/unload",
    summary="Unload a model on the service holding it; answers when done",
    response_model=None,
    responses=_UNLOADED,
    openapi_extra=json_body(RepositoryLoadRequest, required=False),
)
async def unload_model(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "unload")


_TRAFFIC = {
    **answer(TrafficState, "The model's traffic: as configured, and as served now"),
    **errors(*WRITE_ERRORS),
}


@router.get(
    "/models/{name}/traffic",
    summary="How the model's unversioned requests are shared between its versions",
    response_model=None,
    responses=_TRAFFIC,
)
async def model_traffic(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "traffic", "GET")


@router.put(
    "/models/{name}/traffic",
    summary="Set the default version, canary and shadow; answers once the service's workers apply it",
    response_model=None,
    responses=_TRAFFIC,
    openapi_extra=json_body(Traffic),
)
async def set_model_traffic(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "traffic", "PUT")


@router.post(
    "/models/{name}/traffic/promote",
    summary="The canary becomes the default version",
    response_model=None,
    responses=_TRAFFIC,
)
async def promote_canary(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "traffic/promote")


@router.post(
    "/models/{name}/traffic/rollback",
    summary="Remove the canary: the default version answers every unversioned request",
    response_model=None,
    responses=_TRAFFIC,
)
async def rollback_canary(name: str, _key: AdminKey, state: State, request: Request) -> Response:
    return await _change(state, request, name, "traffic/rollback")
