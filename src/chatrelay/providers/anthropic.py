"""The Anthropic provider, on the official SDK's async client.

Facts this module is built on (measured on anthropic 2.12, see docs/ARCHITECTURE.md):
- CPU per relayed delta (bench/sdk_streaming.py, 200 streams): the accumulating
  `messages.stream()` helper ~130 us, `messages.create(stream=True)` ~75 us, and the SDK's
  raw streaming response read with our own small SSE decoder ~43 us, which is within noise of
  plain httpx2. So the request goes through the SDK's `post` for a raw response
  (`sdk.post_stream`): the SDK still authenticates and sends it and raises its status
  errors, and we decode only the events we relay.
- The SDK's own retries are turned off (`max_retries=0`): it honours any `retry-after` without a
  cap, and the relay retries with a capped, jittered backoff instead.
- An `event: error` mid-stream is mapped by its `error.type`. A cut connection arrives as a raw
  `httpx2` error, and a body that just ends without `message_stop` is not an error to the SDK:
  the relay treats a stream without `Stop` as one.
- Which models are deprecated or retired is chatrelay's own knowledge (catalog.py), not the
  SDK's private list, which changes between minor versions.
- `temperature`, `top_p` and `top_k` are no longer keywords of the SDK's `create()`; the body
  we send is our own, so they are plain fields in it (sent only to models that accept them,
  see models.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import orjson

from .. import catalog
from ..errors import (
    FieldProblem,
    InvalidField,
    Unsupported,
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
    ThinkingSignature,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from . import prompt_cache
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

log = logging.getLogger("chatrelay.providers.anthropic")

# Claude takes a temperature of 0 to 1 (OpenAI-compatible models 0 to 2, which the schema allows).
MAX_TEMPERATURE = 1.0

_BY_TYPE: dict[str, type[UpstreamError]] = {
    "overloaded_error": UpstreamOverloaded,
    "rate_limit_error": UpstreamRateLimited,
    "invalid_request_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
    "not_found_error": UpstreamRejected,
    "authentication_error": UpstreamAuthError,
    "permission_error": UpstreamAuthError,
    "billing_error": UpstreamAuthError,
    "timeout_error": UpstreamTimeout,
    "api_error": UpstreamFailed,
}


def map_status_error(exc: anthropic.APIStatusError, secret: str | None) -> UpstreamError:
    """Translate an SDK status error into our error tree."""
    detail = exc.api_message if isinstance(exc.api_message, str) else ""
    return error_for_status(exc.status_code, detail, exc.response.headers, exc.request_id, secret)


_USAGE_EVENTS = (b"message_start", b"message_delta")


class _UsageCounter:
    """Follows the cumulative usage and the stop reason across message_start/message_delta.

    Anthropic's `input_tokens` leaves out the tokens read from or written to the prompt cache;
    the project's counts every input token, with the cache's shares beside it."""

    __slots__ = ("counts", "stop_reason")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.stop_reason: str | None = None

    def update(self, payload: dict[str, Any]) -> Usage:
        if payload["type"] == "message_start":
            counts = payload["message"].get("usage") or {}
        else:
            counts = payload.get("usage") or {}
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason")
        # Counts are cumulative, and a field that is present replaces the earlier value.
        for name, value in counts.items():
            if isinstance(value, int):
                self.counts[name] = value
        return self.usage()

    def usage(self) -> Usage:
        counts = self.counts
        uncached = counts.get("input_tokens")
        read = counts.get("cache_read_input_tokens")
        written = counts.get("cache_creation_input_tokens")
        total = None if uncached is None else uncached + (read or 0) + (written or 0)
        return Usage(
            total,
            counts.get("output_tokens"),
            cache_read_tokens=read,
            cache_write_tokens=written,
        )


def _stream_error(data: bytes, headers: httpx2.Headers, secret: str | None) -> UpstreamError:
    """An `event: error` frame: `{"type":"error","error":{"type":..,"message":..}}`."""
    try:
        error = orjson.loads(data).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    kind = _BY_TYPE.get(str(error.get("type")), UpstreamFailed)
    message = error.get("message")
    return kind(
        redact(message, secret) if isinstance(message, str) else "error event",
        retryable=kind.retryable or error.get("type") == "api_error",
        request_id=headers.get("request-id"),
    )


class AnthropicProvider:
    """Streams replies from the Anthropic Messages API."""

    name = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client

    @classmethod
    def create(
        cls, *, api_key: str, base_url: str | None, options: ClientOptions
    ) -> AnthropicProvider:
        client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            # The SDK's own spans would go to OpenTelemetry's global provider, which chatrelay
            # does not use (tracing.py has its own); building their attributes was ~10% of a
            # stream's set-up CPU even with no tracing at all.
            open_telemetry=False,
            **options.sdk_kwargs(anthropic.DefaultAsyncHttpxClient),
        )
        return cls(client)

    @property
    def base_url(self) -> str:
        """Where its requests go (what `GET /readyz?probe=upstream` reaches)."""
        return str(self._client.base_url)

    def check(self, params: ChatParams) -> None:
        output = params.output_format
        if output is None:
            return
        if output["type"] == "json_object":
            raise Unsupported(
                "response_format",
                f"model {params.model!r} takes no json_object mode; send a json_schema",
            )
        if not catalog.accepts_output_schema("anthropic", params.model):
            raise Unsupported(
                "response_format", f"model {params.model!r} does not take a JSON schema output"
            )

    def check_temperature(self, temperature: float, alias: str) -> None:
        if temperature > MAX_TEMPERATURE:
            why = f"must be at most 1 for model {alias!r}: Claude models take 0 to 1"
            raise InvalidField([FieldProblem("temperature", why)])

    def adapt(self, params: ChatParams) -> ChatParams:
        if params.temperature is not None and params.temperature > MAX_TEMPERATURE:
            return dataclasses.replace(params, temperature=MAX_TEMPERATURE)
        return params

    def warnings(self, params: ChatParams) -> list[str]:
        today = datetime.now(UTC).date()
        warning = catalog.lifecycle_warning("anthropic", params.model, today)
        return [warning] if warning else []

    def _request(self, params: ChatParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": params.model,
            "max_tokens": params.max_tokens,
            "messages": params.messages,
            "stream": True,
        }
        if params.system:
            request["system"] = params.system
        if params.stop_sequences:
            request["stop_sequences"] = params.stop_sequences
        if params.thinking is not None:
            request["thinking"] = params.thinking
        if params.tools:
            request["tools"] = params.tools
        if params.tool_choice is not None:
            request["tool_choice"] = params.tool_choice
        if params.output_format is not None:
            schema = params.output_format["schema"]
            request["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        if params.prompt_cache is not None:
            request = prompt_cache.add_breakpoints(
                request,
                min_tokens=catalog.cache_min_tokens(params.model),
                ttl=params.prompt_cache,
                continues=params.continues,
            )
        for name, value in (
            ("temperature", params.temperature),
            ("top_p", params.top_p),
            ("top_k", params.top_k),
        ):
            if value is not None:
                request[name] = value
        return request

    async def count_tokens(self, params: ChatParams) -> int | None:
        """`POST /v1/messages/count_tokens`, through the SDK's client (its auth, base URL and
        status errors), with the body the stream would send, less what the endpoint refuses."""
        body = self._request(params)
        for name in ("max_tokens", "stream", "stop_sequences", "temperature", "top_p", "top_k"):
            body.pop(name, None)
        try:
            response = await self._client.post(
                "/v1/messages/count_tokens", cast_to=httpx2.Response, content=orjson.dumps(body)
            )
            assert isinstance(response, httpx2.Response)
            counted = orjson.loads(response.content).get("input_tokens")
        except anthropic.APIStatusError as exc:
            raise map_status_error(exc, self._client.api_key) from None
        except anthropic.APIConnectionError as exc:
            timed_out = isinstance(exc, anthropic.APITimeoutError)
            raise connection_error(exc, timed_out) from None
        except httpx2.HTTPError as exc:
            raise transport_error(exc) from None
        except (orjson.JSONDecodeError, AttributeError) as exc:
            raise UpstreamFailed(f"unparseable token count: {exc!r}") from None
        if not isinstance(counted, int):
            raise UpstreamFailed("the token count has no input_tokens")
        return counted

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        try:
            response = await post_stream(self._client, "/v1/messages", self._request(params))
            # Leaving (end, error, cancellation or aclose) closes the response and with it the
            # upstream socket: no tokens are generated for nobody.
            try:
                decoder = SSEDecoder()
                usage = _UsageCounter()
                tool_of: dict[int, int] = {}  # content block index -> tool call number
                chunks = body_chunks(response)
                async for chunk in chunks:
                    for event, data in decoder.feed(chunk):
                        if event == b"content_block_delta":
                            payload = orjson.loads(data)
                            delta = payload["delta"]
                            kind = delta["type"]
                            if kind == "text_delta":
                                yield TextDelta(delta["text"])
                            elif kind == "thinking_delta":
                                yield ThinkingDelta(delta["thinking"])
                            elif kind == "signature_delta":
                                yield ThinkingSignature(delta["signature"])
                            elif kind == "input_json_delta" and delta["partial_json"]:
                                yield ToolCallDelta(
                                    tool_of[payload["index"]], delta["partial_json"]
                                )
                        elif event == b"content_block_start":
                            payload = orjson.loads(data)
                            block = payload["content_block"]
                            if block["type"] == "tool_use":
                                tool_of[payload["index"]] = number = len(tool_of)
                                yield ToolCallStart(number, block["id"], block["name"])
                        elif event == b"message_stop":
                            await finish_body(response, chunks)
                            yield Stop(usage.stop_reason)
                            return
                        elif event in _USAGE_EVENTS:
                            yield usage.update(orjson.loads(data))
                        elif event == b"error":
                            raise _stream_error(data, response.headers, self._client.api_key)
            finally:
                await response.aclose()
        except anthropic.APIStatusError as exc:
            raise map_status_error(exc, self._client.api_key) from None
        except anthropic.APIConnectionError as exc:
            timed_out = isinstance(exc, anthropic.APITimeoutError)
            raise connection_error(exc, timed_out) from None
        except httpx2.HTTPError as exc:
            raise transport_error(exc) from None
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise UpstreamFailed(f"unparseable event: {exc!r}") from None

    async def aclose(self) -> None:
        await self._client.close()
