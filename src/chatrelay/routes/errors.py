"""Errors as HTTP responses: our JSON shape, or OpenAI's on the OpenAI-compatible routes.

The exception classes carry their HTTP status and machine code (errors.py); this module is
the one place that turns them into response bodies and headers.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ..context import request_id
from ..errors import ChatRelayError, MethodNotAllowed, StorageUnavailable, UpstreamError
from ..quotas import LimitExceeded

# Our codes as OpenAI error `type`s, where the status alone would not say it.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _headers(exc: ChatRelayError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, UpstreamError):
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
        # The OpenAI and Anthropic SDKs retry every 5xx unless told not to; a rejected key
        # would otherwise be sent upstream again and again.
        headers["x-should-retry"] = "true" if exc.retryable else "false"
    elif isinstance(exc, LimitExceeded):
        reset = str(max(1, round(exc.retry_after)))
        headers.update(
            {
                "retry-after": reset,
                "x-ratelimit-limit": str(exc.limit),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": reset,
                "x-ratelimit-scope": exc.limit_name,
            }
        )
    elif isinstance(exc, MethodNotAllowed):
        headers["allow"] = ", ".join(exc.allow)
    elif isinstance(exc, StorageUnavailable):
        headers["retry-after"] = str(exc.retry_after_s)
        headers["x-should-retry"] = "true"
    elif exc.status >= 500:
        headers["x-should-retry"] = "false"
    return headers


def error_response(exc: ChatRelayError, **extra: object) -> JSONResponse:
    """`{"error": {"code", "message", ["fields"]}}` with the error's status."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    problems = getattr(exc, "problems", None)
    if problems:
        body["fields"] = [{"field": p.field, "message": p.message} for p in problems]
    body.update({k: v for k, v in extra.items() if v is not None})
    if (rid := request_id.get()) is not None:
        body["request_id"] = rid  # what to quote to the operator, who finds it in the logs
    return JSONResponse({"error": body}, status_code=exc.status, headers=_headers(exc))


def openai_error_body(exc: ChatRelayError) -> dict[str, Any]:
    problems = getattr(exc, "problems", None)
    return {
        "error": {
            "message": exc.message,
            "type": _OPENAI_TYPES.get(exc.status, "api_error"),
            "param": problems[0].field if problems else None,
            "code": exc.code,
        }
    }


def openai_error_response(exc: ChatRelayError) -> JSONResponse:
    """OpenAI's error shape, which its SDKs parse: `{"error": {message, type, param, code}}`."""
    return JSONResponse(openai_error_body(exc), status_code=exc.status, headers=_headers(exc))


def error_response_for(path: str, exc: ChatRelayError) -> JSONResponse:
    """The error in the shape of the surface `path` belongs to: OpenAI's under /v1/."""
    return openai_error_response(exc) if path.startswith("/v1/") else error_response(exc)
