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
from chatrelay.events import Answering, End, ProviderEvent, RelayEvent, Stop, TextDelta, Usage
from chatrelay.models import ModelSpec
from chatrelay.providers import ChatParams
from chatrelay.relay import Relay, RetryPolicy
from chatrelay.routing import Target

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


@dataclass
class Harness:
    """A relay with a plan of scripted models (the first is asked, the rest are fallbacks)."""

    relay: Relay
    plan: list[tuple[Target, ChatParams]]
    sleeps: Sleeps

    def stream(self) -> AsyncGenerator[RelayEvent, None]:
        return self.relay.run(self.plan)


def relay_for(
    *providers: ScriptedProvider, first_token_timeout: float = 5.0, **retry: float
) -> Harness:
    sleeps = Sleeps()
    policy = RetryPolicy(**retry)  # type: ignore[arg-type]
    relay = Relay(first_token_timeout_s=first_token_timeout, retry=policy, sleep=sleeps)
    plan = [
        (Target(ModelSpec(p.name, "mock", p.name), p), PARAMS)  # type: ignore[arg-type]
        for p in providers
    ]
    return Harness(relay, plan, sleeps)


async def run(harness: Harness) -> list[RelayEvent]:
    """The events after `Answering` (which the fallback tests check on their own)."""
    events = [event async for event in harness.stream()]
    assert type(events[0]) is Answering
    return events[1:]


OK = [Usage(5, 0), TextDelta("Hel"), TextDelta("lo"), Usage(5, 2), Stop("end_turn")]


async def test_complete_reply_yields_every_delta_in_order_then_one_end() -> None:
    events = await run(relay_for(ScriptedProvider([OK])))
    assert events[:2] == [TextDelta("Hel"), TextDelta("lo")]
    assert events[2] == End("end_turn", Usage(5, 2), None, 1)


async def test_rate_limit_before_text_is_retried_with_the_upstream_retry_after() -> None:
    provider = ScriptedProvider([[UpstreamRateLimited(retry_after=1.5)], OK])
    harness = relay_for(provider)
    events = await run(harness)
    sleeps = harness.sleeps
    assert sleeps.calls == [1.5]
    assert events[-1] == End("end_turn", Usage(5, 2), None, 2)


async def test_backoff_grows_and_is_jittered_down_by_at_most_a_quarter() -> None:
    provider = ScriptedProvider([[UpstreamOverloaded()]])
    harness = relay_for(provider, max_retries=3, base_s=1.0)
    events = await run(harness)
    sleeps = harness.sleeps
    assert provider.attempts == 4
    for got, nominal in zip(sleeps.calls, [1.0, 2.0, 4.0], strict=True):
        assert 0.75 * nominal <= got <= nominal
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamOverloaded)
    assert end.attempts == 4


async def test_retry_after_above_the_cap_fails_at_once_instead_of_sleeping_for_minutes() -> None:
    provider = ScriptedProvider([[UpstreamRateLimited(retry_after=300.0)]])
    harness = relay_for(provider, retry_after_cap_s=20.0)
    events = await run(harness)
    sleeps = harness.sleeps
    assert sleeps.calls == []
    assert provider.attempts == 1
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamRateLimited)
    assert end.error.retry_after == 300.0


async def test_errors_that_are_not_retryable_fail_on_the_first_attempt() -> None:
    provider = ScriptedProvider([[UpstreamAuthError()], OK])
    events = await run(relay_for(provider))
    assert provider.attempts == 1
    assert isinstance(events[-1], End) and isinstance(events[-1].error, UpstreamAuthError)


async def test_failure_after_text_is_never_retried() -> None:
    provider = ScriptedProvider([[TextDelta("Hel"), UpstreamOverloaded()], OK])
    harness = relay_for(provider)
    events = await run(harness)
    sleeps = harness.sleeps
    assert provider.attempts == 1 and sleeps.calls == []
    assert events[0] == TextDelta("Hel")
    assert isinstance(events[1], End) and isinstance(events[1].error, UpstreamOverloaded)
    assert provider.closed == [True]


async def test_stream_that_ends_without_its_end_marker_is_an_error() -> None:
    provider = ScriptedProvider([[TextDelta("Hel"), TextDelta("lo")]])
    events = await run(relay_for(provider))
    end = events[-1]
    assert isinstance(end, End) and isinstance(end.error, UpstreamFailed)
    assert end.stop_reason is None


async def test_empty_stream_is_an_error_too() -> None:
    events = await run(relay_for(ScriptedProvider([[Usage(3, 0)]]), max_retries=0))
    assert isinstance(events[-1], End) and isinstance(events[-1].error, UpstreamFailed)


async def test_reply_with_no_text_but_an_end_marker_is_complete() -> None:
    events = await run(relay_for(ScriptedProvider([[Usage(3, 0), Stop("end_turn")]])))
    assert events == [End("end_turn", Usage(3, 0), None, 1)]


async def test_first_token_timeout_closes_the_attempt_and_reports_upstream_timeout() -> None:
    provider = ScriptedProvider([[Usage(1, 0), 5.0, TextDelta("late"), Stop("end_turn")]])
    events = await run(relay_for(provider, first_token_timeout=0.05))
    end = events[-1]
    assert isinstance(end, End) and end.error is not None
    assert end.error.code == "upstream_timeout"
    assert provider.closed == [True]


async def test_closing_the_relay_mid_reply_closes_the_provider_stream() -> None:
    provider = ScriptedProvider([[TextDelta("a"), 5.0, TextDelta("b"), Stop("end_turn")]])
    stream = relay_for(provider).stream()
    assert type(await anext(stream)) is Answering
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()
    assert provider.closed == [True]


async def test_a_bug_in_a_provider_ends_the_stream_with_an_internal_error() -> None:
    class Broken(ScriptedProvider):
        async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
            yield TextDelta("a")
            raise KeyError("oops")

    events = await run(relay_for(Broken([[]])))
    end = events[-1]
    assert isinstance(end, End) and end.error is not None and end.error.code == "internal"
    assert "oops" not in end.error.message


@pytest.mark.parametrize("attempt", [1, 2])
def test_retry_policy_gives_up_after_max_retries(attempt: int) -> None:
    policy = RetryPolicy(max_retries=1)
    delay = policy.delay(attempt, UpstreamOverloaded(), 0.0)
    assert (delay is None) == (attempt > 1)


def named(name: str, script: list[list[Step]]) -> ScriptedProvider:
    return ScriptedProvider(script, name=name)


async def test_a_model_that_fails_before_text_falls_back_to_the_next() -> None:
    primary = named("primary", [[UpstreamOverloaded()]])
    backup = named("backup", [OK])
    events = [event async for event in relay_for(primary, backup, max_retries=1).stream()]
    answering = events[0]
    assert isinstance(answering, Answering)
    assert answering.spec.alias == "backup"
    assert answering.fallback_from == ("primary",)
    assert primary.attempts == 2  # its own retries first
    assert events[1:3] == [TextDelta("Hel"), TextDelta("lo")]
    assert isinstance(events[-1], End) and events[-1].error is None


async def test_a_first_token_timeout_falls_back_too() -> None:
    primary = named("primary", [[Usage(1, 0), 5.0, TextDelta("late"), Stop("end_turn")]])
    backup = named("backup", [OK])
    harness = relay_for(primary, backup, first_token_timeout=0.05, max_retries=0)
    events = [event async for event in harness.stream()]
    assert isinstance(events[0], Answering) and events[0].spec.alias == "backup"
    assert primary.closed == [True]


async def test_no_fallback_for_a_rejected_request_or_credentials() -> None:
    primary = named("primary", [[UpstreamAuthError()]])
    backup = named("backup", [OK])
    events = [event async for event in relay_for(primary, backup).stream()]
    assert isinstance(events[0], Answering) and events[0].spec.alias == "primary"
    assert isinstance(events[1], End) and isinstance(events[1].error, UpstreamAuthError)
    assert backup.attempts == 0


async def test_no_fallback_once_text_has_been_sent() -> None:
    primary = named("primary", [[TextDelta("Hel"), UpstreamOverloaded()]])
    backup = named("backup", [OK])
    events = [event async for event in relay_for(primary, backup).stream()]
    assert [type(e) for e in events] == [Answering, TextDelta, End]
    assert backup.attempts == 0


async def test_when_every_model_fails_the_last_error_is_reported() -> None:
    primary = named("primary", [[UpstreamOverloaded()]])
    backup = named("backup", [[UpstreamRateLimited(retry_after=1.0)]])
    harness = relay_for(primary, backup, max_retries=0)
    events = [event async for event in harness.stream()]
    assert isinstance(events[0], Answering) and events[0].fallback_from == ("primary",)
    assert isinstance(events[1], End) and isinstance(events[1].error, UpstreamRateLimited)


async def test_closing_the_job_events_between_two_closes_the_upstream() -> None:
    """The job's events are closed when whoever reads them leaves between two of them."""
    from chatrelay.chat import ChatJob

    provider = ScriptedProvider([[TextDelta("a"), TextDelta("b"), 5.0, Stop("end_turn")]])
    harness = relay_for(provider)
    job = ChatJob("s1", "scripted", None, harness.plan, harness.relay)
    events = job.events()
    assert isinstance(await anext(events), Answering)
    assert await anext(events) == TextDelta("a")
    await events.aclose()
    assert provider.closed == [True]
