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
    return path.startswith("/v1/")


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
