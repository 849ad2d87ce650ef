"""Turning an upstream's HTTP status and headers into our `UpstreamError`s (any provider)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from ..errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)


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
