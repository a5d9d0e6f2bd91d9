"""One exception tree and one error shape for every ModelGate process.

Every error response, from any process, is `{"error": {"code", "message", "request_id"}}` (plus
`details` for validation errors), except on the Open Inference Protocol's `/v2` paths, where OIP
clients (tritonclient) expect a string: `{"error": "<message>", "code", "request_id"}`. Code raises a
`ModelGateError` subclass; `install_error_handlers` maps it, FastAPI's validation errors, Starlette's
HTTP errors and anything unexpected to the path's shape in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from modelgate_core.context import current_request_id

logger = logging.getLogger("modelgate.errors")


class ModelGateError(Exception):
    """Base of every error a ModelGate process answers on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details) if details else None
        self.headers = dict(headers) if headers else {}


class BadRequest(ModelGateError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ModelGateError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ModelGateError):
    status_code = 403
    code = "forbidden"


class NotFound(ModelGateError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(ModelGateError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ModelGateError):
    status_code = 415
    code = "unsupported_media_type"


class Unprocessable(ModelGateError):
    status_code = 422
    code = "validation_error"


class Conflict(ModelGateError):
    status_code = 409
    code = "conflict"


class RateLimited(ModelGateError):
    status_code = 429
    code = "rate_limited"


class BadGateway(ModelGateError):
    """The upstream answered something we cannot use."""

    status_code = 502
    code = "bad_gateway"


class ServiceUnavailable(ModelGateError):
    """The upstream (or this process's model) cannot take requests right now."""

    status_code = 503
    code = "service_unavailable"


class GatewayTimeout(ModelGateError):
    status_code = 504
    code = "upstream_timeout"


# Codes for plain HTTP errors raised by Starlette itself (unknown route, wrong method, ...).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    409: "conflict",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


def is_oip_path(path: str) -> bool:
    """Whether `path` belongs to the Open Inference Protocol (its errors have OIP's shape)."""
    return path == "/v2" or path.startswith("/v2/")


def error_body(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, Any]] | None = None,
    *,
    oip: bool = False,
) -> bytes:
    """Serialise the error shape for the current request: the common one, or OIP's with `oip`."""
    request_id = current_request_id()
    if oip:
        flat: dict[str, Any] = {"error": message, "code": code, "request_id": request_id}
        if details:
            flat["details"] = list(details)
        return orjson.dumps(flat)
    error: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    oip: bool = False,
) -> Response:
    """Build the error response (OIP's shape with `oip`)."""
    return Response(
        error_body(status_code, code, message, details, oip=oip),
        status_code=status_code,
        media_type="application/json",
        headers=dict(headers) if headers else None,
    )


def _validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Turn pydantic's error list into `[{field, message, type}]`, dropping echoed input values."""
    details = []
    for err in errors:
        # A JSON syntax error's location is a character offset, not a field: report it as the body.
        parts = () if err.get("type") == "json_invalid" else err.get("loc", ())
        loc = [str(part) for part in parts if part not in ("body", "query", "path")]
        details.append(
            {
                "field": ".".join(loc) or "body",
                "message": str(err.get("msg", "invalid value")),
                "type": str(err.get("type", "value_error")),
            }
        )
    return details


def error_response_for(exc: Exception, path: str) -> Response:
    """The answer to `exc` raised while serving `path`: the one mapping of errors to responses, used by
    the installed handlers and by plain-ASGI routes that answer before FastAPI's router."""
    oip = is_oip_path(path)
    if isinstance(exc, ModelGateError):
        if oip and exc.status_code == 422:
            # OIP has no 422: content that does not fit the model (a damaged image...) is a 400 there.
            return error_response(400, "bad_request", exc.message, exc.details, exc.headers, oip=True)
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers, oip=oip)
    if isinstance(exc, RequestValidationError):
        details = _validation_details(exc.errors())
        fields = ", ".join(sorted({d["field"] for d in details}))
        if oip:
            # OIP has no 422: a body or parameter that does not fit the protocol is a 400.
            return error_response(400, "bad_request", f"Invalid request: {fields}", details, oip=True)
        return error_response(422, "validation_error", f"Invalid request: {fields}", details)
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return error_response(exc.status_code, code, message, headers=exc.headers, oip=oip)
    # Never leak internals: the message is generic, the traceback goes to the log with the request ID.
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "Internal server error", oip=oip)


async def _on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, StarletteHTTPException) and exc.status_code == 405:
        # Starlette names only the methods of the first route that matched the path; a path served by
        # several routes (GET and PUT of one resource) must list them all.
        exc = StarletteHTTPException(405, exc.detail, headers={"allow": _allowed_methods(request)})
    return error_response_for(exc, request.scope["path"])


def _allowed_methods(request: Request) -> str:
    path = request.scope["path"]
    methods: set[str] = set()
    for route in request.app.router.routes:
        # FastAPI keeps an included router as one route; it lists the routes inside, with their full path.
        inner = getattr(route, "effective_route_contexts", None)
        for candidate in inner() if inner is not None else [route]:
            regex = getattr(candidate, "path_regex", None)
            if regex is not None and regex.match(path):
                methods |= getattr(candidate, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error raised in `app` to the common error shape."""
    for kind in (ModelGateError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _on_error)
