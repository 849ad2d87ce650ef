"""The relay: one reply from a chain of models, with retries, fallbacks, a first-token timeout
and honest ends.

`Relay.run()` yields `Answering` once it knows which model answers, then each delta as the
provider produces it (never merged or delayed), and ends with exactly one `End`.

- A failure before the first delta is retried on the same model (jittered backoff, honouring
  the upstream's retry-after up to a cap); when the retries are spent and the failure is one a
  different model may not have (429, 529, 5xx, connection, timeout), the next model of the
  chain is tried.
- After the first delta nothing is retried and nothing falls back: the client would see text
  twice, or two models' text spliced together.
- A provider stream that ends without its end marker is a failure, never a clean end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .errors import ChatRelayError, InternalError, UpstreamError, UpstreamFailed, UpstreamTimeout
from .events import (
    Answering,
    End,
    Output,
    ProviderEvent,
    RelayEvent,
    Stop,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from .metrics import Metrics
from .providers import ChatParams
from .routing import Target
from .tokens import chars_to_tokens

log = logging.getLogger("chatrelay.relay")

FALLBACK_CODES = frozenset({"rate_limited", "overloaded", "upstream_error", "upstream_timeout"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 2
    base_s: float = 0.5
    max_backoff_s: float = 8.0
    retry_after_cap_s: float = 20.0

    def delay(self, attempt: int, error: UpstreamError, jitter: float) -> float | None:
        """Seconds to wait before retry `attempt` (1-based), or None to give up now."""
        if not error.retryable or attempt > self.max_retries:
            return None
        if error.retry_after is not None:
            # Waiting the cap and then failing anyway helps no one: give up at once instead.
            wait = error.retry_after
            return wait if wait <= self.retry_after_cap_s else None
        backoff = min(self.max_backoff_s, self.base_s * 2.0 ** (attempt - 1))
        return backoff * (1 - 0.25 * jitter)


@dataclass(slots=True)
class _Opened:
    stream: AsyncGenerator[ProviderEvent, None]
    first: Output | Stop
    usage: Usage | None
    attempts: int


@dataclass(slots=True)
class _Failed:
    error: ChatRelayError
    usage: Usage | None
    attempts: int


class Relay:
    """Runs replies; holds no per-stream state."""

    def __init__(
        self,
        *,
        first_token_timeout_s: float,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
        tracer: Any = None,
    ) -> None:
        self._first_token_timeout = first_token_timeout_s
        self._retry = retry
        self._sleep = sleep
        self._metrics = metrics
        self._tracer = tracer

    async def run(
        self, plan: Sequence[tuple[Target, ChatParams]]
    ) -> AsyncGenerator[RelayEvent, None]:
        """Answer from the first model of `plan` that produces output."""
        failed: list[str] = []
        for position, (target, params) in enumerate(plan):
            span = self._span(target, params)
            try:
                opened = await self._open(target, params)
            except BaseException:
                _end_span(span, "cancelled")
                raise
            if isinstance(opened, _Failed):
                _end_span(span, opened.error.code, opened.attempts)
                code = opened.error.code
                if position < len(plan) - 1 and code in FALLBACK_CODES:
                    following = plan[position + 1][0].spec.alias
                    log.warning(
                        "model %s failed with %s before answering; falling back to %s",
                        target.spec.alias,
                        code,
                        following,
                    )
                    if self._metrics is not None:  # labelled by entry: patterns stay bounded
                        self._metrics.fallback(target.spec.entry, plan[position + 1][0].spec.entry)
                    failed.append(target.spec.alias)
                    continue
                yield Answering(target.spec, tuple(failed))
                yield End(None, opened.usage, opened.error, opened.attempts)
                return
            yield Answering(target.spec, tuple(failed))
            outcome = "cancelled"
            try:
                # `async for` alone would leave the inner generator (and the upstream) open
                # when this one is closed between two events.
                async with aclosing(self._relay(opened)) as events:
                    async for event in events:
                        if type(event) is End:
                            outcome = event.error.code if event.error else "completed"
                        yield event
            finally:
                _end_span(span, outcome, opened.attempts)
            return

    def _span(self, target: Target, params: ChatParams) -> Any:
        if self._tracer is None:
            return None
        return self._tracer.start_span(
            "upstream",
            attributes={
                "chatrelay.model": target.spec.alias,
                "chatrelay.provider": target.spec.provider,
                "gen_ai.request.model": params.model,
                "gen_ai.request.max_tokens": params.max_tokens,
            },
        )

    async def _open(self, target: Target, params: ChatParams) -> _Opened | _Failed:
        """Start the reply, retrying until its first output (or a final failure)."""
        provider = target.provider
        attempt = 1
        while True:
            stream = provider.stream(params)
            usage: Usage | None = None
            try:
                try:
                    async with asyncio.timeout(self._first_token_timeout):
                        async for event in stream:
                            if isinstance(event, Usage):
                                usage = event
                            else:
                                return _Opened(stream, event, usage, attempt)
                    error: UpstreamError = UpstreamFailed(
                        "the upstream ended its stream before any output", retryable=True
                    )
                except TimeoutError:
                    error = UpstreamTimeout(f"no output within {self._first_token_timeout:g} s")
            except UpstreamError as exc:
                error = exc
            except Exception as exc:
                await stream.aclose()
                log.exception("provider %s failed unexpectedly", provider.name)
                return _Failed(_internal(exc), usage, attempt)
            except BaseException:
                await stream.aclose()  # cancelled (the client left): close the upstream
                raise
            await stream.aclose()
            delay = self._retry.delay(attempt, error, random.random())
            if delay is None:
                return _Failed(error, usage, attempt)
            log.info(
                "retrying %s after %s (attempt %d, waiting %.2f s)",
                params.model,
                error.code,
                attempt + 1,
                delay,
            )
            if self._metrics is not None:
                self._metrics.retry(target.spec.entry, error.code)
            await self._sleep(delay)
            attempt += 1

    async def _relay(self, opened: _Opened) -> AsyncGenerator[RelayEvent, None]:
        """Relay an opened reply to its end; no retries from here on."""
        stream, usage, attempts = opened.stream, opened.usage, opened.attempts
        chars = 0  # of output relayed: a reply cut short is billed for at least that much
        try:
            first = opened.first
            if isinstance(first, Stop):
                yield End(first.reason, usage, None, attempts)
                return
            chars += _chars(first)
            yield first
            async for event in stream:
                if isinstance(event, OUTPUT):
                    chars += _chars(event)
                    yield event
                elif isinstance(event, Usage):
                    usage = event
                else:
                    yield End(event.reason, usage, None, attempts)
                    return
            yield End(None, _at_least(usage, chars), _truncated(), attempts)
        except UpstreamError as error:
            yield End(None, _at_least(usage, chars), error, attempts)
        except Exception as error:
            log.exception("provider failed unexpectedly")
            yield End(None, _at_least(usage, chars), _internal(error), attempts)
        finally:
            await stream.aclose()


OUTPUT = (TextDelta, ThinkingDelta, ThinkingSignature, ToolCallStart, ToolCallDelta)


def _chars(event: Output) -> int:
    """Characters of output (what an estimate of a cut reply's tokens counts)."""
    if isinstance(event, ToolCallStart):
        return len(event.name)
    if isinstance(event, ToolCallDelta):
        return len(event.arguments)
    if isinstance(event, ThinkingSignature):
        return 0
    return len(event.text)


def _at_least(usage: Usage | None, chars: int) -> Usage:
    """The usage of a reply that ended without the upstream's final count: what it reported
    so far (often just its opening count), or an estimate of the text produced, if more."""
    estimate = chars_to_tokens(chars)
    reported = usage.output_tokens if usage else None
    if usage is not None and reported is not None and reported >= estimate:
        return usage
    if usage is None:
        return Usage(None, estimate, estimated=True)
    return dataclasses.replace(usage, output_tokens=estimate, estimated=True)


def _end_span(span: Any, outcome: str, attempts: int | None = None) -> None:
    if span is None:
        return
    span.set_attribute("chatrelay.outcome", outcome)
    if attempts is not None:
        span.set_attribute("chatrelay.attempts", attempts)
    span.end()


def _truncated() -> UpstreamFailed:
    return UpstreamFailed("the upstream stream ended without its end marker")


def _internal(error: Exception) -> InternalError:
    wrapped = InternalError()
    wrapped.__cause__ = error
    return wrapped
