"""The Anthropic surface: Messages API requests in, its SSE events or a `message` out.

The project's `ChatRequest` is already in the Messages API's shape, so a request is mostly
checked and passed on: `output_config.format` becomes the output format, `thinking`
`disabled` turns thinking off, and thinking blocks of earlier assistant turns are left out
(chatrelay relays no signatures, so they could not be sent back upstream anyway). What
chatrelay does not offer (server tools, `container`, `mcp_servers`, a top-level
`cache_control`, `output_config.effort`, ...) is refused with a 400 naming the field.

The stream is Anthropic's event sequence (wire-formats.md §1.3):

    event: message_start           (on Answering: id msg_<stream_id>, the alias, usage 0)
    event: content_block_start     (a block opens as its first piece comes: text, thinking
    event: content_block_delta      or tool_use, numbered 0, 1, 2, ... in that order)
    event: content_block_stop      (when the next block opens, or the reply ends)
    event: message_delta           (stop_reason; the usage, counted once: input_tokens
    event: message_stop             without the cache's shares, which are beside it)

or, for a reply that fails, `event: error` with `{"type": "error", "error": {type, message}}`,
which the SDK raises as an `APIStatusError`. Every frame carries its event's SSE `id:`; an
event that opens or closes a block takes several frames, which share its id (nothing can
come between them), and the last event's frames are numbered on from it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..chat import ChatJob, Completion
from ..error_bodies import anthropic_body
from ..errors import (
    ChatRelayError,
    FieldProblem,
    InvalidField,
    ServerRestarting,
    StreamCut,
    Unsupported,
)
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
from ..schemas import ChatRequest, problems_from, validate_json

NAME = "anthropic"


class AnthropicCountTokensRequest(BaseModel):
    """The body of `POST /v1/messages/count_tokens`: what a message request has but its
    generation parameters; the rest is refused by name, as Anthropic's API refuses fields it
    does not know (so nothing a client asked for is silently dropped)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    # Refused unless left at their defaults.
    cache_control: Any = None
    container: Any = None
    mcp_servers: Any = None
    context_management: Any = None
    inference_geo: Any = None
    speed: Literal["standard"] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None

    def refuse_unsupported(self) -> None:
        refused = {
            "cache_control": self.cache_control is not None,
            "container": self.container is not None,
            "mcp_servers": bool(self.mcp_servers),
            "context_management": self.context_management is not None,
            "inference_geo": self.inference_geo is not None,
        }
        for name, bad in refused.items():
            if bad:
                raise Unsupported(name, "is not supported by this server")
        if self.model_extra:
            name = sorted(self.model_extra)[0]
            raise Unsupported(name, "is not a field this server knows (Messages API)")
        extra = set(self.output_config or {}) - {"format"}
        if extra:
            name = sorted(extra)[0]
            raise Unsupported(f"output_config.{name}", "is not supported by this server")


class AnthropicMessagesRequest(AnthropicCountTokensRequest):
    """The subset of the Messages API (`POST /v1/messages`) that chatrelay serves."""

    max_tokens: int = Field(ge=1)  # required, as Anthropic's API requires it
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop_sequences: list[str] | None = None


def parse(body: bytes) -> AnthropicMessagesRequest:
    """The request as Anthropic's API defines it (every error naming its field)."""
    return validate_json(body, AnthropicMessagesRequest)


def parse_count_tokens(body: bytes) -> AnthropicCountTokensRequest:
    return validate_json(body, AnthropicCountTokensRequest)


def to_chat_request(request: AnthropicCountTokensRequest) -> ChatRequest:
    """Translate into the project's request; errors name the client's own fields."""
    request.refuse_unsupported()
    data: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "system": request.system or None,
        "metadata": request.metadata,
        "conversation_id": (request.metadata or {}).get("conversation_id"),
        "tools": _tools(request.tools) if request.tools else None,
        "tool_choice": request.tool_choice,
        "output_format": (request.output_config or {}).get("format"),
    }
    thinking = request.thinking
    if thinking is not None and thinking.get("type") != "disabled":
        data["thinking"] = thinking
    if isinstance(request, AnthropicMessagesRequest):
        data.update(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            stop_sequences=request.stop_sequences or None,
        )
    try:
        return ChatRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        problems = problems_from(exc.errors(include_url=False))
        raise InvalidField([_renamed(p) for p in problems]) from None


def _renamed(problem: FieldProblem) -> FieldProblem:
    field = re.sub(r"^output_format", "output_config.format", problem.field)
    return FieldProblem(field, problem.message)


def _message(message: dict[str, Any]) -> Any:
    """A turn as sent, less the unsigned thinking blocks of an assistant turn (nothing
    upstream would take them); signed ones go back to Claude, as it requires after it thought
    and called tools."""
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return message
    content = message.get("content")
    if not isinstance(content, list):
        return message
    kept = [
        block
        for block in content
        if not (
            isinstance(block, dict)
            and block.get("type") in ("thinking", "redacted_thinking")
            and not block.get("signature")
            and not block.get("data")
        )
    ]
    return {**message, "content": kept or [{"type": "text", "text": "(thinking)"}]}


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Custom tools pass as they are; Anthropic's server tools (web search, code execution,
    ...) are for Anthropic to run, which a relay to any model cannot promise."""
    for number, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise Unsupported(
                f"tools[{number}]", f"tools of type {kind!r} are not supported (only custom tools)"
            )
    return tools


# --- the reply -----------------------------------------------------------------------------


def usage_object(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` leaves out the tokens read from or written to the
    prompt cache, which are counted beside it (the project's input count includes them)."""
    usage = usage or Usage(0, 0)
    read, written = usage.cache_read_tokens or 0, usage.cache_write_tokens or 0
    return {
        "input_tokens": max(0, (usage.input_tokens or 0) - read - written),
        "output_tokens": usage.output_tokens or 0,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
    }


def _frame(seq: int, kind: bytes, payload: bytes) -> bytes:
    return b"event: %b\nid: %d\ndata: %b\n\n" % (kind, seq, payload)


_TEXT_START = b'{"type":"text","text":""}'
_THINKING_START = b'{"type":"thinking","thinking":"","signature":""}'


class MessagesEncoder:
    """One reader's encoder of a stream's events as the Messages API's SSE events."""

    __slots__ = ("_block", "_blocks", "_id", "_kind", "_model", "_started", "_tool_blocks")

    def __init__(self, meta: StreamMeta) -> None:
        self._id = f"msg_{meta.stream_id}"
        self._model = meta.requested_model
        self._started = False
        self._block: int | None = None  # the index of the open content block
        self._kind: str | None = None  # what it holds: "text", "thinking", "tool_use"
        self._blocks = 0  # how many blocks have opened
        self._tool_blocks: dict[int, int] = {}  # tool call number -> its block's index

    def encode(self, seq: int, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            head = self._open(seq, "text", _TEXT_START)
            delta = b'{"type":"text_delta","text":%b}' % orjson.dumps(event.text)
            return head + self._delta(seq, self._block, delta)
        if isinstance(event, ToolCallDelta):
            block = self._tool_blocks.get(event.index)
            if block is None:
                return b""  # arguments of a call never started: nothing to add them to
            delta = orjson.dumps({"type": "input_json_delta", "partial_json": event.arguments})
            # Into its own block, even if another has opened since (calls interleaved by an
            # OpenAI-compatible upstream): the SDK files each delta by its index.
            return self._start(seq) + self._delta(seq, block, delta)
        if isinstance(event, ThinkingDelta):
            head = self._open(seq, "thinking", _THINKING_START)
            delta = b'{"type":"thinking_delta","thinking":%b}' % orjson.dumps(event.text)
            return head + self._delta(seq, self._block, delta)
        if isinstance(event, ThinkingSignature):
            if self._kind != "thinking":
                return b""  # a signature of no thinking shown: nothing to sign
            delta = orjson.dumps({"type": "signature_delta", "signature": event.signature})
            return self._delta(seq, self._block, delta)
        if isinstance(event, ToolCallStart):
            start = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            head = self._open(seq, "tool_use", orjson.dumps(start), force=True)
            assert self._block is not None
            self._tool_blocks[event.index] = self._block
            return head
        if isinstance(event, Answering):
            self._model = event.spec.alias
            return self._start(seq)
        if isinstance(event, End):
            if event.error is not None:
                return self._error(seq, event.error)
            return self._finish(seq, event.stop_reason or "end_turn", event.usage)
        assert isinstance(event, Cut)
        if event.reason == "stopped":  # as the client asked: the end of a reply
            return self._finish(seq, "end_turn", None)
        # Anything else is no end of the reply. Anthropic's clients never resume: a restart
        # tells them to send it again.
        if event.reason == "server_restarting":
            error: ChatRelayError = ServerRestarting()
        else:
            error = event.error() or StreamCut("The reply was cut before its end: its reader left")
        return self._error(seq, error)

    def _start(self, seq: int) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Not known yet (the stream's events carry the counts at the end): message_delta
            # says them, and the SDK's accumulator takes them from there.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _frame(
            seq, b"message_start", orjson.dumps({"type": "message_start", "message": message})
        )

    def _open(self, seq: int, kind: str, start: bytes, *, force: bool = False) -> bytes:
        """The frames that make a block of `kind` the open one (none if it already is)."""
        if self._kind == kind and not force:
            return b""
        frames = self._start(seq) + self._stop(seq)
        self._block, self._kind = self._blocks, kind
        self._blocks += 1
        return frames + _frame(
            seq,
            b"content_block_start",
            b'{"type":"content_block_start","index":%d,"content_block":%b}' % (self._block, start),
        )

    def _stop(self, seq: int) -> bytes:
        if self._block is None:
            return b""
        block, self._block, self._kind = self._block, None, None
        return _frame(
            seq, b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % block
        )

    @staticmethod
    def _delta(seq: int, block: int | None, delta: bytes) -> bytes:
        return _frame(
            seq,
            b"content_block_delta",
            b'{"type":"content_block_delta","index":%d,"delta":%b}' % (block or 0, delta),
        )

    def _finish(self, seq: int, stop_reason: str, usage: Usage | None) -> bytes:
        """The last frames of a reply, numbered on from `seq`."""
        frames = self._start(seq)
        if frames:
            seq += 1
        if stop := self._stop(seq):
            frames += stop
            seq += 1
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage_object(usage),
        }
        frames += _frame(seq, b"message_delta", orjson.dumps(delta))
        return frames + _frame(seq + 1, b"message_stop", b'{"type":"message_stop"}')

    @staticmethod
    def _error(seq: int, error: ChatRelayError) -> bytes:
        """A failure after the 200: the SDK raises it as an `APIStatusError`."""
        return _frame(seq, b"error", orjson.dumps(anthropic_body(error)))


def message_object(job: ChatJob, reply: Completion) -> dict[str, Any]:
    """A whole reply as a Messages API `message` object."""
    content: list[dict[str, Any]] = []
    if reply.thinking:
        signature = reply.thinking_signature or ""
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": signature})
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    content += [call.block() for call in reply.tool_calls]
    return {
        "id": f"msg_{job.stream_id}",
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": reply.stop_reason or "end_turn",
        "stop_sequence": None,
        "usage": usage_object(reply.usage),
    }
