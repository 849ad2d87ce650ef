"""The OpenAI surface: Chat Completions requests in, chunks or a completion out.

Requests are translated into the project's own `ChatRequest` (system messages become the
system prompt, content parts become content blocks), so every model behind chatrelay serves
every OpenAI client. Features chatrelay does not offer (tools, `n > 1`, logprobs, audio,
structured output) are refused with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..chat import ChatJob, Completion
from ..error_bodies import openai_body
from ..errors import (
    ChatRelayError,
    FieldProblem,
    InvalidField,
    ServerRestarting,
    StreamCut,
    Unsupported,
)
from ..events import Answering, Cut, End, StreamEvent, StreamMeta, TextDelta, Usage
from ..schemas import NO_USER_MESSAGE, ChatRequest, problems_from, validate_json

NAME = "openai"

# The project's stop reasons (Messages API vocabulary) as OpenAI finish reasons.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
    "tool_use": "tool_calls",
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class OpenAIChatRequest(BaseModel):
    """The subset of Chat Completions that chatrelay serves; the rest is refused by name."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    # Refused unless left at their defaults.
    n: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, Any] | None = None
    audio: Any = None
    modalities: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def refuse_unsupported(self) -> None:
        refused = {
            "n": self.n not in (None, 1),
            "tools": bool(self.tools),
            "functions": bool(self.functions),
            "tool_choice": self.tool_choice not in (None, "none", "auto"),
            "function_call": self.function_call not in (None, "none", "auto"),
            "response_format": (self.response_format or {}).get("type", "text") != "text",
            "logprobs": bool(self.logprobs) or bool(self.top_logprobs),
            "logit_bias": bool(self.logit_bias),
            "audio": self.audio is not None,
            "modalities": self.modalities not in (None, ["text"]),
            "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty),
        }
        for name, bad in refused.items():
            if bad:
                raise Unsupported(name, "is not supported by this server")


def parse(body: bytes) -> OpenAIChatRequest:
    """The request as OpenAI's API defines it (every error naming its field)."""
    return validate_json(body, OpenAIChatRequest)


def to_chat_request(request: OpenAIChatRequest) -> ChatRequest:
    """Translate into the project's request; errors point at the client's own message index."""
    request.refuse_unsupported()
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    index_of: list[int] = []  # turns[i] came from request.messages[index_of[i]]
    for index, message in enumerate(request.messages):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_only(content, index)
            if text:
                system.append(text)
            continue
        if role in ("tool", "function") or message.get("tool_calls"):
            raise Unsupported(f"messages[{index}]", "tool calls are not supported by this server")
        turns.append({"role": role, "content": _blocks(content, index)})
        index_of.append(index)
    max_tokens = request.max_completion_tokens or request.max_tokens
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    data: dict[str, Any] = {
        "messages": turns,
        "model": request.model,
        "max_tokens": max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop_sequences": stop,
        "system": "\n\n".join(system) or None,
        "metadata": request.metadata,
        "conversation_id": (request.metadata or {}).get("conversation_id"),
    }
    if not turns:
        raise InvalidField([FieldProblem("messages", NO_USER_MESSAGE)])
    try:
        return ChatRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        problems = problems_from(exc.errors(include_url=False))
        raise InvalidField([_renumber(p, index_of) for p in problems]) from None


def _renumber(problem: FieldProblem, index_of: list[int]) -> FieldProblem:
    field = re.sub(
        r"^messages\[(\d+)\]", lambda m: f"messages[{index_of[int(m.group(1))]}]", problem.field
    ).replace("stop_sequences", "stop")
    return FieldProblem(field, problem.message)


def _text_only(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    raise InvalidField(
        [FieldProblem(f"messages[{index}].content", "must be a string or text parts")]
    )


_DATA_URL = re.compile(r"^data:(image/[a-z]+);base64,(.+)$", re.S)


def _blocks(content: Any, index: int) -> Any:
    """OpenAI content (string or parts) -> Messages API content (string or blocks)."""
    if not isinstance(content, list):
        return content  # validated (and rejected if wrong) by ChatRequest
    blocks: list[Any] = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else None
            if not isinstance(url, str) or not url:
                raise InvalidField(
                    [
                        FieldProblem(
                            f"messages[{index}].content[{number}].image_url.url",
                            "must be an https URL or a data: URL of an image",
                        )
                    ]
                )
            if match := _DATA_URL.match(url):
                source = {"type": "base64", "media_type": match[1], "data": match[2]}
            else:
                source = {"type": "url", "url": url}
            blocks.append({"type": "image", "source": source})
        else:
            raise Unsupported(
                f"messages[{index}].content[{number}]",
                f"content parts of type {kind!r} are not supported by this server",
            )
    return blocks


def usage_object(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class ChunkEncoder:
    """One reader's encoder of a stream's events as `chat.completion.chunk` SSE frames.

    Every frame carries its `id:` (OpenAI's SDKs read and ignore it), so a dropped stream
    can be resumed like any other (`GET /ai/stream/{id}` with `Last-Event-ID`).
    """

    __slots__ = ("_created", "_id", "_prefix", "include_usage")

    def __init__(self, meta: StreamMeta) -> None:
        self.include_usage = bool(meta.options.get("include_usage"))
        self._id = f"chatcmpl-{meta.stream_id}"
        self._created = meta.created
        # Every chunk shares this prefix; only the choices (or usage) differ. The answering
        # model replaces the requested one in it as soon as it is known.
        self._prefix = b""
        self._set_model(meta.requested_model)

    def _set_model(self, model: str) -> None:
        head = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": model,
            "system_fingerprint": None,
        }
        self._prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'

    def _chunk(self, seq: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b'id: %d\n%b%b,"usage":null}\n\n' % (seq, self._prefix, orjson.dumps([choice]))

    def encode(self, seq: int, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return (
                b'id: %d\n%b[{"index":0,"delta":{"content":%b},"logprobs":null,'
                b'"finish_reason":null}],"usage":null}\n\n'
                % (
                    seq,
                    self._prefix,
                    orjson.dumps(event.text),
                )
            )
        if isinstance(event, Answering):
            self._set_model(event.spec.alias)
            return self._chunk(seq, {"role": "assistant", "content": ""})
        if isinstance(event, End):
            if event.error is not None:
                return error_chunk(seq, event.error) + done(seq + 1)
            finish = FINISH_REASONS.get(event.stop_reason or "end_turn", "stop")
            frames = self._chunk(seq, {}, finish)
            if self.include_usage:
                seq += 1
                usage = usage_object(event.usage) or usage_object(Usage(0, 0))
                frames += b'id: %d\n%b[],"usage":%b}\n\n' % (seq, self._prefix, orjson.dumps(usage))
            return frames + done(seq + 1)
        if isinstance(event, Cut):
            if event.reason == "stopped":  # as the client asked: the end of a reply
                return self._chunk(seq, {}, "stop") + done(seq + 1)
            # Anything else is no end of the reply: whoever resumes it must not take it for one.
            # A restart says what OpenAI's clients can do: send it again (they never resume).
            if event.reason == "server_restarting":
                error: ChatRelayError = ServerRestarting()
            else:
                error = event.error() or StreamCut(
                    "The reply was cut before its end: its reader left"
                )
            return error_chunk(seq, error) + done(seq + 1)
        return b""  # thinking has no place in the Chat Completions format


def done(seq: int) -> bytes:
    return b"id: %d\ndata: [DONE]\n\n" % seq


def error_chunk(seq: int, error: ChatRelayError) -> bytes:
    """A failure after the 200, in OpenAI's error shape (the SDKs raise it as an APIError)."""
    return b"id: %d\ndata: %b\n\n" % (seq, orjson.dumps(openai_body(error)))


def completion_object(job: ChatJob, reply: Completion) -> dict[str, Any]:
    """A whole reply as a `chat.completion` object."""
    return {
        "id": f"chatcmpl-{job.stream_id}",
        "object": "chat.completion",
        "created": job.created or int(time.time()),
        "model": reply.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(reply.stop_reason or "end_turn", "stop"),
            }
        ],
        "usage": usage_object(reply.usage) or usage_object(Usage(0, 0)),
    }
