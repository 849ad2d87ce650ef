"""Errors as HTTP responses: the error's status and headers (`errors.py`) with the body of
its surface (`error_bodies.py`): the project's shape, OpenAI's under /v1/, Anthropic's under
/v1/messages."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..context import request_id
from ..error_bodies import (
    anthropic_body,
    anthropic_status,
    is_anthropic_path,
    is_openai_path,
    openai_body,
    project_body,
)
from ..errors import ChatRelayError, FrameworkError, MethodNotAllowed, NotFound


def error_response(exc: ChatRelayError, **extra: object) -> JSONResponse:
    """`{"error": {"code", "message", ["fields"], ["request_id"]}}` with the error's status."""
    body = project_body(exc, request_id=request_id.get(), **extra)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers())


def openai_error_response(exc: ChatRelayError) -> JSONResponse:
    """OpenAI's error shape, which its SDKs parse: `{"error": {message, type, param, code}}`."""
    return JSONResponse(openai_body(exc), status_code=exc.status, headers=exc.headers())


def anthropic_error_response(exc: ChatRelayError) -> JSONResponse:
    """Anthropic's error shape, which its SDK parses: `{"type": "error", "error": {type,
    message}}`, with the status its SDK maps to the matching exception class."""
    body = anthropic_body(exc, request_id=request_id.get())
    return JSONResponse(body, status_code=anthropic_status(exc), headers=exc.headers())


def error_response_for(path: str, exc: ChatRelayError) -> JSONResponse:
    """The error in the shape of the surface `path` belongs to: Anthropic's under
    /v1/messages, OpenAI's elsewhere under /v1/."""
    if is_anthropic_path(path):
        return anthropic_error_response(exc)
    return openai_error_response(exc) if is_openai_path(path) else error_response(exc)


def framework_error(exc: HTTPException) -> ChatRelayError:
    """An HTTP error Starlette raised itself (routing, static files) as an error of our tree."""
    message = str(exc.detail)
    if exc.status_code == 404:
        return NotFound(message)
    if exc.status_code == 405:
        allow = next((v for k, v in (exc.headers or {}).items() if k.lower() == "allow"), "")
        return MethodNotAllowed(message, [m.strip() for m in allow.split(",") if m.strip()])
    return FrameworkError(exc.status_code, message, exc.headers)
