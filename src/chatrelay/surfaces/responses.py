"""The Responses API surface: `POST /v1/responses` requests in, Responses events or a
`response` object out.

Requests are translated into the project's own `ChatRequest`: `instructions` and system or
developer messages become the system prompt, `input` items the turns (messages, then
`function_call` items as `tool_use` blocks of the assistant's turn and `function_call_output`
items as `tool_result` blocks of the next user turn), function tools the Messages API's tools,
`text.format` the output format, `max_output_tokens` the max tokens. What chatrelay does not
offer (other tool types, background responses, server-side conversations objects, reasoning
settings) is refused with a 400 that names it, never silently dropped.

A response is stored as a turn of a conversation unless `store` is false, and its id says
where: `resp_<stream id>_<conversation id>` (`resp_<stream id>` alone when it was not stored).
`previous_response_id` continues that conversation: its history is loaded and the new input
appended, as `conversation_id` does on the other surfaces.

Reasoning (`ThinkingDelta`) is not sent: the Responses API's reasoning items carry OpenAI's
own (encrypted) reasoning, which no other model can take back as input.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..chat import ChatJob, Completion
from ..errors import (
    ChatRelayError,
    FieldProblem,
    InvalidField,
    NotFound,
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
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..schemas import NO_USER_MESSAGE, ChatRequest, problems_from, validate_json
from . import tool_choice

NAME = "responses"

# Stop reasons (the Messages API's) that leave a response incomplete, and the reason it says.
INCOMPLETE = {
    "max_tokens": "max_output_tokens",
    "model_context_window_exceeded": "max_output_tokens",
    "refusal": "content_filter",
}

_STREAM_ID = re.compile(r"\A[0-9a-f]{32}\Z")


class ResponseNotFound(NotFound):
    """`previous_response_id` names no stored response of the caller's."""

    def __init__(self, response_id: str, why: str = "") -> None:
        super().__init__(f"Previous response with id {response_id!r} not found{why}.")
        self.problems = [FieldProblem("previous_response_id", self.message)]


def response_id(stream_id: str, conversation_id: str | None) -> str:
    """The id of the response a stream gives: where to find its conversation again."""
    return f"resp_{stream_id}_{conversation_id}" if conversation_id else f"resp_{stream_id}"


def parse_response_id(value: str) -> tuple[str, str | None]:
    """(stream id, conversation id) of a response id; ResponseNotFound if it is none of ours."""
    stream, conversation = value[5:37], value[38:]
    if (
        not value.startswith("resp_")
        or not _STREAM_ID.match(stream)
        or value[37:38] not in ("", "_")
        or (value[37:38] == "_") != bool(conversation)
    ):
        raise ResponseNotFound(value)
    return stream, conversation or None


class ResponsesRequest(BaseModel):
    """The subset of the Responses API that chatrelay serves; the rest is refused by name."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    text: dict[str, Any] | None = None
    stream: bool = False
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=300)
    user: str | None = None
    # Refused unless left at their defaults.
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    reasoning: dict[str, Any] | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        refused = {
            "background": bool(self.background),
            "conversation": self.conversation is not None,
            "prompt": self.prompt is not None,
            "reasoning": bool(self.reasoning),
            "max_tool_calls": self.max_tool_calls is not None,
            "top_logprobs": bool(self.top_logprobs),
        }
        for name, bad in refused.items():
            if bad:
                better = " (send `previous_response_id`)" if name == "conversation" else ""
                raise Unsupported(name, f"is not supported by this server{better}")

    def echo(self) -> dict[str, Any]:
        """What the response object repeats of its request."""
        return {
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            # The API's metadata is strings only (the mock's options are not echoed).
            "metadata": {k: v for k, v in (self.metadata or {}).items() if isinstance(v, str)},
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "previous_response_id": self.previous_response_id,
            "store": self.store is not False,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "text": {"format": (self.text or {}).get("format") or {"type": "text"}},
            "tool_choice": self.tool_choice if self.tool_choice is not None else "auto",
            "tools": self.tools or [],
            "user": self.user,
        }


def parse(body: bytes) -> ResponsesRequest:
    """The request as the Responses API defines it (every error naming its field)."""
    return validate_json(body, ResponsesRequest)


def continued(request: ResponsesRequest) -> tuple[str, str] | None:
    """(stream id, conversation id) of the response `previous_response_id` continues."""
    if request.previous_response_id is None:
        return None
    stream, conversation = parse_response_id(request.previous_response_id)
    if conversation is None:  # a response that was not stored
        raise ResponseNotFound(request.previous_response_id, " (it was created with store false)")
    return stream, conversation


def to_chat_request(request: ResponsesRequest) -> tuple[ChatRequest, list[int]]:
    """Translate into the project's request, and say which `input` item each of its
    messages came from (`rename` uses that to name the client's own fields)."""
    request.refuse_unsupported()
    system: list[str] = [request.instructions] if request.instructions else []
    turns: list[dict[str, Any]] = []
    index_of: list[int] = []  # turns[i] came from request.input[index_of[i]]
    results: list[dict[str, Any]] | None = None  # the tool results turn being gathered
    items: list[dict[str, Any]] = (
        [{"role": "user", "content": request.input}]
        if isinstance(request.input, str)
        else request.input
    )
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidField([FieldProblem(f"input[{index}]", "must be an object")])
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role in ("system", "developer"):
                if text := _text_only(item.get("content"), index):
                    system.append(text)
                continue
            if role not in ("user", "assistant"):
                raise InvalidField(
                    [
                        FieldProblem(
                            f"input[{index}].role",
                            "must be 'user', 'assistant', 'system' or 'developer'",
                        )
                    ]
                )
            blocks = _blocks(item.get("content"), index)
            if role == "user" and results is not None:
                # What the user adds after the tool results goes in the same turn, after them.
                results.extend(_as_list(blocks))
                index_of[-1] = index
                results = None
                continue
            results = None
            turns.append({"role": role, "content": blocks})
            index_of.append(index)
        elif kind == "function_call":
            results = None
            use = _tool_use(item, index)
            if turns and turns[-1]["role"] == "assistant":  # the same reply's calls: one turn
                turns[-1]["content"] = [*_as_list(turns[-1]["content"]), use]
            else:
                turns.append({"role": "assistant", "content": [use]})
                index_of.append(index)
        elif kind == "function_call_output":
            result = _tool_result(item, index)
            if results is not None:
                results.append(result)
            else:
                results = [result]
                turns.append({"role": "user", "content": results})
                index_of.append(index)
        else:
            raise Unsupported(
                f"input[{index}]",
                f"input items of type {kind!r} are not supported"
                " (only 'message', 'function_call' and 'function_call_output')",
            )
    conversation = continued(request)
    data: dict[str, Any] = {
        "messages": turns,
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "system": "\n\n".join(system) or None,
        "metadata": request.metadata,
        "conversation_id": conversation[1] if conversation else None,
        "tools": _tools(request.tools) if request.tools else None,
        "tool_choice": tool_choice.from_openai(
            request.tool_choice,
            request.parallel_tool_calls,
            [t.get("name") for t in request.tools or () if isinstance(t, dict)],
            "{type: 'function', name}",
        ),
        "output_format": _output_format(request.text),
    }
    if not turns:
        raise InvalidField([FieldProblem("input", NO_USER_MESSAGE)])
    try:
        chat = ChatRequest.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as exc:
        problems = problems_from(exc.errors(include_url=False))
        raise InvalidField([rename(p, index_of) for p in problems]) from None
    return chat, index_of


def rename(problem: FieldProblem, index_of: list[int]) -> FieldProblem:
    """A problem with the translated request, named as the client's field."""
    field = re.sub(
        r"^messages\[(\d+)\]",
        lambda m: (
            f"input[{index_of[int(m.group(1))]}]" if int(m.group(1)) < len(index_of) else m.group(0)
        ),
        problem.field,
    )
    field = re.sub(r"^messages\b", "input", field)
    field = re.sub(r"^tools\[(\d+)\]\.input_schema", r"tools[\1].parameters", field)
    field = re.sub(r"^(output_format|response_format)", "text.format", field)
    field = re.sub(r"^max_tokens\b", "max_output_tokens", field)
    field = re.sub(r"^system\b", "instructions", field)
    field = re.sub(r"^conversation_id\b", "previous_response_id", field)
    return FieldProblem(field, problem.message)


def _as_list(blocks: Any) -> list[Any]:
    return [{"type": "text", "text": blocks}] if isinstance(blocks, str) else list(blocks)


def _tool_use(item: dict[str, Any], index: int) -> dict[str, Any]:
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise InvalidField(
            [FieldProblem(f"input[{index}]", "a function_call needs its `call_id` and `name`")]
        )
    try:
        arguments = orjson.loads(item.get("arguments") or "{}")
    except (orjson.JSONDecodeError, TypeError):
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidField(
            [FieldProblem(f"input[{index}].arguments", "must be a JSON object, as text")]
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool_result(item: dict[str, Any], index: int) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidField(
            [FieldProblem(f"input[{index}].call_id", "must name the function call it answers")]
        )
    output = item.get("output")
    if isinstance(output, list) and all(
        isinstance(p, dict) and p.get("type") in ("input_text", "output_text") for p in output
    ):
        output = "".join(str(p.get("text", "")) for p in output)
    if not isinstance(output, str):
        raise InvalidField(
            [FieldProblem(f"input[{index}].output", "must be a string or input_text parts")]
        )
    return {"type": "tool_result", "tool_use_id": call_id, "content": output}


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses function tools as Messages API tools."""
    out = []
    for number, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise Unsupported(
                f"tools[{number}]", f"tools of type {kind!r} are not supported (only 'function')"
            )
        out.append(
            {
                "name": tool.get("name"),
                "description": tool.get("description"),
                "input_schema": tool.get("parameters") or {"type": "object", "properties": {}},
            }
        )
    return out


def _output_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    spec = (text or {}).get("format")
    kind = spec.get("type", "text") if isinstance(spec, dict) else "text"
    if spec is None or kind == "text":
        return None
    assert isinstance(spec, dict)
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema" or not isinstance(spec.get("schema"), dict):
        raise InvalidField(
            [
                FieldProblem(
                    "text.format",
                    "must be {type: 'text'}, {type: 'json_object'} or"
                    " {type: 'json_schema', name, schema, strict}",
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
        isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text")
        for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    raise InvalidField(
        [FieldProblem(f"input[{index}].content", "must be a string or input_text parts")]
    )


_DATA_URL = re.compile(r"^data:(image/[a-z]+);base64,(.+)$", re.S)


def _blocks(content: Any, index: int) -> Any:
    """Responses content (string or parts) -> Messages API content (string or blocks)."""
    if not isinstance(content, list):
        return content  # validated (and rejected if wrong) by ChatRequest
    blocks: list[Any] = []
    for number, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            blocks.append({"type": "text", "text": part.get("text")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise InvalidField(
                    [
                        FieldProblem(
                            f"input[{index}].content[{number}].image_url",
                            "must be an https URL or a data: URL of an image (file_id is not"
                            " supported)",
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
                f"input[{index}].content[{number}]",
                f"content parts of type {kind!r} are not supported by this server",
            )
    return blocks


# -- out: the response object -----------------------------------------------------------------


def usage_object(usage: Usage | None) -> dict[str, Any]:
    """Responses usage: input tokens include the cached ones, as OpenAI counts them."""
    usage = usage or Usage(0, 0)
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens or 0,
            "cache_write_tokens": usage.cache_write_tokens or 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": prompt + completion,
    }


def error_object(error: ChatRelayError) -> dict[str, Any]:
    """A failed response's `error`: our code (what the other surfaces say) and message."""
    param = error.problems[0].field if error.problems else None
    return {"code": error.code, "message": error.message, "param": param}


def response_object(
    id: str,
    created: int,
    model: str,
    echo: dict[str, Any],
    *,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": model,
        "output": output,
        "reasoning": None,
        "service_tier": "default",
        "truncation": "disabled",
        "usage": usage,
        **echo,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        # A whole call without arguments has `{}`, which a client can parse.
        "arguments": call.arguments or ("{}" if status == "completed" else ""),
    }


def ending(stop_reason: str | None) -> tuple[str, str | None]:
    """(status, incomplete reason) of a response that reached its end."""
    reason = INCOMPLETE.get(stop_reason or "end_turn")
    return ("incomplete", reason) if reason else ("completed", None)


def completion_object(job: ChatJob, reply: Completion, echo: dict[str, Any]) -> dict[str, Any]:
    """A whole reply as a `response` object."""
    output: list[dict[str, Any]] = []
    if reply.content:
        output.append(message_item(f"msg_{job.stream_id}_0", reply.content))
    for number, call in enumerate(reply.tool_calls):
        output.append(call_item(f"fc_{job.stream_id}_{number}", call))
    status, incomplete = ending(reply.stop_reason)
    return response_object(
        response_id(job.stream_id, job.conversation_id),
        job.created or int(time.time()),
        reply.model,
        echo,
        status=status,
        output=output,
        usage=usage_object(reply.usage),
        incomplete=incomplete,
    )


# -- out: the events ------------------------------------------------------------------------


class EventEncoder:
    """One reader's encoder of a stream's events as Responses API SSE events.

    Every frame is `id: <n>` + `event: <type>` + `data: {..., "type", "sequence_number"}`.
    One stream event may take several frames (the first text delta opens its message item
    and content part first; a tool call closes the message item before it): those share
    their event's number as SSE id, so a resume after id N sends exactly the frames of the
    events after N. The last event's frames are numbered on from it, as every surface's are.
    `sequence_number` counts the frames from 0, the same on every replay.
    """

    __slots__ = (
        "_calls",
        "_created",
        "_echo",
        "_id",
        "_model",
        "_number",
        "_output",
        "_started",
        "_stream",
        "_text",
        "_text_at",
    )

    def __init__(self, meta: StreamMeta) -> None:
        self._stream = meta.stream_id
        self._id = response_id(meta.stream_id, meta.conversation_id)
        self._created = meta.created
        self._model = meta.requested_model
        self._echo: dict[str, Any] = dict(meta.options.get("echo") or {})
        self._number = 0  # the next frame's sequence_number
        self._started = False
        self._output: list[dict[str, Any]] = []  # the output items so far, as they stand
        self._text: list[str] | None = None  # the open message item's text
        self._text_at = -1  # its output index
        self._calls: dict[int, tuple[int, ToolCall, list[str]]] = {}  # open function calls

    # -- frames
    def _frame(self, sse_id: int, kind: str, payload: dict[str, Any]) -> bytes:
        payload["type"] = kind
        payload["sequence_number"] = self._number
        self._number += 1
        return b"id: %d\nevent: %b\ndata: %b\n\n" % (sse_id, kind.encode(), orjson.dumps(payload))

    def _response(self, status: str, **more: Any) -> dict[str, Any]:
        return response_object(
            self._id,
            self._created,
            self._model,
            self._echo,
            status=status,
            output=list(self._output),
            **more,
        )

    def _start(self, ids: _Ids) -> bytes:
        if self._started:
            return b""
        self._started = True
        response = {"response": self._response("in_progress")}
        return self._frame(ids.next(), "response.created", response) + self._frame(
            ids.next(), "response.in_progress", {"response": self._response("in_progress")}
        )

    def _close_text(self, ids: _Ids, status: str = "completed") -> bytes:
        if self._text is None:
            return b""
        text, at = "".join(self._text), self._text_at
        self._text = None
        item_id = self._output[at]["id"]
        self._output[at] = message_item(item_id, text, status)
        where = {"item_id": item_id, "output_index": at, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return (
            self._frame(
                ids.next(), "response.output_text.done", {**where, "text": text, "logprobs": []}
            )
            + self._frame(ids.next(), "response.content_part.done", {**where, "part": part})
            + self._frame(
                ids.next(),
                "response.output_item.done",
                {"output_index": at, "item": self._output[at]},
            )
        )

    def _close_calls(self, ids: _Ids, status: str = "completed") -> bytes:
        frames = []
        for at, call, pieces in self._calls.values():
            whole = ToolCall(call.id, call.name, "".join(pieces))
            item = call_item(self._output[at]["id"], whole, status)
            self._output[at] = item
            frames.append(
                self._frame(
                    ids.next(),
                    "response.function_call_arguments.done",
                    {"item_id": item["id"], "output_index": at, "arguments": item["arguments"]},
                )
            )
            done = {"output_index": at, "item": item}
            frames.append(self._frame(ids.next(), "response.output_item.done", done))
        self._calls.clear()
        return b"".join(frames)

    def _mark_open_incomplete(self) -> None:
        """The items still open when a response fails, as they got (in the failed object)."""
        if self._text is not None:
            at = self._text_at
            text = "".join(self._text)
            self._output[at] = message_item(self._output[at]["id"], text, "incomplete")
            self._text = None
        for at, call, pieces in self._calls.values():
            whole = ToolCall(call.id, call.name, "".join(pieces))
            self._output[at] = call_item(self._output[at]["id"], whole, "incomplete")
        self._calls.clear()

    def encode(self, seq: int, event: StreamEvent) -> bytes:
        terminal = isinstance(event, (End, Cut))
        ids = _Ids(seq, terminal)
        if isinstance(event, Answering):
            self._model = event.spec.alias
            return self._start(ids)
        out = self._start(ids)
        if isinstance(event, TextDelta):
            if self._text is None:
                out += self._close_calls(ids)
                at = len(self._output)
                item = message_item(f"msg_{self._stream}_{at}", "", "in_progress")
                item["content"] = []
                self._output.append(item)
                self._text, self._text_at = [], at
                where = {"item_id": item["id"], "output_index": at, "content_index": 0}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                out += self._frame(
                    ids.next(), "response.output_item.added", {"output_index": at, "item": item}
                )
                out += self._frame(
                    ids.next(), "response.content_part.added", {**where, "part": part}
                )
            self._text.append(event.text)
            at = self._text_at
            delta = {
                "item_id": self._output[at]["id"],
                "output_index": at,
                "content_index": 0,
                "delta": event.text,
                "logprobs": [],
            }
            return out + self._frame(ids.next(), "response.output_text.delta", delta)
        if isinstance(event, ToolCallStart):
            out += self._close_text(ids)
            at = len(self._output)
            call = ToolCall(event.id, event.name, "")
            item = call_item(f"fc_{self._stream}_{event.index}", call, "in_progress")
            self._output.append(item)
            self._calls[event.index] = (at, call, [])
            return out + self._frame(
                ids.next(), "response.output_item.added", {"output_index": at, "item": item}
            )
        if isinstance(event, ToolCallDelta):
            open_call = self._calls.get(event.index)
            if open_call is None:
                return out
            at, _, pieces = open_call
            pieces.append(event.arguments)
            delta = {
                "item_id": self._output[at]["id"],
                "output_index": at,
                "delta": event.arguments,
            }
            return out + self._frame(ids.next(), "response.function_call_arguments.delta", delta)
        if isinstance(event, End):
            if event.error is not None:
                return out + self._failed(ids, event.error, event.usage)
            out += self._close_text(ids) + self._close_calls(ids)
            status, incomplete = ending(event.stop_reason)
            response = self._response(
                status, usage=usage_object(event.usage), incomplete=incomplete
            )
            kind = "response.completed" if status == "completed" else "response.incomplete"
            return out + self._frame(ids.next(), kind, {"response": response})
        if isinstance(event, Cut):
            if event.reason == "stopped":  # as the client asked: the end of a response
                out += self._close_text(ids, "incomplete") + self._close_calls(ids, "incomplete")
                response = self._response("cancelled", usage=None)
                return out + self._frame(ids.next(), "response.incomplete", {"response": response})
            # Anything else is no end of the reply: whoever resumes it must not take it for one.
            if event.reason == "server_restarting":
                error: ChatRelayError = ServerRestarting()
            else:
                error = event.error() or StreamCut(
                    "The reply was cut before its end: its reader left"
                )
            return out + self._failed(ids, error, None)
        return out  # reasoning is not sent (see the module's docstring)

    def _failed(self, ids: _Ids, error: ChatRelayError, usage: Usage | None) -> bytes:
        self._mark_open_incomplete()
        response = self._response(
            "failed", usage=usage_object(usage) if usage else None, error=error_object(error)
        )
        return self._frame(ids.next(), "response.failed", {"response": response})


class _Ids:
    """The SSE ids of one event's frames: all its own number, or, for the last event of a
    stream, numbered on from it (as `surfaces.frames` resumes them)."""

    __slots__ = ("_next", "_terminal")

    def __init__(self, seq: int, terminal: bool) -> None:
        self._next, self._terminal = seq, terminal

    def next(self) -> int:
        current = self._next
        if self._terminal:
            self._next += 1
        return current
