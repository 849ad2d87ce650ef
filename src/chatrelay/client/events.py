"""The events of a chat stream, the client's errors, and how frames become events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import httpx
from httpx_sse import ServerSentEvent

DEFAULT_URL: Final = "http://127.0.0.1:8000"
# The server sends a `: ping` every CHATRELAY_HEARTBEAT_S (15 s) while nothing else flows, so a
# minute of silence means the connection is dead: it is then resumed.
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)
MAX_BACKOFF_S: Final = 4.0


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Start:
    """The answering model is known (`event: start`); `data` is the whole frame."""

    id: int
    stream_id: str | None
    model: str | None
    provider: str | None
    conversation_id: str | None
    data: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Text:
    """A piece of the reply's text (`{"content": ...}`), in order."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Thinking:
    """A piece of extended thinking (`event: thinking`)."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error frame (not an exception): the reply failed; `End` and `[DONE]` follow."""

    id: int
    code: str
    message: str
    retry_after: float | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    """The reply ended (`event: end`): `reason` is completed, error, stopped or disconnected."""

    id: int
    reason: str
    stop_reason: str | None
    usage: Usage | None


Event: TypeAlias = Start | Text | Thinking | Error | End


# -- errors ----------------------------------------------------------------------------------


class ChatRelayError(Exception):
    """Base of the client's errors."""


class APIError(ChatRelayError):
    """The server answered with an HTTP error (the request was refused)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body


class StreamError(ChatRelayError):
    """The reply ended with an error frame (raised by `text()`; iteration yields `Error`)."""

    def __init__(self, error: Error, partial: str) -> None:
        super().__init__(f"{error.message} ({error.code})")
        self.code = error.code
        self.message = error.message
        self.retry_after = error.retry_after
        self.error = error
        self.partial = partial


class ConnectionFailed(ChatRelayError):
    """The server could not be reached, or kept failing, for `max_retries` attempts."""


class ResumeFailed(ConnectionFailed):
    """The stream was cut off and could not be resumed (retries exhausted, or it expired)."""

    def __init__(self, message: str, stream_id: str | None, last_event_id: int) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.last_event_id = last_event_id


class ProtocolError(ChatRelayError):
    """The answer is not a chatrelay event stream (wrong content type, frame without an id)."""


# -- frames ----------------------------------------------------------------------------------


class Done:
    """`data: [DONE]`, the last frame."""


DONE: Final = Done()


def decode_frame(sse: ServerSentEvent) -> tuple[int, Event | Done | None] | None:
    """One SSE frame of chatrelay's stream as (its id, its event).

    None for what carries nothing (the empty events a `: ping` comment leaves behind); the
    event is None for a frame of a kind this client does not know (skipped, for forward
    compatibility).
    """
    if not sse.data:
        return None
    try:
        seq = int(sse.id)
    except ValueError:
        raise ProtocolError(f"a frame without a numeric id: {sse!r}") from None
    if sse.data == "[DONE]":
        return seq, DONE
    try:
        payload = json.loads(sse.data)
    except ValueError:
        raise ProtocolError(f"a frame whose data is not JSON: {sse!r}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"a frame whose data is not an object: {sse!r}")
    kind = sse.event
    if kind == "message":
        if "content" in payload:
            return seq, Text(seq, str(payload["content"]))
        if "error" in payload:
            return seq, Error(
                seq,
                code=str(payload.get("code") or "unknown"),
                message=str(payload["error"]),
                retry_after=_number(payload.get("retry_after")),
                request_id=_string(payload.get("request_id")),
            )
    elif kind == "start":
        return seq, Start(
            seq,
            stream_id=_string(payload.get("stream_id")),
            model=_string(payload.get("model")),
            provider=_string(payload.get("provider")),
            conversation_id=_string(payload.get("conversation_id")),
            data=payload,
        )
    elif kind == "thinking":
        return seq, Thinking(seq, str(payload.get("thinking", "")))
    elif kind == "end":
        usage = payload.get("usage")
        return seq, End(
            seq,
            reason=str(payload.get("reason") or "completed"),
            stop_reason=_string(payload.get("stop_reason")),
            usage=Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
            if isinstance(usage, dict)
            else None,
        )
    return seq, None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def api_error(response: httpx.Response) -> APIError:
    """An error answer (read already) as an `APIError`, from chatrelay's JSON error shape or,
    for a proxy's page, from its status."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or response.reason_phrase)
        request_id = _string(error.get("request_id"))
    else:
        code = f"http_{status}"
        message = " ".join(response.text.split())[:200] or response.reason_phrase
        request_id = None
    try:
        retry_after: float | None = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return APIError(
        status,
        code,
        message,
        retry_after=retry_after,
        request_id=request_id or response.headers.get("x-request-id"),
        body=body,
    )


# -- async -----------------------------------------------------------------------------------
