"""The Anthropic provider, on the official SDK's async client.

Facts this module is built on (measured on anthropic 2.12, see docs/ARCHITECTURE.md):
- CPU per relayed delta (bench/sdk_streaming.py, 200 streams): the accumulating
  `messages.stream()` helper ~130 us, `messages.create(stream=True)` ~75 us, and the SDK's
  raw streaming response read with our own small SSE decoder ~43 us, which is within noise of
  plain httpx2. So we use `with_streaming_response`: the SDK still builds, authenticates and
  sends the request and raises its status errors, and we decode only the events we relay.
- The SDK's own retries are turned off (`max_retries=0`): it honours any `retry-after` without a
  cap, and the relay retries with a capped, jittered backoff instead.
- An `event: error` mid-stream is mapped by its `error.type`. A cut connection arrives as a raw
  `httpx2` error, and a body that just ends without `message_stop` is not an error to the SDK:
  the relay treats a stream without `Stop` as one.
- `temperature` is no longer a keyword of the SDK; it goes in `extra_body`, and only to models
  that still accept it (Claude models from Opus 4.7 and Sonnet 5 on answer 400 to it).
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import warnings
from collections.abc import AsyncGenerator
from typing import Any, Literal

import anthropic
import httpx2
import orjson
from anthropic.resources.messages.messages import DEPRECATED_MODELS

from ..errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from ..events import ProviderEvent, Stop, TextDelta, Usage
from .base import DEFAULT_TEMPERATURE, ChatParams
from .sse_decoder import SSEDecoder

log = logging.getLogger("chatrelay.providers.anthropic")

# Families and the first version that rejects sampling parameters. A model of a newer family
# than these, or one we cannot parse, is assumed to reject them too: an unknown new model then
# loses a temperature rather than failing every request with a 400.
_SAMPLING_CUTOFF = {"opus": (4, 7), "sonnet": (5, 0), "haiku": (5, 5)}
_LEGACY_ID = re.compile(r"claude-\d+(?:-\d+)?-[a-z]")  # claude-3-5-sonnet-..., claude-3-opus-...
_CLAUDE_ID = re.compile(r"claude-([a-z]+)-(\d+)(?:-(\d{1,2})(?!\d))?")

TemperaturePolicy = Literal["auto", "always", "never"]


def accepts_temperature(model: str) -> bool:
    """Whether a Claude model id accepts `temperature` (older models do, newer ones reject it)."""
    if _LEGACY_ID.search(model):
        return True
    match = _CLAUDE_ID.search(model)
    if match is None:
        return False
    family, major, minor = match.groups()
    cutoff = _SAMPLING_CUTOFF.get(family)
    if cutoff is None:
        return False
    return (int(major), int(minor or 0)) < cutoff


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """The upstream's requested wait, from `retry-after-ms` or `retry-after` (seconds or date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


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


def map_status_error(exc: anthropic.APIStatusError) -> UpstreamError:
    """Translate an SDK status error (HTTP or in-stream) into our error tree."""
    status = exc.status_code
    kind: type[UpstreamError]
    if status == 200:  # an `event: error` frame inside the stream
        kind = _BY_TYPE.get(str(exc.type), UpstreamFailed)
    elif status == 429:
        kind = UpstreamRateLimited
    elif status in (503, 529):
        kind = UpstreamOverloaded
    elif status in (401, 402, 403):
        kind = UpstreamAuthError
    elif status in (408, 504):
        kind = UpstreamTimeout
    elif 400 <= status < 500:
        kind = UpstreamRejected
    else:
        kind = UpstreamFailed
    detail = exc.api_message if isinstance(exc.api_message, str) else ""
    retryable = kind.retryable or status in (408, 500, 502, 504) or exc.type == "api_error"
    return kind(
        detail or f"HTTP {status}",
        retry_after=retry_after_seconds(exc.response.headers),
        retryable=retryable,
        request_id=exc.request_id,
    )


_USAGE_EVENTS = (b"message_start", b"message_delta")


class _UsageCounter:
    """Follows the cumulative usage and the stop reason across message_start/message_delta."""

    __slots__ = ("input_tokens", "output_tokens", "stop_reason")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.stop_reason: str | None = None

    def update(self, payload: dict[str, Any]) -> Usage:
        if payload["type"] == "message_start":
            counts = payload["message"].get("usage") or {}
        else:
            counts = payload.get("usage") or {}
            self.stop_reason = (payload.get("delta") or {}).get("stop_reason")
        # Counts are cumulative, and a field that is present replaces the earlier value.
        if counts.get("input_tokens") is not None:
            self.input_tokens = counts["input_tokens"]
        if counts.get("output_tokens") is not None:
            self.output_tokens = counts["output_tokens"]
        return Usage(self.input_tokens, self.output_tokens)


def _stream_error(data: bytes, headers: httpx2.Headers) -> UpstreamError:
    """An `event: error` frame: `{"type":"error","error":{"type":..,"message":..}}`."""
    try:
        error = orjson.loads(data).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        error = {}
    kind = _BY_TYPE.get(str(error.get("type")), UpstreamFailed)
    message = error.get("message")
    return kind(
        message if isinstance(message, str) else "error event",
        retryable=kind.retryable or error.get("type") == "api_error",
        request_id=headers.get("request-id"),
    )


class AnthropicProvider:
    """Streams replies from the Anthropic Messages API."""

    name = "anthropic"

    def __init__(self, client: anthropic.AsyncAnthropic, temperature: TemperaturePolicy) -> None:
        self._client = client
        self._temperature = temperature

    @classmethod
    def from_settings(
        cls,
        *,
        api_key: str,
        base_url: str | None,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        temperature: TemperaturePolicy,
    ) -> AnthropicProvider:
        http_client = anthropic.DefaultAsyncHttpxClient(
            # The SDK's default pool (1,000 connections, 100 kept alive) would queue or
            # reconnect under a thousand concurrent streams.
            limits=httpx2.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=httpx2.Timeout(read_timeout, connect=connect_timeout),
            http_client=http_client,
        )
        # The SDK warns about retiring models through `warnings` on every request; we tell the
        # client in the start frame instead (see `warnings()`).
        warnings.filterwarnings(
            "ignore", message=r"The model '.*' is deprecated", category=DeprecationWarning
        )
        return cls(client, temperature)

    def _sends_temperature(self, model: str) -> bool:
        if self._temperature == "auto":
            return accepts_temperature(model)
        return self._temperature == "always"

    def check(self, params: ChatParams) -> None:
        return None

    def warnings(self, params: ChatParams) -> list[str]:
        notes = []
        if params.temperature is not None and not self._sends_temperature(params.model):
            notes.append(f"temperature is not accepted by {params.model} and was not sent")
        if (retired_on := DEPRECATED_MODELS.get(params.model)) is not None:
            notes.append(f"{params.model} is deprecated and reaches end-of-life on {retired_on}")
        return notes

    def _request(self, params: ChatParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": params.model,
            "max_tokens": params.max_tokens,
            "messages": params.messages,
            "stream": True,
        }
        if params.system:
            request["system"] = params.system
        if self._sends_temperature(params.model):
            temperature = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
            request["extra_body"] = {"temperature": temperature}
        return request

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        try:
            async with self._client.messages.with_streaming_response.create(
                **self._request(params)
            ) as response:
                # Leaving this block (end, error, cancellation or aclose) closes the response
                # and with it the upstream socket: no tokens are generated for nobody.
                decoder = SSEDecoder()
                usage = _UsageCounter()
                async for chunk in response.http_response.aiter_bytes():
                    for event, data in decoder.feed(chunk):
                        if event == b"content_block_delta":
                            delta = orjson.loads(data)["delta"]
                            if delta["type"] == "text_delta":
                                yield TextDelta(delta["text"])
                        elif event == b"message_stop":
                            yield Stop(usage.stop_reason)
                            return
                        elif event in _USAGE_EVENTS:
                            yield usage.update(orjson.loads(data))
                        elif event == b"error":
                            raise _stream_error(data, response.http_response.headers)
        except anthropic.APIStatusError as exc:
            raise map_status_error(exc) from None
        except anthropic.APITimeoutError:
            raise UpstreamTimeout("connect timeout", retryable=True) from None
        except anthropic.APIConnectionError as exc:
            raise UpstreamFailed(f"connection failed: {exc.__cause__!r}", retryable=True) from None
        except httpx2.TimeoutException:
            raise UpstreamTimeout("the upstream stopped sending") from None
        except httpx2.HTTPError as exc:
            raise UpstreamFailed(f"stream broken: {exc!r}", retryable=True) from None
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailed(f"unparseable event: {exc}") from None

    async def aclose(self) -> None:
        await self._client.close()
