"""The OpenAI surface: Chat Completions requests in, chunks or a completion out.

Requests are translated into the project's own `ChatRequest` (system messages become the
system prompt, content parts become content blocks, tools and tool calls the Messages API's
tools and `tool_use`/`tool_result` blocks, `response_format` the output format), so every
model behind chatrelay serves every OpenAI client. Features chatrelay does not offer (`n > 1`,
logprobs, audio, the legacy `functions`) are refused with a 400 that names them, never
silently dropped.
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
from ..events import (
    Answering,
    Cut,
    End,
    StreamEvent,
    StreamMeta,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..schemas import NO_USER_MESSAGE, ChatRequest, problems_from, validate_json
from . import tool_choice

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
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    n: int | None = None
    functions: list[Any] | None = None
    function_call: Any = None
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
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none", "auto"),
            "logprobs": bool(self.logprobs) or bool(self.top_logprobs),
            "logit_bias": bool(self.logit_bias),
            "audio": self.audio is not None,
            "modalities": self.modalities not in (None, ["text"]),
            "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty),
        }
        for name, bad in refused.items():
            if bad:
                better = " (send `tools`)" if name.startswith("function") else ""
                raise Unsupported(name, f"is not supported by this server{better}")


def parse(body: bytes) -> OpenAIChatRequest:
    """The request as OpenAI's API defines it (every error naming its field)."""
    return validate_json(body, OpenAIChatRequest)


def to_chat_request(request: OpenAIChatRequest) -> ChatRequest:
    """Translate into the project's request; errors point at the client's own message index."""
    request.refuse_unsupported()
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    index_of: list[int] = []  # turns[i] came from request.messages[index_of[i]]
    results: list[dict[str, Any]] | None = None  # the tool results turn being gathered
    for index, message in enumerate(request.messages):
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = _text_only(content, index)
            if text:
                system.append(text)
            continue
        if role == "function":
            raise Unsupported(
                f"messages[{index}]", "`function` messages are not supported (send `tool`)"
            )
        if role == "tool":
            result = _tool_result(message, index)
            if results is not None:  # results of one turn's calls: one user turn
                results.append(result)
            else:
                results = [result]
                turns.append({"role": "user", "content": results})
                index_of.append(index)
            continue
        blocks = _blocks(content, index)
        if role == "assistant" and message.get("tool_calls"):
            said: list[Any] = [] if blocks in (None, "") else _as_list(blocks)
            blocks = said + _tool_uses(message["tool_calls"], index)
        if role == "user" and results is not None:
            # What the user adds after the tool results goes in the same turn, after them.
            results.extend(_as_list(blocks))
            index_of[-1] = index
            results = None
            continue
        results = None
        turns.append({"role": role, "content": blocks})
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
        "tools": _tools(request.tools) if request.tools else None,
        "tool_choice": tool_choice.from_openai(
            request.tool_choice,
            request.parallel_tool_calls,
            [
                (t.get("function") or {}).get("name")
                for t in request.tools or ()
                if isinstance(t, dict)
            ],
            "{type: 'function', function: {name}}",
        ),
        "output_format": _output_format(request.response_format),
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
    field = re.sub(r"^tools\[(\d+)\]\.input_schema", r"tools[\1].function.parameters", field)
    field = re.sub(r"^tools\[(\d+)\]", r"tools[\1].function", field)
    field = field.replace("output_format", "response_format")
    return FieldProblem(field, problem.message)


def _as_list(blocks: Any) -> list[Any]:
    return [{"type": "text", "text": blocks}] if isinstance(blocks, str) else list(blocks)


def _tool_result(message: dict[str, Any], index: int) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidField(
            [FieldProblem(f"messages[{index}].tool_call_id", "must name the tool call it answers")]
        )
    return {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": _text_only(message.get("content") or "", index),
    }


def _tool_uses(calls: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` as `tool_use` blocks."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidField([FieldProblem(where, "must be a list of tool calls")])
    blocks = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise InvalidField(
                [FieldProblem(f"{where}[{number}]", "must have an `id` and a `function`")]
            )
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidField(
                [
                    FieldProblem(
                        f"{where}[{number}].function.arguments", "must be a JSON object, as text"
                    )
                ]
            )
        blocks.append(
            {"type": "tool_use", "id": call["id"], "name": function.get("name"), "input": arguments}
        )
    return blocks


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat Completions function tools as Messages API tools."""
    out = []
    for number, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            kind = tool.get("type")
            raise Unsupported(
                f"tools[{number}]", f"tools of type {kind!r} are not supported (only 'function')"
            )
        out.append(
            {
                "name": function.get("name"),
                "description": function.get("description"),
                "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def _output_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    kind = (response_format or {}).get("type", "text")
    if response_format is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    spec = response_format.get("json_schema")
    if (
        kind != "json_schema"
        or not isinstance(spec, dict)
        or not isinstance(spec.get("schema"), dict)
    ):
        raise InvalidField(
            [
                FieldProblem(
                    "response_format",
                    "must be {type: 'text'}, {type: 'json_object'} or"
                    " {type: 'json_schema', json_schema: {name, schema, strict}}",
                )
            ]
        )
    out = {"type": "json_schema", "schema": spec["schema"], "name": spec.get("name")}
    if spec.get("strict") is not None:
        out["strict"] = spec["strict"]
    return out


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


def usage_object(usage: Usage | None) -> dict[str, Any] | None:
    """Chat Completions usage: prompt tokens include the cached ones, as OpenAI counts them."""
    if usage is None:
        return None
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    counts: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.cache_read_tokens is not None or usage.cache_write_tokens is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens or 0}
    if usage.reasoning_tokens is not None:
        counts["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return counts


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
        if isinstance(event, ToolCallDelta):
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk(seq, {"tool_calls": [call]})
        if isinstance(event, ToolCallStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk(seq, {"tool_calls": [call]})
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


def _message(reply: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
    if reply.tool_calls:
        message["content"] = reply.content or None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in reply.tool_calls
        ]
    return message


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
                "message": _message(reply),
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(reply.stop_reason or "end_turn", "stop"),
            }
        ],
        "usage": usage_object(reply.usage) or usage_object(Usage(0, 0)),
    }
