"""What an error looks like on each surface's wire: the one mapping per surface.

Every error body the service sends is built here, from the error alone (`errors.py` holds
its status, code and headers): HTTP responses (`routes/errors.py`) and the error frames of
streams use the same functions.

- The project's own shape, for the seed's routes and everything not under `/v1/`:
  `{"error": {"code", "message", ["fields"], ["request_id"]}}` as an HTTP body
  (`project_body`), and `{"error": message, "code", ["request_id"], ["retry_after"]}` as the
  seed's stream error frame (`seed_frame_payload`).
- OpenAI's shape, under `/v1/`, which its SDKs parse both as an HTTP body and as an error
  chunk in a stream: `{"error": {message, type, param, code}}` (`openai_body`).
- Anthropic's shape, under `/v1/messages`, as an HTTP body and as a stream's `event: error`:
  `{"type": "error", "error": {type, message}}` (`anthropic_body`), with the status its SDK
  maps to its exception classes (`anthropic_status`: 400 for a field error, 529 overloaded).
"""

from __future__ import annotations

from typing import Any

from .errors import ChatRelayError

# Our statuses as OpenAI error `type`s; any other is an `api_error`.
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def is_openai_path(path: str) -> bool:
    """Whether `path` belongs to the OpenAI-compatible surface."""
    return path.startswith("/v1/") and not is_anthropic_path(path)


def is_anthropic_path(path: str) -> bool:
    """Whether `path` belongs to the Anthropic Messages API surface."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def project_body(exc: ChatRelayError, *, request_id: str | None, **extra: object) -> dict[str, Any]:
    """The project's error body; `extra` adds keys that are set (e.g. `partial_content`)."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.problems:
        body["fields"] = [{"field": p.field, "message": p.message} for p in exc.problems]
    body.update({k: v for k, v in extra.items() if v is not None})
    if request_id is not None:
        body["request_id"] = request_id  # what to quote to the operator, who finds it in the logs
    return {"error": body}


def seed_frame_payload(exc: ChatRelayError, *, request_id: str | None) -> dict[str, Any]:
    """The seed's stream error frame: a message safe to show, a machine code, maybe a retry
    hint (the seed guide's flat shape, which its frontends read)."""
    payload: dict[str, Any] = {"error": exc.message, "code": exc.code}
    if request_id is not None:
        payload["request_id"] = request_id
    if exc.retry_after is not None:
        payload["retry_after"] = round(exc.retry_after, 3)
    return payload


def openai_body(exc: ChatRelayError) -> dict[str, Any]:
    """OpenAI's error shape, as an HTTP body and as a stream's error chunk."""
    return {
        "error": {
            "message": exc.message,
            "type": OPENAI_TYPES.get(exc.status, "api_error"),
            "param": exc.problems[0].field if exc.problems else None,
            "code": exc.code,
        }
    }


# Our statuses as Anthropic error `type`s (platform.claude.com/docs/en/api/errors); any other
# 4xx is an `invalid_request_error`, any other 5xx an `api_error`.
ANTHROPIC_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Errors that mean "come back in a moment", as Anthropic's clients know them.
_OVERLOADED = ("overloaded", "server_restarting", "storage_unavailable")


def anthropic_status(exc: ChatRelayError) -> int:
    """The HTTP status on the Anthropic surface: Anthropic answers a malformed request 400
    (its SDK raises BadRequestError) and an overloaded upstream 529 (OverloadedError)."""
    if exc.code == "overloaded":
        return 529
    if exc.status in (415, 422):
        return 400
    return exc.status


def anthropic_type(exc: ChatRelayError) -> str:
    if exc.code in _OVERLOADED:
        return "overloaded_error"
    status = anthropic_status(exc)
    if status in ANTHROPIC_TYPES:
        return ANTHROPIC_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_body(exc: ChatRelayError, *, request_id: str | None = None) -> dict[str, Any]:
    """Anthropic's error shape, as an HTTP body and as a stream's `event: error` data."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": anthropic_type(exc), "message": exc.message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body
