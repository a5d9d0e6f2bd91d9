"""Forwarding a validated request to its service and returning the service's answer as is."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from gateway.deps import GatewayState
from modelgate_core.schemas.common import ErrorResponse

# Errors every proxied route can answer, for the OpenAPI document.
PROXY_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "The body could not be read as the declared content type",
        401: "Missing or unknown API key",
        403: "The key lacks this route's scope",
        413: "Request body too large",
        429: "Rate limit exceeded; see Retry-After",
        422: "Invalid input; `details` lists the fields",
        502: "The service gave an invalid answer",
        503: "The service is down or its model is not loaded",
        504: "The service did not answer in time",
    }.items()
}


async def forward(state: GatewayState, service: str, request: Request) -> Response:
    """Send this request's body to `service` at the same path; the JSON answer is returned unparsed."""
    upstream = state.upstreams[service]
    answer = await state.client.request(
        upstream,
        request.method,
        request.url.path,
        content=await request.body(),
        content_type=request.headers.get("content-type"),
        params=dict(request.query_params),
    )
    return Response(answer.content, status_code=answer.status_code, headers=dict(answer.headers))
