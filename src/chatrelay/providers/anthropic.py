"""The Anthropic provider, on the official SDK's async client.

Facts this module is built on (measured on anthropic 2.12, see docs/ARCHITECTURE.md):
- `messages.create(stream=True)` costs about half the CPU per delta of the accumulating
  `messages.stream()` helper, and we accumulate nothing, so we use it.
- The SDK's own retries are turned off (`max_retries=0`): it honours any `retry-after` without a
  cap, and the relay retries with a capped, jittered backoff instead.
- An `event: error` mid-stream arrives as a bare `APIStatusError` with status 200: we key on its
  `.type`. A cut connection arrives as a raw `httpx2` error, and a body that just ends without
  `message_stop` raises nothing: the relay treats a stream without `Stop` as an error.
- `temperature` is no longer a keyword of the SDK; it goes in `extra_body`, and only to models
  that still accept it (Claude models from Opus 4.7 and Sonnet 5 on answer 400 to it).
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import Any, Literal

import anthropic
import httpx2

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
        return cls(client, temperature)

    def _sends_temperature(self, model: str) -> bool:
        if self._temperature == "auto":
            return accepts_temperature(model)
        return self._temperature == "always"

    def check(self, params: ChatParams) -> None:
        return None

    def warnings(self, params: ChatParams) -> list[str]:
        if params.temperature is not None and not self._sends_temperature(params.model):
            return [f"temperature is not accepted by {params.model} and was not sent"]
        return []

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
            upstream = await self._client.messages.create(**self._request(params))
        except anthropic.APIStatusError as exc:
            raise map_status_error(exc) from None
        except anthropic.APITimeoutError:
            raise UpstreamTimeout("connect timeout", retryable=True) from None
        except anthropic.APIConnectionError as exc:
            raise UpstreamFailed(f"connection failed: {exc.__cause__!r}", retryable=True) from None
        try:
            input_tokens: int | None = None
            stop_reason: str | None = None
            async for event in upstream:
                kind = event.type
                if kind == "content_block_delta":
                    if event.delta.type == "text_delta":
                        yield TextDelta(event.delta.text)
                elif kind == "message_start":
                    input_tokens = event.message.usage.input_tokens
                    yield Usage(input_tokens, event.message.usage.output_tokens)
                elif kind == "message_delta":
                    if event.usage.input_tokens is not None:
                        input_tokens = event.usage.input_tokens
                    yield Usage(input_tokens, event.usage.output_tokens)
                    stop_reason = event.delta.stop_reason
                elif kind == "message_stop":
                    yield Stop(stop_reason)
                    return
        except anthropic.APIStatusError as exc:
            raise map_status_error(exc) from None
        except httpx2.TimeoutException:
            raise UpstreamTimeout("the upstream stopped sending") from None
        except (httpx2.HTTPError, anthropic.APIError) as exc:
            raise UpstreamFailed(f"stream broken: {exc!r}", retryable=True) from None
        finally:
            # Closing the response closes the upstream socket: no tokens for nobody.
            await upstream.close()

    async def aclose(self) -> None:
        await self._client.close()
