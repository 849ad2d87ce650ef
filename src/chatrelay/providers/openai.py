"""The OpenAI-compatible provider (OpenAI, Ollama, vLLM, LM Studio, llama.cpp, OpenRouter...),
on the official `openai` SDK's async client.

As for Anthropic, the SDK builds, authenticates and sends the request and raises its status
errors, its own retries are off (the relay retries), and we decode the raw stream ourselves.
What the servers differ in (wire-formats.md §3): Ollama repeats `role` in every delta and has
no error frame; vLLM leaves unset fields out and sends `{"error": ...}` then `[DONE]`; usage
comes in a last `choices: []` chunk only when `stream_options.include_usage` is asked, and may
be missing. A stream without a `finish_reason` is an error, never a clean end.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai
import orjson

from ..errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from ..events import (
    ProviderEvent,
    Stop,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from .base import ChatParams
from .sdk import (
    ClientOptions,
    body_chunks,
    connection_error,
    error_for_status,
    finish_body,
    post_stream,
    redact,
    transport_error,
)
from .sse_decoder import SSEDecoder

# OpenAI's finish reasons in the project's (Messages API) vocabulary.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
}
_ERROR_TYPES: dict[str, type[UpstreamError]] = {
    "rate_limit_exceeded": UpstreamRateLimited,
    "rate_limit_error": UpstreamRateLimited,
    "insufficient_quota": UpstreamAuthError,
    "invalid_api_key": UpstreamAuthError,
    "authentication_error": UpstreamAuthError,
    "invalid_request_error": UpstreamRejected,
    "BadRequestError": UpstreamRejected,
    "server_error": UpstreamFailed,
    "service_unavailable": UpstreamOverloaded,
    "timeout": UpstreamTimeout,
}


def openai_messages(params: ChatParams) -> list[dict[str, Any]]:
    """Messages API turns and blocks -> Chat Completions messages and content parts.

    An assistant turn's `tool_use` blocks become its `tool_calls`; a user turn's `tool_result`
    blocks become `tool` messages, before whatever else the turn says."""
    messages: list[dict[str, Any]] = []
    if params.system:
        system = params.system
        if not isinstance(system, str):  # OpenAI-compatible servers cache by themselves
            system = "".join(block["text"] for block in system)
        messages.append({"role": "system", "content": system})
    for message in params.messages:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
            continue
        calls = [_tool_call(b) for b in content if b["type"] == "tool_use"]
        for block in content:
            if block["type"] == "tool_result":
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": _result_text(block),
                    }
                )
        rest = [b for b in content if b["type"] in ("text", "image")]
        if calls:
            text = "".join(b.get("text", "") for b in rest)
            messages.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif rest:
            if all(block["type"] == "text" for block in rest):
                parts: Any = "".join(block["text"] for block in rest)
            else:
                parts = [_part(block) for block in rest]
            messages.append({"role": message["role"], "content": parts})
    return messages


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = orjson.dumps(block["input"]).decode()
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    text = (
        content
        if isinstance(content, str)
        else "".join(b.get("text", "") for b in content if b.get("type") == "text")
    )
    return f"Error: {text}" if block.get("is_error") else text


def openai_tools(params: ChatParams) -> dict[str, Any]:
    """The request's tools, tool choice and output format as Chat Completions fields."""
    fields: dict[str, Any] = {}
    if params.tools:
        fields["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    **({"description": tool["description"]} if "description" in tool else {}),
                    "parameters": tool["input_schema"],
                },
            }
            for tool in params.tools
        ]
    choice = params.tool_choice
    if choice is not None:
        kind = choice["type"]
        if kind == "tool":
            fields["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            fields["tool_choice"] = {"any": "required"}.get(kind, kind)
        if choice.get("disable_parallel_tool_use") and params.tools:
            fields["parallel_tool_calls"] = False
    output = params.output_format
    if output is not None:
        if output["type"] == "json_object":
            fields["response_format"] = {"type": "json_object"}
        else:
            schema: dict[str, Any] = {
                "name": output.get("name") or "response",
                "schema": output["schema"],
            }
            if output.get("strict") is not None:
                schema["strict"] = output["strict"]
            fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    return fields


class _ToolCallReader:
    """Chat Completions `tool_calls` deltas -> the project's tool call events.

    A call's first delta carries its id and name (some servers send the whole call in one
    delta, some no id at all); the rest carry pieces of its arguments, by `index`."""

    __slots__ = ("_calls", "_number")

    def __init__(self) -> None:
        self._number: dict[int, int] = {}  # the upstream's index -> the reply's call number
        self._calls = 0

    def events(self, calls: list[dict[str, Any]]) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for position, call in enumerate(calls):
            index = call.get("index", position)
            function = call.get("function") or {}
            number = self._number.get(index)
            # A delta with no index that brings a new id is a new call (servers that send
            # calls whole, one per delta).
            if number is None or ("index" not in call and call.get("id")):
                self._number[index] = number = self._calls
                self._calls += 1
                id = call.get("id") or f"call_{number}"
                events.append(ToolCallStart(number, id, function.get("name") or ""))
            if arguments := function.get("arguments"):
                events.append(ToolCallDelta(number, arguments))
        return events


def _part(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"type": "text", "text": block["text"]}
    source = block["source"]
    url = (
        f"data:{source['media_type']};base64,{source['data']}"
        if source["type"] == "base64"
        else source["url"]
    )
    return {"type": "image_url", "image_url": {"url": url}}


def _stream_error(payload: dict[str, Any], secret: str) -> UpstreamError:
    """An error frame inside the stream (vLLM: `code` is the HTTP status, as an int)."""
    error = payload.get("error")
    if not isinstance(error, dict):
        return UpstreamFailed(redact(str(error), secret))
    message = redact(str(error.get("message") or "error frame"), secret)
    code = error.get("code")
    if isinstance(code, int):
        return error_for_status(code, message, {})
    kind = _ERROR_TYPES.get(str(error.get("type"))) or _ERROR_TYPES.get(str(code))
    return (kind or UpstreamFailed)(message)


def usage_of(usage: dict[str, Any]) -> Usage:
    """Chat Completions usage; its prompt tokens include the cached ones."""
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    return Usage(
        usage.get("prompt_tokens"),
        usage.get("completion_tokens"),
        cache_read_tokens=prompt.get("cached_tokens"),
        reasoning_tokens=completion.get("reasoning_tokens"),
    )


class OpenAIProvider:
    """Streams replies from a Chat Completions endpoint."""

    name = "openai"

    def __init__(self, client: openai.AsyncOpenAI, official: bool) -> None:
        self._client = client
        self._secret = client.api_key
        # api.openai.com wants max_completion_tokens (its reasoning models refuse max_tokens);
        # the local servers know max_tokens, and take top_k as an extension.
        self._official = official

    @classmethod
    def create(
        cls, *, api_key: str, base_url: str | None, options: ClientOptions
    ) -> OpenAIProvider:
        client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            **options.sdk_kwargs(openai.DefaultAsyncHttpxClient),
        )
        return cls(client, official=base_url is None or "api.openai.com" in base_url)

    @property
    def base_url(self) -> str:
        """Where its requests go (what `GET /readyz?probe=upstream` reaches)."""
        return str(self._client.base_url)

    def check(self, params: ChatParams) -> None:
        return None

    def check_temperature(self, temperature: float, alias: str) -> None:
        return None  # 0 to 2, as the request schema allows

    def adapt(self, params: ChatParams) -> ChatParams:
        return params

    def warnings(self, params: ChatParams) -> list[str]:
        if params.top_k is not None and self._official:
            return ["top_k is not supported by the OpenAI API and was not sent"]
        return []

    async def count_tokens(self, params: ChatParams) -> int | None:
        return None  # Chat Completions has no token counting endpoint

    def _request(self, params: ChatParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": params.model,
            "messages": openai_messages(params),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._official:
            request["max_completion_tokens"] = params.max_tokens
        else:
            request["max_tokens"] = params.max_tokens
            if params.top_k is not None:
                request["top_k"] = params.top_k
        if params.temperature is not None:
            request["temperature"] = params.temperature
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.stop_sequences:
            request["stop"] = params.stop_sequences
        request.update(openai_tools(params))
        return request

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        want_reasoning = params.thinking is not None
        try:
            response = await post_stream(self._client, "/chat/completions", self._request(params))
            try:
                decoder = SSEDecoder()
                tool_calls = _ToolCallReader()
                finish: str | None = None
                chunks = body_chunks(response)
                async for chunk in chunks:
                    for _event, data in decoder.feed(chunk):
                        if data == b"[DONE]":
                            break
                        payload = orjson.loads(data)
                        if "error" in payload:
                            raise _stream_error(payload, self._secret)
                        for choice in payload.get("choices") or ():
                            if choice.get("index", 0) != 0:
                                continue
                            delta = choice.get("delta") or {}
                            if content := delta.get("content"):
                                yield TextDelta(content)
                            elif want_reasoning and (
                                reasoning := delta.get("reasoning")
                                or delta.get("reasoning_content")
                            ):
                                yield ThinkingDelta(reasoning)
                            if calls := delta.get("tool_calls"):
                                for event in tool_calls.events(calls):
                                    yield event
                            if reason := choice.get("finish_reason"):
                                finish = STOP_REASONS.get(reason, reason)
                        if usage := payload.get("usage"):
                            yield usage_of(usage)
                    else:
                        continue
                    await finish_body(response, chunks)
                    break  # [DONE]
                if finish is not None:
                    yield Stop(finish)
                # No finish_reason: the relay ends the stream with upstream_error.
            finally:
                await response.aclose()
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            detail = str(body.get("message") or "")
            raise error_for_status(
                exc.status_code, detail, exc.response.headers, exc.request_id, self._secret
            ) from None
        except openai.APIConnectionError as exc:
            timed_out = isinstance(exc, openai.APITimeoutError)
            raise connection_error(exc, timed_out) from None
        except httpx2.HTTPError as exc:
            raise transport_error(exc) from None
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise UpstreamFailed(f"unparseable chunk: {exc!r}") from None

    async def aclose(self) -> None:
        await self._client.close()
