"""The relay: one reply from a provider, with retries, a first-token timeout and honest ends.

`Relay.run()` yields each `TextDelta` as the provider produces it (never merged or delayed)
and ends with exactly one `End`. Failures before the first piece of text are retried with a
jittered backoff (honouring the upstream's retry-after up to a cap); after text has been sent
they are never retried, because the client would see the reply twice. A provider stream that
ends without its end marker is a failure, never a clean end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from .errors import ChatRelayError, InternalError, UpstreamError, UpstreamFailed, UpstreamTimeout
from .events import Stop, TextDelta, Usage
from .providers import ChatParams, Provider

log = logging.getLogger("chatrelay.relay")


@dataclass(slots=True, frozen=True)
class End:
    """How a reply ended: `error` is None for a complete reply."""

    stop_reason: str | None
    usage: Usage | None
    error: ChatRelayError | None = None
    attempts: int = 1


RelayEvent = TextDelta | End


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


class Relay:
    """Runs one reply at a time per call of `run`; holds no per-stream state."""

    def __init__(
        self,
        provider: Provider,
        *,
        first_token_timeout_s: float,
        retry: RetryPolicy,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.provider = provider
        self._first_token_timeout = first_token_timeout_s
        self._retry = retry
        self._sleep = sleep

    async def run(self, params: ChatParams) -> AsyncGenerator[RelayEvent, None]:
        attempt = 1
        while True:
            stream = self.provider.stream(params)
            usage: Usage | None = None
            first: TextDelta | Stop | None = None
            try:
                try:
                    async with asyncio.timeout(self._first_token_timeout):
                        async for event in stream:
                            if type(event) is Usage:
                                usage = event
                            else:
                                first = event  # type: ignore[assignment]
                                break
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"no text within {self._first_token_timeout:g} s"
                    ) from None
            except UpstreamError as error:
                await stream.aclose()
                delay = self._retry.delay(attempt, error, random.random())
                if delay is None:
                    yield End(None, usage, error, attempt)
                    return
                log.info(
                    "retrying %s after %s (attempt %d, waiting %.2f s)",
                    params.model,
                    error.code,
                    attempt + 1,
                    delay,
                )
                await self._sleep(delay)
                attempt += 1
                continue
            except Exception as error:
                await stream.aclose()
                log.exception("provider %s failed unexpectedly", self.provider.name)
                yield End(None, usage, _internal(error), attempt)
                return
            break

        # From here on text has gone (or is about to go) to the client: no more retries.
        try:
            if isinstance(first, Stop):
                yield End(first.reason, usage, None, attempt)
                return
            if first is None:
                yield End(None, usage, _truncated(), attempt)
                return
            yield first
            async for event in stream:
                kind = type(event)
                if kind is TextDelta:
                    yield event  # type: ignore[misc]
                elif kind is Usage:
                    usage = event  # type: ignore[assignment]
                else:
                    yield End(event.reason, usage, None, attempt)  # type: ignore[union-attr]
                    return
            yield End(None, usage, _truncated(), attempt)
        except UpstreamError as error:
            yield End(None, usage, error, attempt)
        except Exception as error:
            log.exception("provider %s failed unexpectedly", self.provider.name)
            yield End(None, usage, _internal(error), attempt)
        finally:
            await stream.aclose()


def _truncated() -> UpstreamFailed:
    return UpstreamFailed("the upstream stream ended without its end marker")


def _internal(error: Exception) -> InternalError:
    wrapped = InternalError()
    wrapped.__cause__ = error
    return wrapped
