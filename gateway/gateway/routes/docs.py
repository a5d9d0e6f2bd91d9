"""`GET /openapi.json` (the merged document, see `gateway.openapi`) and `GET /docs` (Swagger UI on it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, Response

from gateway.deps import State
from gateway.openapi import ApiDocument

router = APIRouter(include_in_schema=False)


@router.get("/openapi.json")
async def openapi_document(state: State, request: Request) -> Response:
    document: ApiDocument = request.app.state.api_document
    return Response(await document.body(request.app, state), media_type="application/json")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - Swagger UI")
