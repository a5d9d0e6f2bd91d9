"""The merged OpenAPI document: the gateway's own /v2 routes plus each service's domain routes."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import FastAPI, File, UploadFile
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from gateway.openapi import merge_service
from modelgate_core.errors import install_error_handlers
from modelgate_core.schemas.common import ErrorResponse

FakeServices = Any  # conftest.FakeServices


class Flower(BaseModel):
    petal_length: float = Field(gt=0, examples=[1.4])


class Species(BaseModel):
    label: str
    model: ModelMetadata


class ModelMetadata(BaseModel):  # the same name as an OIP schema of the gateway's, but another schema
    name: str
    trained_on: str


Species.model_rebuild()


def tabular_document() -> dict[str, Any]:
    """A real FastAPI service's document: a domain route, plus paths the gateway serves itself."""
    app = FastAPI(title="tabular")
    install_error_handlers(app)
    errors: dict[int | str, dict[str, Any]] = {422: {"model": ErrorResponse, "description": "Invalid input"}}

    @app.post("/v1/tabular/flower", responses=errors)
    async def flower(body: Flower) -> Species:
        raise NotImplementedError

    @app.get("/v1/models")
    async def models() -> dict[str, str]:
        raise NotImplementedError

    @app.get("/v2/models/{name}")
    async def metadata(name: str) -> dict[str, str]:
        raise NotImplementedError

    return app.openapi()


def vision_document() -> dict[str, Any]:
    app = FastAPI(title="vision")

    @app.post("/v1/vision/classify")
    async def classify(file: Annotated[UploadFile, File()], top_k: int = 5) -> dict[str, int]:
        raise NotImplementedError

    return app.openapi()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def undocumented(spec: dict[str, Any]) -> str:
    """The services `info.description` says are missing from the document ("" when none is)."""
    description: str = spec["info"]["description"]
    _, _, tail = description.partition("**Not documented right now** (not answering): ")
    return tail.partition(";")[0]


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_merged_document_has_service_paths_and_their_schemas(
    client: TestClient, services: FakeServices
) -> None:
    services.documents = {"tabular": tabular_document(), "vision": vision_document()}
    spec = client.get("/openapi.json").json()

    errors = list(OPENAPI_31_VALIDATOR.iter_errors(spec))
    assert errors == [], errors[:3]
    for ref in refs(spec):
        resolve(spec, ref)  # every reference points at something

    paths = spec["paths"]
    assert {"/v1/tabular/flower", "/v1/vision/classify"} <= set(paths)
    flower = paths["/v1/tabular/flower"]["post"]
    body_ref = flower["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert resolve(spec, body_ref)["properties"]["petal_length"]["exclusiveMinimum"] == 0
    answer = resolve(spec, flower["responses"]["200"]["content"]["application/json"]["schema"]["$ref"])
    # The service's ModelMetadata is not the OIP one: it was renamed, the gateway's kept its name.
    assert answer["properties"]["model"]["$ref"] == "#/components/schemas/tabular_ModelMetadata"
    schemas = spec["components"]["schemas"]
    assert "trained_on" in schemas["tabular_ModelMetadata"]["properties"]
    assert "platform" in schemas["ModelMetadata"]["properties"]
    assert "tabular_ErrorResponse" not in schemas  # the same schema under the same name is shared
    # The gateway's security and its own errors on every service operation.
    assert flower["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    assert {"401", "403", "422", "429", "502", "503", "504"} <= set(flower["responses"])
    upload = paths["/v1/vision/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert resolve(spec, upload["$ref"])["required"] == ["file"]
    # Only a service's own domain routes: the gateway documents /v1/models and /v2 itself.
    assert (
        "platform"
        in resolve(
            spec,
            paths["/v2/models/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
                "$ref"
            ],
        )["properties"]
    )
    assert undocumented(spec) == "nlp"  # it has no document; the gateway's own description names all three


def test_gateway_routes_are_documented_with_oip_types(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert OPENAPI_31_VALIDATOR.is_valid(spec)
    paths = spec["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/ready",
        "/v2/repository/index",
        "/v2/repository/models/{name}/load",
        "/v1/models/{name}:predict",
        "/v1/models",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    content = infer["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert content["application/octet-stream"]["schema"]["format"] == "binary"
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/OipError")
    assert infer["security"] == [{"APIKeyHeader": []}, {"HTTPBearer": []}]
    assert "security" not in paths["/v2/health/ready"]["get"]
    schemas = spec["components"]["schemas"]
    assert {"InferenceRequest", "RequestInput", "InferenceResponse", "RepositoryEntry", "OipError"} <= set(
        schemas
    )
    assert "HTTPValidationError" not in schemas  # every 422 is documented in our own shapes
    assert not paths["/v2/repository/index"]["post"]["requestBody"]["required"]


def test_document_is_cached_and_docs_page_uses_it(client: TestClient, services: FakeServices) -> None:
    services.documents = {"tabular": tabular_document()}
    first = client.get("/openapi.json")
    fetched = len(services.sent("/openapi.json"))
    second = client.get("/openapi.json")
    assert second.content == first.content and len(services.sent("/openapi.json")) == fetched
    page = client.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text


def test_a_silent_service_is_left_out(client: TestClient, services: FakeServices) -> None:
    services.documents = {"tabular": tabular_document(), "vision": vision_document()}

    def vision_down(request: httpx.Request) -> httpx.Response:
        if services.service_of(request) == "vision":
            raise httpx.ConnectError("refused")
        return services.default(request)

    services.handler = vision_down
    spec = client.get("/openapi.json").json()
    assert "/v1/tabular/flower" in spec["paths"] and "/v1/vision/classify" not in spec["paths"]
    assert undocumented(spec) == "vision, nlp"


def test_merge_renames_only_what_differs() -> None:
    document: dict[str, Any] = {
        "paths": {},
        "components": {"schemas": {"Shared": {"type": "string"}, "Other": {"type": "integer"}}},
    }
    service = {
        "paths": {
            "/v1/nlp/a": {
                "post": {
                    "operationId": "a",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Wrap"}}
                            },
                        }
                    },
                }
            },
            "/v1/other/b": {"get": {"responses": {}}},
        },
        "components": {
            "schemas": {
                "Wrap": {
                    "type": "object",
                    "properties": {
                        "s": {"$ref": "#/components/schemas/Shared"},
                        "o": {"$ref": "#/components/schemas/Other"},
                    },
                },
                "Shared": {"type": "string"},
                "Other": {"type": "boolean"},
                "Unused": {"type": "null"},
            }
        },
    }
    assert merge_service(document, "nlp", service) == 1
    schemas = document["components"]["schemas"]
    assert schemas["Wrap"]["properties"] == {
        "s": {"$ref": "#/components/schemas/Shared"},
        "o": {"$ref": "#/components/schemas/nlp_Other"},
    }
    assert schemas["nlp_Other"] == {"type": "boolean"} and schemas["Other"] == {"type": "integer"}
    assert "Unused" not in schemas and "/v1/other/b" not in document["paths"]
    assert service["components"]["schemas"]["Wrap"]["properties"]["o"]["$ref"].endswith("/Other")  # untouched
