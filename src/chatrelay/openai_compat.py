"""The OpenAI-compatible surface: Chat Completions requests in, chunks or a completion out.

Requests are translated into the project's own `ChatRequest` (system messages become the
system prompt, content parts become content blocks), so every model behind chatrelay serves
every OpenAI client. Features chatrelay does not offer (tools, `n > 1`, logprobs, audio,
structured output) are refused with a 400 that names them, never silently dropped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .chat import ChatJob, Completion
from .error_bodies import openai_body
from .errors import ChatRelayError, FieldProblem, InvalidField, ServerRestarting, Unsupported
from .events import TextDelta, Usage
from .relay import Answering, End, RelayEvent
from .schemas import NO_USER_MESSAGE, ChatRequest, problems_from

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
    """Encodes one job's events as `chat.completion.chunk` SSE frames."""

    def __init__(self, job: ChatJob, include_usage: bool) -> None:
        self.job = job
        self.include_usage = include_usage
        # Every chunk shares this prefix; only the choices (or usage) differ. The answering
        # model replaces the requested one in it as soon as it is known.
        self._prefix = b""
        self._set_model(job.requested_model)

    def _set_model(self, model: str) -> None:
        self.model = model
        head = {
            "id": f"chatcmpl-{self.job.stream_id}",
            "object": "chat.completion.chunk",
            "created": self.job.created,
            "model": model,
            "system_fingerprint": None,
        }
        self._prefix = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._prefix + orjson.dumps([choice]) + b',"usage":null}\n\n'

    def encode(self, event: RelayEvent) -> list[bytes]:
        kind = type(event)
        if kind is TextDelta:
            text = orjson.dumps(event.text)  # type: ignore[union-attr]
            return [
                self._prefix + b'[{"index":0,"delta":{"content":%b},"logprobs":null,'
                b'"finish_reason":null}],"usage":null}\n\n' % text
            ]
        if kind is Answering:
            self._set_model(event.target.spec.alias)  # type: ignore[union-attr]
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind is End:
            end: End = event  # type: ignore[assignment]
            if end.error is not None:
                return [error_chunk(end.error), DONE]
            finish = FINISH_REASONS.get(end.stop_reason or "end_turn", "stop")
            frames = [self._chunk({}, finish)]
            if self.include_usage:
                usage = usage_object(end.usage) or usage_object(Usage(0, 0))
                frames.append(self._prefix + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n")
            frames.append(DONE)
            return frames
        return []  # thinking has no place in the Chat Completions format

    def stopped(self) -> bytes:
        """The last chunk of a reply cut short on purpose (a Stop)."""
        return self._chunk({}, "stop")


DONE = b"data: [DONE]\n\n"


def error_chunk(error: ChatRelayError) -> bytes:
    """A failure after the 200, in OpenAI's error shape (the SDKs raise it as an APIError)."""
    return b"data: " + orjson.dumps(openai_body(error)) + b"\n\n"


class ChunkStream:
    """A `/v1/chat/completions` stream as the hub generates it (a `streams.Wire`).

    Its frames are the job's events as chunks, from the generation's task, so the stream is
    drained on shutdown and can be stopped like any other. It also tells the route how the
    reply opened: a failure before the first token is answered as an HTTP status.
    """

    # Chunks carry no `id:`, so nobody can resume one: a client that leaves cancels it.
    resumable = False

    def __init__(self, job: ChatJob, include_usage: bool) -> None:
        self.encoder = ChunkEncoder(job, include_usage)
        loop = asyncio.get_running_loop()
        self._began: asyncio.Future[None] = loop.create_future()  # a first event came
        # How the reply opened: its error if it failed before any output, else None.
        self._opened: asyncio.Future[ChatRelayError | None] = loop.create_future()

    async def frames(self, job: ChatJob) -> AsyncGenerator[bytes, None]:
        encode = self.encoder.encode
        try:
            async with aclosing(job.events()) as events:
                async for event in events:
                    if not self._opened.done():
                        self._open(event)
                    for frame in encode(event):
                        yield frame
        finally:
            # Cut before its first output: a shutdown is a status OpenAI clients retry.
            cut = ServerRestarting() if job.cancel_reason == "server_restarting" else None
            self._settle(cut)

    def _open(self, event: RelayEvent) -> None:
        if not self._began.done():
            self._began.set_result(None)
        if type(event) is not Answering:  # the answering model, just before its first output
            self._settle(event.error if type(event) is End else None)

    def _settle(self, failure: ChatRelayError | None) -> None:
        if not self._began.done():
            self._began.set_result(None)
        if not self._opened.done():
            self._opened.set_result(failure)

    async def failure_before_output(self, wait_s: float) -> ChatRelayError | None:
        """The error the reply failed with before any output, if it did; None once it has
        output, or if it has given no sign within `wait_s` (the route then commits to a 200
        stream, so that proxies see bytes, and a later failure is an error chunk)."""
        done, _ = await asyncio.wait({self._began}, timeout=wait_s)
        return await self._opened if done else None

    def cancelled(self, reason: str, seq: int) -> list[bytes]:
        if reason == "server_restarting":
            return [error_chunk(ServerRestarting()), DONE]
        return [self.encoder.stopped(), DONE]  # stopped, or its client left


def completion_object(reply: Completion) -> dict[str, Any]:
    """A whole reply as a `chat.completion` object."""
    return {
        "id": f"chatcmpl-{reply.job.stream_id}",
        "object": "chat.completion",
        "created": reply.job.created or int(time.time()),
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
