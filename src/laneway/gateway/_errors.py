"""JSON errors with a stable ``code``: every bad request gets one, never a bare 500."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._errors import (
    Closed,
    ConfigError,
    InvalidPayload,
    InvalidSession,
    LanewayError,
    Overloaded,
    StoreError,
    UnknownHandler,
)

__all__ = ["ApiError", "as_api_error", "describe_invalid", "error_body", "install_error_handlers"]

log = logging.getLogger("laneway.gateway")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answer: HTTP status, stable code, human message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _reply(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)


def as_api_error(exc: Exception) -> ApiError:
    """The answer for a laneway error raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded):
        wait = str(max(1, math.ceil(exc.retry_after)))
        return ApiError(429, "overloaded", str(exc), {"Retry-After": wait})
    if isinstance(exc, InvalidSession):
        return ApiError(422, "invalid_session", str(exc))
    if isinstance(exc, UnknownHandler):
        return ApiError(422, "unknown_handler", str(exc))
    if isinstance(exc, InvalidPayload | ConfigError):
        return ApiError(422, "invalid_request", str(exc))
    if isinstance(exc, Closed):
        return ApiError(503, "shutting_down", "the gateway is shutting down")
    if isinstance(exc, StoreError):
        return ApiError(503, "store_unavailable", str(exc))
    log.exception("gateway.internal_error", exc_info=exc)
    return ApiError(500, "internal", "internal error; see the server log")


async def _on_api_error(_request: Request, exc: Exception) -> JSONResponse:
    return _reply(as_api_error(exc))


def describe_invalid(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """A one-line message and the detail list for validation errors: where and what,
    never the input itself (it may be huge, or not JSON) nor a documentation link."""
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
        for e in errors
    ]
    first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    return (f"{where}: {first['msg']}" if where else str(first["msg"])), detail


async def _on_validation(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    code = "invalid_request"
    if any(tuple(e.get("loc", ()))[:2] == ("path", "session") for e in errors):
        code = "invalid_session"
    elif any(e.get("type") == "json_invalid" for e in errors):
        code = "invalid_json"
    message, detail = describe_invalid(errors)
    return JSONResponse(error_body(code, message, detail=detail), 422)


async def _on_http(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(ApiError, _on_api_error)
    # Handled inside the app (not by the last-resort handler, which re-raises).
    app.add_exception_handler(LanewayError, _on_api_error)
    app.add_exception_handler(Exception, _on_api_error)
