"""The seed guide's surface: `POST /ai/stream/chat` requests in, its SSE frames out.

Wire contract (from the seed guide; a frontend written against it must work unchanged):

    id: 1                              <- every frame carries an increasing sequence id
    event: start                       <- named frames carry extra information and never
    data: {"stream_id": ..., ...}         a "content" key, so content-only readers skip them
                                          (sent once the answering model is known)
    id: 2
    event: thinking                    <- extended thinking, only when the request asked
    data: {"thinking": "..."}

    id: 2
    data: {"content": "Hel"}           <- one frame per upstream text delta, in order

    id: 5
    event: tool_call                   <- the model calls a tool (named: content-only
    data: {"index": 0, "id": "toolu_1", "name": "get_weather"}     readers skip it)

    id: 6
    event: tool_call_delta             <- a piece of that call's arguments (JSON text)
    data: {"index": 0, "arguments": "{\"city\": "}

    id: 7
    data: {"error": "...", "code": "overloaded"}   <- only when the reply failed

    id: 8
    event: end
    data: {"reason": "completed", "stop_reason": "end_turn", "usage": {...}}

    id: 9
    data: [DONE]

    : ping                             <- a comment while nothing else flows (heartbeat)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..chat import ChatJob, Completion
from ..error_bodies import seed_frame_payload
from ..errors import ChatRelayError
from ..events import (
    Answering,
    Cut,
    End,
    StreamEvent,
    StreamMeta,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..schemas import ChatRequest, parse_chat_request

NAME = "seed"


def parse(body: bytes) -> ChatRequest:
    """The request, every error naming its field in the project's error shape."""
    return parse_chat_request(body)


def usage_dict(usage: Usage | None) -> dict[str, int | float | None]:
    """Input and output tokens; the prompt cache's and the reasoning's shares when counted;
    the reply's cost in US dollars when its model has a price (prices.py)."""
    counts: dict[str, int | float | None] = {
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
    }
    if usage is not None:
        for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd"):
            if (value := getattr(usage, name)) is not None:
                counts[name] = value
    return counts


def frame(seq: int, data: bytes, event: str | None = None) -> bytes:
    """One SSE frame with its sequence id; `data` must be a single line (JSON is)."""
    if event is None:
        return b"id: %d\ndata: %b\n\n" % (seq, data)
    return b"event: %b\nid: %d\ndata: %b\n\n" % (event.encode(), seq, data)


def json_frame(seq: int, payload: Mapping[str, Any], event: str | None = None) -> bytes:
    return frame(seq, orjson.dumps(payload), event)


class SeedEncoder:
    """One reader's encoder of a stream's events as the seed's frames."""

    __slots__ = ("meta",)

    def __init__(self, meta: StreamMeta) -> None:
        self.meta = meta

    def encode(self, seq: int, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return b'id: %d\ndata: {"content":%b}\n\n' % (seq, orjson.dumps(event.text))
        if isinstance(event, ThinkingDelta):
            return json_frame(seq, {"thinking": event.text}, "thinking")
        if isinstance(event, ToolCallDelta):
            return json_frame(
                seq, {"index": event.index, "arguments": event.arguments}, "tool_call_delta"
            )
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "name": event.name}
            return json_frame(seq, call, "tool_call")
        if isinstance(event, ThinkingSignature):
            return b""  # kept with the stored reply (for Claude), of no use to a reader
        if isinstance(event, Answering):
            return json_frame(seq, self._start(event), "start")
        if isinstance(event, End):
            return self._end(seq, event.error, "completed", event.stop_reason, event.usage)
        assert isinstance(event, Cut)
        return self._end(seq, event.error(), event.reason, None, None, cut=True)

    def _start(self, answering: Answering) -> dict[str, Any]:
        meta = self.meta
        payload: dict[str, Any] = {
            "stream_id": meta.stream_id,
            "model": answering.spec.alias,
            "provider": answering.spec.provider,
            "conversation_id": meta.conversation_id,
        }
        if meta.history_omitted:
            payload["history_omitted"] = meta.history_omitted
        if answering.fallback_from:
            payload["requested_model"] = meta.requested_model
            payload["fallback_from"] = list(answering.fallback_from)
        if meta.warnings:
            payload["warnings"] = list(meta.warnings)
        return payload

    def _end(
        self,
        seq: int,
        error: ChatRelayError | None,
        reason: str,
        stop_reason: str | None,
        usage: Usage | None,
        *,
        cut: bool = False,
    ) -> bytes:
        """[an error frame], the `end` frame, `[DONE]`: the last frames of every stream. An
        error quotes the request that started the stream (a cut is not that request's)."""
        frames = b""
        if error is not None:
            rid = None if cut else self.meta.request_id
            frames = json_frame(seq, seed_frame_payload(error, request_id=rid))
            seq += 1
        end = {
            "reason": "error" if error is not None else reason,
            "stop_reason": stop_reason,
            "usage": usage_dict(usage),
        }
        return frames + json_frame(seq, end, "end") + b"id: %d\ndata: [DONE]\n\n" % (seq + 1)


def reply_object(job: ChatJob, reply: Completion) -> dict[str, Any]:
    """A whole reply, as `/ai/chat` answers it."""
    body: dict[str, Any] = {
        "content": reply.content,
        "model": reply.model,
        "stop_reason": reply.stop_reason,
        "usage": usage_dict(reply.usage),
        "stream_id": job.stream_id,
        "conversation_id": job.conversation_id,
    }
    if reply.thinking:
        body["thinking"] = reply.thinking
    if reply.tool_calls:
        body["tool_calls"] = [call.block() for call in reply.tool_calls]
    if job.warnings:
        body["warnings"] = job.warnings
    return body
