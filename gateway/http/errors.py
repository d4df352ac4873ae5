"""Every failure becomes the same JSON answer: ``{"status": "error", "message", "request_id"}``.

The gateway's own failures are :class:`shared.errors.ServiceError` s and map by one rule:
their status, their message, and ``Retry-After`` when they advise a retry. FastAPI's own
errors (unknown route, invalid query), and anything unexpected (500, the details only in
the log), get the same body through the handlers :func:`register_error_handlers` adds.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.http.ratelimit import retry_after_header
from gateway.schemas import ErrorResponse
from shared.errors import ServiceError
from shared.logging import request_id_var

log = logging.getLogger(__name__)

# What each error status means for this API, as the OpenAPI document says it.
ERROR_DESCRIPTIONS = {
    400: "Not a readable DICOM, or a malformed request",
    401: "API keys are configured and the request has no valid one",
    408: "The upload was not received within UPLOAD_TIMEOUT_S",
    413: "Upload larger than MAX_CONTENT_LENGTH",
    415: "Not multipart/form-data",
    422: "Valid DICOM that cannot be analysed (no pixels, colour, multi-frame, ...) or that "
    "the input selection rules refuse ('not a spine radiograph: ...')",
    429: "Rate limit or concurrent uploads per caller exceeded (see Retry-After)",
    502: "A model service failed or gave an answer that failed validation (no diagnosis)",
    503: "A model service or the gateway is unavailable or at capacity (see Retry-After)",
    504: "No answer within the deadline (REQUEST_TIMEOUT_S / UPSTREAM_TIMEOUT_S)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of a route that may answer ``codes``."""
    return {
        code: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[code]} for code in codes
    }


def error_body(status: int, message: str) -> dict[str, Any]:
    """The error JSON (``status`` is the HTTP status, which the body does not repeat)."""
    return ErrorResponse(message=message, request_id=request_id_var.get()).model_dump()


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, message), headers=headers)


def retry_headers(exc: ServiceError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds) when the error advises a retry, else None."""
    if exc.retry_after_s is None:
        return None
    return {"Retry-After": retry_after_header(exc.retry_after_s)}


def service_error_response(exc: ServiceError) -> JSONResponse:
    """The answer to a request that ``exc`` ended."""
    return error_response(exc.status_code, exc.message, retry_headers(exc))


def register_error_handlers(app: FastAPI) -> None:
    """The same error body for FastAPI's own errors and for anything unexpected."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal error; the request id identifies it in the log")
