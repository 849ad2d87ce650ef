"""The chat service: turns a validated request into one relayed reply, framed for the seed.

Routes stay thin: they parse the body and wrap `ChatStream.frames()` in an SSE response.
Everything a reply needs (model choice, upstream parameters, the frame sequence, the log line
when it ends) lives here, so tests can drive it without HTTP.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from . import sse
from .errors import FieldProblem, InvalidField, UpstreamError
from .events import TextDelta
from .providers import ChatParams
from .relay import End, Relay
from .schemas import ChatRequest

log = logging.getLogger("chatrelay.chat")


def chat_params(request: ChatRequest, model: str) -> ChatParams:
    return ChatParams(
        model=model,
        messages=[message.model_dump(mode="json") for message in request.messages],
        max_tokens=request.max_tokens,
        system=request.system_text(),
        temperature=request.temperature,
        metadata=request.metadata or {},
    )


@dataclass(slots=True)
class ChatStream:
    """One accepted chat request: its ids, and the frames of its reply."""

    stream_id: str
    params: ChatParams
    conversation_id: str | None
    relay: Relay
    warnings: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        headers = {"x-stream-id": self.stream_id}
        if self.conversation_id:
            headers["x-conversation-id"] = self.conversation_id
        return headers

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The reply as SSE frames: start, content..., [error], end, [DONE]."""
        started = time.perf_counter()
        first_text_at: float | None = None
        deltas = 0
        outcome = "disconnected"
        end: End | None = None
        start: dict[str, Any] = {
            "stream_id": self.stream_id,
            "model": self.params.model,
            "provider": self.relay.provider.name,
            "conversation_id": self.conversation_id,
        }
        if self.warnings:
            start["warnings"] = self.warnings
        yield sse.json_frame(1, start, "start")
        seq = 1
        try:
            async for event in self.relay.run(self.params):
                seq += 1
                if type(event) is TextDelta:
                    if first_text_at is None:
                        first_text_at = time.perf_counter()
                    deltas += 1
                    yield sse.content_frame(seq, event.text)
                    continue
                end = event  # type: ignore[assignment]
                assert end is not None
                if end.error is not None:
                    outcome = "error"
                    error: dict[str, Any] = {"error": end.error.message, "code": end.error.code}
                    if isinstance(end.error, UpstreamError) and end.error.retry_after is not None:
                        error["retry_after"] = round(end.error.retry_after, 3)
                    yield sse.json_frame(seq, error)
                    seq += 1
                else:
                    outcome = "completed"
                usage = end.usage
                yield sse.json_frame(
                    seq,
                    {
                        "reason": outcome,
                        "stop_reason": end.stop_reason,
                        "usage": {
                            "input_tokens": usage.input_tokens if usage else None,
                            "output_tokens": usage.output_tokens if usage else None,
                        },
                    },
                    "end",
                )
                yield sse.done_frame(seq + 1)
        finally:
            self._log_end(outcome, end, deltas, started, first_text_at)

    def _log_end(
        self,
        outcome: str,
        end: End | None,
        deltas: int,
        started: float,
        first_text_at: float | None,
    ) -> None:
        error = end.error if end else None
        log.info(
            "stream %s ended: %s",
            self.stream_id,
            outcome,
            extra={
                "stream_id": self.stream_id,
                "model": self.params.model,
                "outcome": outcome,
                "error_code": error.code if error else None,
                "error_detail": getattr(error, "detail", None),
                "upstream_request_id": getattr(error, "request_id", None),
                "deltas": deltas,
                "attempts": end.attempts if end else None,
                "ttft_ms": round((first_text_at - started) * 1000, 1) if first_text_at else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "input_tokens": end.usage.input_tokens if end and end.usage else None,
                "output_tokens": end.usage.output_tokens if end and end.usage else None,
            },
        )


class ChatService:
    """Accepts chat requests and opens their streams."""

    def __init__(self, relay: Relay, default_model: str, max_tokens_limit: int) -> None:
        self.relay = relay
        self.default_model = default_model
        self.max_tokens_limit = max_tokens_limit

    def open_stream(self, request: ChatRequest) -> ChatStream:
        """Check the request against the provider and prepare its stream (nothing sent yet)."""
        if request.max_tokens > self.max_tokens_limit:
            raise InvalidField(
                [FieldProblem("max_tokens", f"must be at most {self.max_tokens_limit}")]
            )
        params = chat_params(request, request.model or self.default_model)
        provider = self.relay.provider
        provider.check(params)
        warnings = provider.warnings(params)
        for warning in warnings:
            log.warning("%s", warning)
        return ChatStream(
            stream_id=uuid.uuid4().hex,
            params=params,
            conversation_id=request.conversation_id,
            relay=self.relay,
            warnings=warnings,
        )
