"""Thin REST endpoints over the data plane: the Open Inference Protocol at `/v2`, its model
repository extension, and the TF Serving / KServe v1 style `POST /v1/models/{name}:predict`.

Bodies are read raw (the codec decodes JSON and binary tensors), so a bad body is the protocol's
400 with `{"error": ...}`, never FastAPI's 422 `{"detail": ...}`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from modelgate_core.errors import BadRequest
from modelgate_core.oip.dataplane import DataPlane
from modelgate_core.oip.types import (
    HEADER_LENGTH_HEADER,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    OipError,
    RepositoryEntry,
    ServerMetadata,
)
from modelgate_core.repository.policy import Traffic

OIP_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OipError, "description": description}
    for code, description in {
        400: "The request does not fit the protocol or the model's tensors",
        404: "Unknown model or version",
        413: "Request body too large",
        503: "The model is not ready",
    }.items()
}

# The infer body as OIP documents it; the binary tensor extension's form is the same JSON header
# followed by the raw tensor bytes (`Inference-Header-Content-Length` says where the JSON ends).
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
            },
        },
    },
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Binary tensor extension: length of the JSON header at the start of the body",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
}
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "additionalProperties": False,
                    "properties": {"instances": {"type": "array", "minItems": 1, "items": {}}},
                }
            }
        },
    }
}

TRAFFIC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Traffic"}}},
    }
}


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


def _model_dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def oip_router(plane: DataPlane) -> APIRouter:
    """The `/v2` routes and `/v1/models/{name}:predict`, answering from `plane`."""
    router = APIRouter(tags=["open inference protocol"], responses=OIP_ERRORS)

    @router.get("/v2", summary="Server metadata", response_model=ServerMetadata)
    async def server_metadata() -> Response:
        return _json(_model_dump(plane.server_metadata()))

    @router.get("/v2/health/live", summary="Server liveness")
    async def server_live() -> Response:
        return _json({"live": True})

    @router.get("/v2/health/ready", summary="Server readiness (200 when ready)")
    async def server_ready() -> Response:
        ready = plane.server_ready()
        return _json({"ready": ready}, 200 if ready else 503)

    @router.get("/v2/models/{name}", summary="Model metadata", response_model=ModelMetadata)
    async def model_metadata(name: str) -> Response:
        return _json(_model_dump(plane.model_metadata(name, None)))

    @router.get(
        "/v2/models/{name}/versions/{version}",
        summary="Model version metadata",
        response_model=ModelMetadata,
    )
    async def model_version_metadata(name: str, version: str) -> Response:
        return _json(_model_dump(plane.model_metadata(name, version)))

    @router.get(
        "/v2/models/{name}/ready", summary="Model readiness (200 when ready)", response_model=ModelReady
    )
    async def model_ready(name: str) -> Response:
        ready = plane.model_ready(name, None)
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    @router.get(
        "/v2/models/{name}/versions/{version}/ready",
        summary="Model version readiness (200 when ready)",
        response_model=ModelReady,
    )
    async def model_version_ready(name: str, version: str) -> Response:
        ready = plane.model_ready(name, version)
        return _json({"name": name, "ready": ready}, 200 if ready else 503)

    async def infer(name: str, version: str | None, request: Request) -> Response:
        body, headers = await plane.infer(
            name, version, await request.body(), request.headers.get(HEADER_LENGTH_HEADER)
        )
        return Response(body, headers=headers)

    @router.post(
        "/v2/models/{name}/infer",
        summary="Inference (JSON or binary tensors)",
        response_model=InferenceResponse,
        openapi_extra=INFER_BODY,
    )
    async def model_infer(name: str, request: Request) -> Response:
        return await infer(name, None, request)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        summary="Inference on one version (JSON or binary tensors)",
        response_model=InferenceResponse,
        openapi_extra=INFER_BODY,
    )
    async def model_version_infer(name: str, version: str, request: Request) -> Response:
        return await infer(name, version, request)

    @router.post(
        "/v2/repository/index",
        summary="Every model version in the repository, with its state",
        response_model=list[RepositoryEntry],
    )
    async def repository_index(request: Request) -> Response:
        options = await _optional_object(request)
        ready_only = options.get("ready", False)
        if not isinstance(ready_only, bool):
            raise BadRequest('"ready" must be true or false')
        return _json([_model_dump(e) for e in await plane.index(ready_only)])

    @router.post("/v2/repository/models/{name}/load", summary="Load a model (answers when it is ready)")
    async def repository_load(name: str, request: Request) -> Response:
        await _optional_object(request)
        entries = await plane.load(name)
        return _json({"name": name, "versions": [_model_dump(e) for e in entries]})

    @router.post(
        "/v2/repository/models/{name}/unload",
        summary="Unload a model (after its in-flight requests)",
    )
    async def repository_unload(name: str, request: Request) -> Response:
        await _optional_object(request)
        await plane.unload(name)
        return _json({"name": name, "state": "UNAVAILABLE"})

    @router.get(
        "/v2/repository/models/{name}/traffic",
        summary="How unversioned requests are shared between the model's versions",
    )
    async def repository_traffic(name: str) -> Response:
        return _json(plane.traffic(name))

    @router.put(
        "/v2/repository/models/{name}/traffic",
        summary="Set the default version, canary and shadow (answers once every worker applies it)",
        openapi_extra=TRAFFIC_BODY,
    )
    async def repository_set_traffic(name: str, request: Request) -> Response:
        return _json(await plane.set_traffic(name, await request.body()))

    @router.post("/v2/repository/models/{name}/traffic/promote", summary="The canary becomes the default")
    async def repository_promote(name: str, request: Request) -> Response:
        await _optional_object(request)
        return _json(await plane.promote(name))

    @router.post("/v2/repository/models/{name}/traffic/rollback", summary="Remove the canary")
    async def repository_rollback(name: str, request: Request) -> Response:
        await _optional_object(request)
        return _json(await plane.rollback(name))

    @router.post(
        "/v1/models/{name}:predict",
        summary="Predict for a list of instances (TF Serving / KServe v1 style)",
        tags=["models"],
        openapi_extra=PREDICT_BODY,
    )
    async def predict(name: str, request: Request) -> Response:
        return _json(await plane.predict_instances(name, await request.body()))

    return router


async def _optional_object(request: Request) -> dict[str, Any]:
    """An optional JSON object body (tritonclient sends none): `{}` when empty."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object")
    return value


def oip_components() -> dict[str, Any]:
    """Component schemas the `/v2` operations refer to, for an app's OpenAPI document."""
    components: dict[str, Any] = {}
    for model in (InferenceRequest, Traffic):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    return components
