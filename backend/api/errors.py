"""Every API error is `{code, message}` with a stable code, never a traceback.

The code is the `BoxuiError.code` that the CLI's `--json` output already uses, so a script
handles the same failure the same way whichever path it took. The HTTP status follows
from the code; a code not listed here is a server-side failure (500).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend.errors import BoxuiError

log = logging.getLogger("boxui.api")

STATUS_BY_CODE: dict[str, int] = {
    "not_found": 404,
    "template_not_found": 404,
    "no_such_endpoint": 404,
    "method_not_allowed": 405,
    "exists": 409,
    "busy": 409,
    "draining": 409,
    "not_running": 409,
    "illegal_transition": 409,
    "at_capacity": 409,
    "pool": 409,
    "snapshot_mismatch": 409,
    "provision_failed": 409,
    "no_scripts": 409,
    "port_in_use": 409,
    "forward_exists": 409,
    "no_such_forward": 404,
    "invalid_name": 422,
    "invalid_spec": 422,
    "invalid_request": 422,
    "invalid_disk": 422,
    "invalid_mount": 422,
    "invalid_recipe": 422,
}


class ApiError(BaseModel):
    """The body of every error response."""

    code: str
    message: str


#: the error responses every operation documents (so clients and schemathesis know them)
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ApiError, "description": "malformed request; nothing was changed"},
    404: {"model": ApiError, "description": "no such machine or service"},
    409: {"model": ApiError, "description": "not possible in the current state"},
    422: {"model": ApiError, "description": "invalid request; nothing was changed"},
    500: {"model": ApiError, "description": "boxui failed to carry out the request"},
}


def error_response(code: str, message: str, status: int | None = None) -> JSONResponse:
    body = ApiError(code=code, message=message).model_dump()
    return JSONResponse(body, status_code=status or STATUS_BY_CODE.get(code, 500))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def install_error_handlers(app: FastAPI) -> None:
    async def boxui_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BoxuiError)
        if STATUS_BY_CODE.get(exc.code, 500) >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(exc.code, str(exc))

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response("invalid_request", _validation_message(exc))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "no_such_endpoint", 405: "method_not_allowed"}.get(
            exc.status_code, "invalid_request" if exc.status_code < 500 else "error")
        return error_response(code, str(exc.detail), exc.status_code)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: internal error", request.method, request.url.path)
        return error_response("internal", f"internal error: {type(exc).__name__}: {exc}", 500)

    app.add_exception_handler(BoxuiError, boxui_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
