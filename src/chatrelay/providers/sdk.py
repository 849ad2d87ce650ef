"""What the SDK-based providers share: how their clients are set up, and how an upstream's
HTTP statuses and transport failures become our `UpstreamError`s."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
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
from .transport import BODY_END_WAIT_S, EXPECT_END, RelayTransport


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
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


def redact(text: str, secret: str | None) -> str:
    """Upstream error texts may echo the key they refused; it must not reach logs or users."""
    if secret and len(secret) >= 8 and secret in text:
        return text.replace(secret, "[redacted]")
    return text


def error_for_status(
    status: int,
    detail: str,
    headers: Mapping[str, str],
    request_id: str | None = None,
    secret: str | None = None,
) -> UpstreamError:
    """The error for an upstream HTTP status; 408/429/5xx may be retried."""
    detail = redact(detail, secret)
    kind: type[UpstreamError]
    if status == 429:
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
    return kind(
        detail or f"HTTP {status}",
        retry_after=retry_after_seconds(headers),
        retryable=kind.retryable or status in (408, 409) or status >= 500,
        request_id=request_id,
    )


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Connection settings every SDK client gets."""

    connect_timeout: float
    read_timeout: float
    max_connections: int
    transport: str = "relay"
    # The environment names an HTTP proxy (`Settings.proxy_configured`): only the `httpx`
    # transport speaks them.
    proxied: bool = False

    def sdk_kwargs(self, http_client: Callable[..., Any]) -> dict[str, Any]:
        """Keyword arguments for an SDK client constructor."""
        client_kwargs: dict[str, Any]
        if self.transport == "relay" and not self.proxied:
            client_kwargs = {"transport": RelayTransport(max_connections=self.max_connections)}
        else:
            # The SDKs' default pool (1,000 connections, 100 kept alive) would queue or
            # reconnect under a thousand concurrent streams.
            client_kwargs = {
                "limits": httpx2.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                )
            }
        return {
            # The relay retries (with a capped retry-after); the SDK must not as well.
            "max_retries": 0,
            "timeout": httpx2.Timeout(self.read_timeout, connect=self.connect_timeout),
            "http_client": http_client(**client_kwargs),
        }


def connection_error(exc: Exception, timed_out: bool) -> UpstreamError:
    """The SDK could not reach the upstream: worth another try."""
    if timed_out:
        return UpstreamTimeout("connect timeout", retryable=True)
    return UpstreamFailed(f"connection failed: {exc.__cause__!r}", retryable=True)


def transport_error(exc: httpx2.HTTPError) -> UpstreamError:
    """The stream broke while being read (the SDKs raise httpx2's own errors here)."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout("the upstream stopped sending")
    return UpstreamFailed(f"stream broken: {exc!r}", retryable=True)


async def post_stream(client: Any, path: str, body: dict[str, Any]) -> httpx2.Response:
    """POST `body` through an SDK client (Anthropic's or OpenAI's); the response, unread.

    `post(..., cast_to=httpx2.Response)` is the SDKs' documented call for a raw response: the
    client still adds its auth, base URL, headers and timeouts and raises its status errors.
    The body goes as bytes we encode once with orjson: the typed `create()` walks and copies
    it, then encodes it with the standard library, on every turn, and it holds the
    conversation's whole history (bench/sdk_request.py: ~0.1 ms more CPU a request for a short
    chat, ~0.4 ms for twenty turns, ~1.4 ms for a hundred).
    """
    response = await client.post(
        path, cast_to=httpx2.Response, content=orjson.dumps(body), stream=True, stream_cls=None
    )
    assert isinstance(response, httpx2.Response)
    return response


def body_chunks(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The raw body of a streaming response, as the transport delivers it.

    Three layers of httpx2 generators (content decoding, re-chunking, stream binding) sit
    between the transport and `aiter_bytes()`; each delta paid for all three. They only do
    work for a compressed body, which then keeps them.
    """
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity") and isinstance(response.stream, httpx2.AsyncByteStream):
        return response.stream.__aiter__()
    return response.aiter_bytes()


async def finish_body(response: httpx2.Response, chunks: AsyncIterator[bytes]) -> None:
    """Give back the connection of a response whose last event has arrived.

    A response closed before its body ended takes its connection with it, and the next stream
    pays for a new TCP (and TLS) handshake. Our transport waits for the body's end itself, in
    the background, so the reply's end is not held up by it; under the `httpx` transport the
    reader has to read to the end, for at most as long.
    """
    if (expect_end := response.extensions.get(EXPECT_END)) is not None:
        expect_end()
        return
    try:
        async with asyncio.timeout(BODY_END_WAIT_S):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx2.HTTPError):
        pass  # the connection is closed instead: nothing is lost
