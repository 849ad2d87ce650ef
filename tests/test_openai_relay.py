"""`POST /ai/stream/chat` relaying an OpenAI-compatible upstream (OpenAI, Ollama, vLLM) through
the real `openai` SDK, from a loopback fake: the OpenAI twin of test_anthropic_relay.py."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from chatrelay.logs import JSONFormatter
from chatrelay.models import PLACEHOLDER_KEY
from chatrelay.providers import openai as openai_provider
from chatrelay.settings import Settings

from .conftest import USER_HI, StreamResult, make_settings, serve, stream_chat
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario

SECRET_KEY = "sk-test-secret"
MODEL = "llama3.2"
STYLES = ["openai", "ollama", "vllm"]
# Text that breaks naive relays: SSE syntax, JSON escapes, line ends, markup, non-BMP chars.
TRICKY = [
    "Hel",
    "lo, ",
    'wor"ld\\',
    "\n\n",
    "data: [DONE]\r\n\r\n",
    "[DONE]",
    "</script><b>",
    "caf\u00e9 \u2028\u2029 \u00a0",
    "\U0001f642\U0001f469\u200d\U0001f4bb",
    "  ",
    "0",
    '{"content": "x"}',
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def settings_for(fake: FakeOpenAI, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "provider": "openai",
        "openai_base_url": fake.base_url,
        "model": MODEL,
        "retry_base_s": 0.01,
    }
    base.update(values)
    return make_settings(**base)


async def relay(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    body: dict[str, Any] | None = None,
    **values: Any,
) -> StreamResult:
    async with serve(settings_for(fake, **values)) as url:
        return await stream_chat(client, url, body or {"messages": USER_HI})


async def relay_each(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    scenarios: list[OpenAIScenario],
    body: dict[str, Any] | None = None,
    **values: Any,
) -> list[StreamResult]:
    """One request per scenario, in order, on one server (one per style keeps tests fast)."""
    fake.enqueue(*scenarios)
    async with serve(settings_for(fake, **values)) as url:
        return [await stream_chat(client, url, body or {"messages": USER_HI}) for _ in scenarios]


def contents(result: StreamResult) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in result.content_events]


def assert_ends_with_error(result: StreamResult, code: str) -> dict[str, Any]:
    """Exactly one error frame with `code`, then `end` (reason error), then [DONE]."""
    assert result.status == 200
    [error] = result.errors
    assert error["code"] == code
    names = [e.event for e in result.events]
    assert names[-2] == "end"
    assert result.named("end")["reason"] == "error"
    assert result.named("end")["stop_reason"] is None
    assert result.events[-1].data == "[DONE]"
    # The error frame comes after every content frame and right before `end`.
    assert result.events[-3].data.startswith('{"error"')
    return error


# -------------------------------------------------------------------------- the reply itself


async def test_each_upstream_delta_becomes_one_content_frame_in_order(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    scenarios = [OpenAIScenario(deltas=TRICKY, style=s, prompt_tokens=17) for s in STYLES]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert contents(result) == [{"content": d} for d in TRICKY], style
        assert result.text == "".join(TRICKY), style
        start = result.named("start")
        assert start["provider"] == "openai" and start["model"] == MODEL, style
        assert "warnings" not in start, style
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 17, "output_tokens": len(TRICKY)},
        }, style
        assert result.errors == [], style
        assert [e.event for e in result.events if e.event != "message"] == ["start", "end"]
        assert result.events[-1].data == "[DONE]", style
    assert [r.outcome for r in fake.requests] == ["complete"] * 3


async def test_finish_reason_length_becomes_stop_reason_max_tokens(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    scenarios = [
        OpenAIScenario(
            deltas=["cut ", "off"], finish_reason="length", style=s, completion_tokens=64
        )
        for s in STYLES
    ]
    body = {"messages": USER_HI, "max_tokens": 64}
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios, body), strict=True):
        assert result.text == "cut off", style
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 10, "output_tokens": 64},
        }, style


async def test_a_reply_without_a_usage_chunk_still_completes_with_null_usage(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    scenarios = [
        OpenAIScenario(deltas=["no ", "usage"], style=s, usage_when_asked=False) for s in STYLES
    ]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert result.text == "no usage" and result.errors == [], style
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "end_turn",
            "usage": {"input_tokens": None, "output_tokens": None},
        }, style


# -------------------------------------------------------------------------- the request sent


async def test_the_upstream_gets_the_request_in_the_chat_completions_shape(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "more"}],
        },
    ]
    body = {
        "messages": messages,
        "system": "Be brief.",
        "max_tokens": 300,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["\n\nHuman:", "END"],
    }
    result = await relay(client, fake, body)
    assert result.named("end")["reason"] == "completed"
    [request] = fake.requests
    assert request.method == "POST"
    assert request.path.endswith("/chat/completions")
    assert request.path == "/v1/chat/completions"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me more"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        # A custom base URL is a local server: max_tokens, not max_completion_tokens.
        "max_tokens": 300,
        # top_p chosen by the client: no default temperature alongside it.
        "top_p": 0.9,
        "top_k": 40,  # a local server takes top_k as an extension
        "stop": ["\n\nHuman:", "END"],
    }


async def test_a_system_given_as_text_blocks_becomes_one_system_message(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    body = {
        "messages": USER_HI,
        "system": [{"type": "text", "text": "You are "}, {"type": "text", "text": "terse."}],
    }
    await relay(client, fake, body)
    sent = fake.requests[0].body["messages"]
    assert sent == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi there"},
    ]


async def test_defaults_max_tokens_2048_and_temperature_0_7(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    await relay(client, fake)
    sent = fake.requests[0].body
    assert sent["max_tokens"] == 2048
    assert "max_completion_tokens" not in sent
    assert sent["temperature"] == 0.7
    assert sent["messages"] == [{"role": "user", "content": "Hi there"}]
    assert "stop" not in sent and "top_p" not in sent


async def test_a_temperature_above_1_is_accepted_for_a_non_claude_model(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    result = await relay(client, fake, {"messages": USER_HI, "temperature": 1.5})
    assert result.status == 200
    assert fake.requests[0].body["temperature"] == 1.5
    assert "warnings" not in result.named("start")
    assert result.named("end")["reason"] == "completed"


async def test_without_openai_api_key_a_local_server_gets_a_placeholder_key(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    result = await relay(client, fake)
    assert result.named("end")["reason"] == "completed"
    headers = fake.requests[0].headers
    assert headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}"
    assert PLACEHOLDER_KEY  # the SDK refuses an empty key


async def test_the_configured_openai_api_key_is_sent_as_bearer(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    await relay(client, fake, openai_api_key=SECRET_KEY)
    assert fake.requests[0].headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert fake.requests[0].api_key == SECRET_KEY


# -------------------------------------------------------------------------- honest ends


async def test_a_stream_cut_before_its_finish_reason_is_an_error_not_a_clean_end(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    scenarios = [
        OpenAIScenario(deltas=["a", "b", "c", "d"], truncate_after=2, style=s) for s in STYLES
    ]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert result.text == "ab", style
        assert_ends_with_error(result, "upstream_error")
    # Text had been sent: nothing was retried (one request per style).
    assert [r.outcome for r in fake.requests] == ["truncated"] * 3


async def test_done_without_a_finish_reason_is_an_error_not_a_clean_end(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    scenarios = [
        OpenAIScenario(deltas=["a", "b"], done_without_finish=True, style=s) for s in STYLES
    ]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert result.text == "ab", style
        assert_ends_with_error(result, "upstream_error")
    assert [r.outcome for r in fake.requests] == ["no_finish"] * 3


async def test_finish_reason_and_usage_without_done_is_a_complete_reply(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    # The provider's docstring: only a stream *without a finish_reason* is an error. Here the
    # finish_reason and the usage arrived, only the [DONE] line is missing.
    assert "A stream without a `finish_reason` is an error" in (openai_provider.__doc__ or "")
    scenarios = [
        OpenAIScenario(deltas=["a", "b"], no_done=True, style=s, prompt_tokens=4) for s in STYLES
    ]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert result.text == "ab" and result.errors == [], style
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 4, "output_tokens": 2},
        }, style
    assert [r.outcome for r in fake.requests] == ["no_done"] * 3


# -------------------------------------------------------------------------- failures


ERRORS = [
    # (id, scenario, code, attempts, content frames before the error)
    ("429", OpenAIScenario(status=429, retry_after_ms="5"), "rate_limited", 3, 0),
    ("503", OpenAIScenario(status=503, retry_after_ms="5"), "overloaded", 3, 0),
    ("500", OpenAIScenario(status=500, retry_after_ms="5"), "upstream_error", 3, 0),
    ("401", OpenAIScenario(status=401), "upstream_auth", 1, 0),
    ("403", OpenAIScenario(status=403), "upstream_auth", 1, 0),
    ("400", OpenAIScenario(status=400), "invalid_request", 1, 0),
    ("404", OpenAIScenario(status=404), "invalid_request", 1, 0),
    (
        "vllm error frame",
        OpenAIScenario(deltas=["a", "b", "c"], style="vllm", error_frame_after=2),
        "invalid_request",
        1,
        2,
    ),
    ("truncated before text", OpenAIScenario(truncate_after=0), "upstream_error", 3, 0),
    (
        "connection dropped",
        OpenAIScenario(deltas=["a", "b", "c"], drop_after=2),
        "upstream_error",
        1,
        2,
    ),
]


@pytest.mark.parametrize(
    ("scenario", "code", "attempts", "before"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
async def test_upstream_failure_becomes_an_error_frame_with_its_code(
    client: httpx.AsyncClient,
    fake: FakeOpenAI,
    scenario: OpenAIScenario,
    code: str,
    attempts: int,
    before: int,
) -> None:
    fake.default = scenario
    result = await relay(client, fake, openai_api_key=SECRET_KEY)
    assert len(result.content_events) == before
    error = assert_ends_with_error(result, code)
    assert SECRET_KEY not in json.dumps([e.data for e in result.events])
    assert len(fake.requests) == attempts
    assert error["code"] == code


async def test_a_vllm_error_frame_shows_the_upstream_message_after_the_text(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.enqueue(
        OpenAIScenario(
            deltas=["one ", "two ", "three"],
            style="vllm",
            error_frame_after=2,
            error_message="This model's maximum context length is 4096 tokens.",
        )
    )
    result = await relay(client, fake)
    assert contents(result) == [{"content": "one "}, {"content": "two "}]
    error = assert_ends_with_error(result, "invalid_request")
    assert error == {
        "error": (
            "The AI provider rejected the request: "
            "This model's maximum context length is 4096 tokens."
        ),
        "code": "invalid_request",
    }
    assert fake.requests[0].outcome == "error_frame"


async def test_upstream_rejection_text_is_shown_because_it_is_about_the_request(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.default = OpenAIScenario(status=400, error_message="model 'llama3.2' not found")
    result = await relay(client, fake)
    assert result.errors == [
        {
            "error": "The AI provider rejected the request: model 'llama3.2' not found",
            "code": "invalid_request",
        }
    ]


async def test_a_rate_limit_is_retried_then_reported_with_its_retry_hint(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.default = OpenAIScenario(status=429, retry_after_ms="5", error_message="slow down")
    result = await relay(client, fake)
    assert len(fake.requests) == 3  # the first try and max_retries=2
    assert result.errors == [
        {
            "error": "The AI provider is rate limiting requests. Please wait a moment and retry.",
            "code": "rate_limited",
            "retry_after": 0.005,
        }
    ]
    assert "slow down" not in json.dumps(result.errors)


async def test_a_retry_after_success_streams_the_reply_once(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.enqueue(
        OpenAIScenario(status=429, retry_after_ms="150"), OpenAIScenario(deltas=["on", "ce"])
    )
    result = await relay(client, fake)
    assert contents(result) == [{"content": "on"}, {"content": "ce"}]
    assert result.errors == [] and result.named("end")["reason"] == "completed"
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.15  # the upstream's retry-after-ms


async def test_nothing_is_retried_once_text_has_been_sent(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.enqueue(OpenAIScenario(deltas=["a", "b", "c"], drop_after=1), OpenAIScenario(deltas=["x"]))
    result = await relay(client, fake)
    assert result.text == "a"
    assert [e["code"] for e in result.errors] == ["upstream_error"]
    assert len(fake.requests) == 1


async def test_the_key_never_appears_in_logs_or_frames(
    client: httpx.AsyncClient, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # Some OpenAI-compatible servers echo the key they refuse.
    caplog.set_level(logging.DEBUG)
    fake.enqueue(
        OpenAIScenario(status=401, error_message=f"Incorrect API key provided: {SECRET_KEY}"),
        OpenAIScenario(),
    )
    async with serve(settings_for(fake, openai_api_key=SECRET_KEY)) as url:
        failed = await stream_chat(client, url, {"messages": USER_HI})
        succeeded = await stream_chat(client, url, {"messages": USER_HI})
    assert failed.errors == [
        {
            "error": "The server's AI provider credentials were rejected. Contact the operator.",
            "code": "upstream_auth",
        }
    ]
    assert len(fake.requests) == 2  # 401 is not retried; the second is the next request
    assert succeeded.named("end")["reason"] == "completed"
    assert SECRET_KEY not in json.dumps([e.data for e in failed.events + succeeded.events])
    # The log lines as the server writes them (JSON off a terminal), with their fields.
    logged = "\n".join(JSONFormatter().format(record) for record in caplog.records)
    assert '"outcome":"error"' in logged  # the log did record the failed stream
    assert SECRET_KEY not in logged


async def test_an_unreachable_upstream_is_upstream_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(
        provider="openai",
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        model=MODEL,
        retry_base_s=0.01,
    )
    async with serve(settings) as url:
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert_ends_with_error(result, "upstream_error")


async def test_a_slow_first_token_past_the_timeout_is_upstream_timeout(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.default = OpenAIScenario(first_token_delay=3.0)
    began = time.monotonic()
    result = await relay(client, fake, first_token_timeout_s=0.3)
    assert 0.3 <= time.monotonic() - began < 2.5
    assert_ends_with_error(result, "upstream_timeout")
    assert await fake.requests[0].wait_closed(1.0)


async def test_a_stalled_stream_is_upstream_timeout_with_heartbeats_meanwhile(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    fake.default = OpenAIScenario(deltas=["a", "b", "c"], stall_after=1)
    settings = settings_for(fake, read_timeout_s=0.5, first_token_timeout_s=0.5, heartbeat_s=0.1)
    async with serve(settings) as url:
        body = {"messages": USER_HI}
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            lines = [line async for line in response.aiter_lines()]
    after_text = lines[lines.index('data: {"content":"a"}') :]
    assert after_text.count(": ping") >= 3
    error = next(line for line in lines if line.startswith('data: {"error"'))
    assert json.loads(error[6:])["code"] == "upstream_timeout"
    assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"


# -------------------------------------------------------------------------- reasoning


async def test_reasoning_arrives_as_thinking_frames_before_the_content_when_asked(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    reasoning = ["Let me ", 'think: "2+2"\n', "is 4 \U0001f914"]
    scenarios = [
        OpenAIScenario(deltas=["It is ", "4."], reasoning=reasoning, style=s) for s in STYLES
    ]
    body = {"messages": USER_HI, "thinking": True}
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios, body), strict=True):
        thinking = [json.loads(e.data) for e in result.events if e.event == "thinking"]
        assert thinking == [{"thinking": r} for r in reasoning], style
        kinds = [e.event for e in result.events if e.event in ("thinking", "message")]
        assert kinds[: len(reasoning)] == ["thinking"] * len(reasoning), style
        assert contents(result) == [{"content": "It is "}, {"content": "4."}], style
        assert result.named("end")["reason"] == "completed", style


async def test_reasoning_is_not_shown_when_not_asked(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    reasoning = ["secret ", "chain of thought"]
    scenarios = [
        OpenAIScenario(deltas=["It is ", "4."], reasoning=reasoning, style=s) for s in STYLES
    ]
    for style, result in zip(STYLES, await relay_each(client, fake, scenarios), strict=True):
        assert [e for e in result.events if e.event == "thinking"] == [], style
        assert contents(result) == [{"content": "It is "}, {"content": "4."}], style
        assert "chain of thought" not in json.dumps([e.data for e in result.events]), style
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 2},
        }, style


# -------------------------------------------------------------------------- disconnects


async def close_after(
    client: httpx.AsyncClient, url: str, fake: FakeOpenAI, content_frames: int
) -> float:
    """Read until `content_frames` content frames arrived, then drop the connection."""
    seen = 0
    async with client.stream(
        "POST", f"{url}/ai/stream/chat", json={"messages": USER_HI}
    ) as response:
        if content_frames == 0:  # headers only: the upstream is waiting to send a token
            await fake.wait_for_requests(1)
            await asyncio.sleep(0.05)
            return time.monotonic()
        async for line in response.aiter_lines():
            if line.startswith('data: {"content"'):
                seen += 1
                if seen == content_frames:
                    break
        closed_at = time.monotonic()
    return closed_at


@pytest.mark.parametrize(
    ("scenario", "frames"),
    [
        (OpenAIScenario(deltas=["x"] * 5, stall_after=2), 2),  # upstream silent, relay waiting
        (OpenAIScenario(deltas=["x"] * 2000, interval=0.005), 5),  # upstream busily streaming
        (OpenAIScenario(first_token_delay=10.0), 0),  # still waiting for the first token
    ],
    ids=["stalled", "streaming", "before-first-token"],
)
async def test_client_disconnect_closes_the_upstream_within_100ms(
    client: httpx.AsyncClient, fake: FakeOpenAI, scenario: OpenAIScenario, frames: int
) -> None:
    fake.default = scenario
    async with serve(settings_for(fake, resume_grace_s=0)) as url:
        closed_at = await close_after(client, url, fake, frames)
        [request] = fake.requests
        assert await request.wait_closed(2.0)
    assert request.outcome == "client_gone"
    assert request.disconnected_at is not None
    assert request.disconnected_at - closed_at < 0.1
    if frames:
        assert request.deltas_sent < 1000  # generation stopped, not drained


# -------------------------------------------------------------------------- concurrency


async def test_thirty_concurrent_streams_each_get_their_own_text_intact(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    replies = [[f"s{n}-{i} \u00e9\U0001f642 " for i in range(20)] for n in range(30)]
    fake.enqueue(
        *(
            OpenAIScenario(deltas=reply, interval=0.002, style=STYLES[n % 3])
            for n, reply in enumerate(replies)
        )
    )
    async with serve(settings_for(fake)) as url:
        results = await asyncio.gather(
            *(stream_chat(client, url, {"messages": USER_HI}) for _ in replies)
        )
    by_stream = {r.text.split("-", 1)[0]: r for r in results}
    assert len(by_stream) == 30
    for n, reply in enumerate(replies):
        result = by_stream[f"s{n}"]
        assert contents(result) == [{"content": d} for d in reply]
        assert result.named("end") == {
            "reason": "completed",
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 20},
        }


async def test_consecutive_streams_reuse_one_upstream_connection(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    """A reply read to its [DONE] hands its connection back to the pool."""
    results = await relay_each(client, fake, [OpenAIScenario(deltas=[f"r{n}"]) for n in range(4)])
    assert [r.text for r in results] == [f"r{n}" for n in range(4)]
    assert fake.connections_opened == 1
