"""Dependencies: the app's shared objects and API-key authentication, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from gateway.config import GatewaySettings
from gateway.keys import ApiKey, KeyStore
from gateway.upstream import Upstream, UpstreamClient
from modelgate_core.context import annotate
from modelgate_core.errors import Forbidden, Unauthorized


@dataclass(slots=True)
class GatewayState:
    """Everything the lifespan makes once and the handlers share."""

    settings: GatewaySettings
    client: UpstreamClient
    keys: KeyStore
    upstreams: dict[str, Upstream]


def get_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


State = Annotated[GatewayState, Depends(get_state)]

# auto_error=False: a missing key must be our 401 in the common shape, not FastAPI's default.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")


async def authenticate(
    state: State,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key record; 401 when the key is missing or unknown."""
    presented = api_key or (bearer.credentials if bearer else None)
    if not presented:
        raise Unauthorized(
            "Missing API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
            headers={"www-authenticate": "Bearer"},
        )
    record = await state.keys.authenticate(presented)
    if record is None:
        raise Unauthorized("Invalid API key", headers={"www-authenticate": "Bearer"})
    annotate(key_name=record.name)
    return record


AuthenticatedKey = Annotated[ApiKey, Depends(authenticate)]


def require_scope(scope: str) -> Callable[[ApiKey], Awaitable[ApiKey]]:
    """Dependency: the key must carry `scope` (or `*`); 403 otherwise."""

    async def check(key: AuthenticatedKey) -> ApiKey:
        if not key.allows(scope):
            raise Forbidden(f"API key '{key.name}' lacks the '{scope}' scope")
        return key

    return check


TabularKey = Annotated[ApiKey, Depends(require_scope("tabular"))]
VisionKey = Annotated[ApiKey, Depends(require_scope("vision"))]
NlpKey = Annotated[ApiKey, Depends(require_scope("nlp"))]
