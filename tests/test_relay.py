"""The relay's retry, timeout and end-of-stream rules, driven with a scripted provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from chatrelay.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
)
from chatrelay.events import ProviderEvent, Stop, TextDelta, Usage
from chatrelay.providers import ChatParams
from chatrelay.relay import End, Relay, RetryPolicy

PARAMS = ChatParams(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
Step = ProviderEvent | UpstreamError | float  # a float is a pause, in seconds


@dataclass
class ScriptedProvider:
    """Plays one script per call of `stream`; records how each attempt ended."""

    scripts: list[list[Step]]
    name: str = "scripted"
    attempts: int = 0
    closed: list[bool] = field(default_factory=list)

    def check(self, params: ChatParams) -> None:
        return None

    def warnings(self, params: ChatParams) -> list[str]:
        return []

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        script = self.scripts[min(self.attempts, len(self.scripts) - 1)]
        self.attempts += 1
        self.closed.append(False)
        try:
            for step in script:
                if isinstance(step, UpstreamError):
                    raise step
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                yield step
        finally:
            self.closed[-1] = True

    async def aclose(self) -> None:
        return None


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def relay_for(
    provider: ScriptedProvider, *, first_token_timeout: float = 5.0, **retry: float
) -> tuple[Relay, Sleeps]:
    sleeps = Sleeps()
    policy = RetryPolicy(**retry)  # type: ignore[arg-type]
    return Relay(
        provider, first_token_timeout_s=first_token_timeout, retry=policy, sleep=sleeps
    ), sleeps


async def run(relay: Relay) -> list[TextDelta | End]:
    return [event async for event in relay.run(PARAMS)]


OK = [Usage(5, 0), TextDelta("Hel"), TextDelta("lo"), Usage(5, 2), Stop("end_turn")]


async def test_complete_reply_yields_every_delta_in_order_then_one_end() -> None:
    events = await run(relay_for(ScriptedProvider([OK]))[0])
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    assert events[2] == End("end_turn", Usage(5, 2), None, 1)


async def test_rate_limit_before_text_is_retried_with_the_upstream_retry_after() -> None:
    provider = ScriptedProvider([[UpstreamRateLimited(retry_after=1.5)], OK])
    relay, sleeps = relay_for(provider)
    events = await run(relay)
    assert sleeps.calls == [1.5]
    assert events[-1] == End("end_turn", Usage(5, 2), None, 2)


async def test_backoff_grows_and_is_jittered_down_by_at_most_a_quarter() -> None:
    provider = ScriptedProvider([[UpstreamOverloaded()]])
    relay, sleeps = relay_for(provider, max_retries=3, base_s=1.0)
    events = await run(relay)
    assert provider.attempts == 4
    for got, nominal in zip(sleeps.calls, [1.0, 2.0, 4.0], strict=True):
        assert 0.75 * nominal <= got <= nominal
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamOverloaded)
    assert end.attempts == 4


async def test_retry_after_above_the_cap_fails_at_once_instead_of_sleeping_for_minutes() -> None:
    provider = ScriptedProvider([[UpstreamRateLimited(retry_after=300.0)]])
    relay, sleeps = relay_for(provider, retry_after_cap_s=20.0)
    events = await run(relay)
    assert sleeps.calls == []
    assert provider.attempts == 1
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamRateLimited)
    assert end.error.retry_after == 300.0


async def test_errors_that_are_not_retryable_fail_on_the_first_attempt() -> None:
    provider = ScriptedProvider([[UpstreamAuthError()], OK])
    events = await run(relay_for(provider)[0])
    assert provider.attempts == 1
    assert isinstance(events[-1], End) and isinstance(events[-1].error, UpstreamAuthError)


async def test_failure_after_text_is_never_retried() -> None:
    provider = ScriptedProvider([[TextDelta("Hel"), UpstreamOverloaded()], OK])
    relay, sleeps = relay_for(provider)
    events = await run(relay)
    assert provider.attempts == 1 and sleeps.calls == []
    assert events[0] == TextDelta("Hel")
    assert isinstance(events[1], End) and isinstance(events[1].error, UpstreamOverloaded)
    assert provider.closed == [True]


async def test_stream_that_ends_without_its_end_marker_is_an_error() -> None:
    provider = ScriptedProvider([[TextDelta("Hel"), TextDelta("lo")]])
    events = await run(relay_for(provider)[0])
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamFailed)
    assert end.stop_reason is None


async def test_empty_stream_is_an_error_too() -> None:
    events = await run(relay_for(ScriptedProvider([[Usage(3, 0)]]), max_retries=0)[0])
    assert isinstance(events[-1], End) and isinstance(events[-1].error, UpstreamFailed)


async def test_reply_with_no_text_but_an_end_marker_is_complete() -> None:
    events = await run(relay_for(ScriptedProvider([[Usage(3, 0), Stop("end_turn")]]))[0])
    assert events == [End("end_turn", Usage(3, 0), None, 1)]


async def test_first_token_timeout_closes_the_attempt_and_reports_upstream_timeout() -> None:
    provider = ScriptedProvider([[Usage(1, 0), 5.0, TextDelta("late"), Stop("end_turn")]])
    relay, _ = relay_for(provider, first_token_timeout=0.05)
    events = await run(relay)
    end = events[-1]
    assert isinstance(end, End) and end.error is not None
    assert end.error.code == "upstream_timeout"
    assert provider.closed == [True]


async def test_closing_the_relay_mid_reply_closes_the_provider_stream() -> None:
    provider = ScriptedProvider([[TextDelta("a"), 5.0, TextDelta("b"), Stop("end_turn")]])
    relay, _ = relay_for(provider)
    stream = relay.run(PARAMS)
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()
    assert provider.closed == [True]


async def test_a_bug_in_a_provider_ends_the_stream_with_an_internal_error() -> None:
    class Broken(ScriptedProvider):
        async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
            yield TextDelta("a")
            raise KeyError("oops")

    events = await run(relay_for(Broken([[]]))[0])
    end = events[-1]
    assert isinstance(end, End) and end.error is not None and end.error.code == "internal"
    assert "oops" not in end.error.message


@pytest.mark.parametrize("attempt", [1, 2])
def test_retry_policy_gives_up_after_max_retries(attempt: int) -> None:
    policy = RetryPolicy(max_retries=1)
    delay = policy.delay(attempt, UpstreamOverloaded(), 0.0)
    assert (delay is None) == (attempt > 1)
