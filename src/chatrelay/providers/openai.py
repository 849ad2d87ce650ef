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
from ..events import ProviderEvent, Stop, TextDelta, ThinkingDelta, Usage
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
    """Messages API turns and blocks -> Chat Completions messages and content parts."""
    messages: list[dict[str, Any]] = []
    if params.system:
        messages.append({"role": "system", "content": params.system})
    for message in params.messages:
        content = message["content"]
        if isinstance(content, list):
            if all(block["type"] == "text" for block in content):
                content = "".join(block["text"] for block in content)
            else:
                content = [_part(block) for block in content]
        messages.append({"role": message["role"], "content": content})
    return messages


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
        return request

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        want_reasoning = params.thinking is not None
        try:
            response = await post_stream(self._client, "/chat/completions", self._request(params))
            try:
                decoder = SSEDecoder()
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
                            if reason := choice.get("finish_reason"):
                                finish = STOP_REASONS.get(reason, reason)
                        if usage := payload.get("usage"):
                            yield Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
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
