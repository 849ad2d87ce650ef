"""`POST /ai/stream/chat` relaying the real `anthropic` SDK's stream from a loopback fake."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from chatrelay import catalog
from chatrelay.logs import JSONFormatter
from chatrelay.settings import Settings

from .conftest import USER_HI, StreamResult, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario

SECRET_KEY = "sk-ant-test-0123456789-SECRET"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


def settings_for(fake: FakeAnthropic, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "provider": "anthropic",
        "anthropic_api_key": SECRET_KEY,
        "anthropic_base_url": fake.base_url,
        "retry_base_s": 0.01,
    }
    base.update(values)
    return make_settings(**base)


async def relay(
    client: httpx.AsyncClient,
    fake: FakeAnthropic,
    body: dict[str, Any] | None = None,
    **values: Any,
) -> StreamResult:
    async with serve(settings_for(fake, **values)) as url:
        return await stream_chat(client, url, body or {"messages": USER_HI})


async def test_each_upstream_delta_becomes_one_content_frame_in_order(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    deltas = ["Hel", "lo, ", "wor", "ld! ✓ ", '\n\n"quoted" </script>', "🙂"]
    fake.enqueue(Scenario(deltas=deltas, input_tokens=12, ping_every=2))
    result = await relay(client, fake)
    assert [json.loads(e.data) for e in result.content_events] == [{"content": d} for d in deltas]
    start = result.named("start")
    assert start["provider"] == "anthropic" and start["model"] == "claude-sonnet-5-5"
    assert result.named("end") == {
        "reason": "completed",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": len(deltas)},
    }
    assert result.events[-1].data == "[DONE]"


async def test_the_upstream_gets_the_request_in_the_messages_api_shape(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me more"}]},
    ]
    body = {"messages": messages, "system": "Be brief.", "max_tokens": 300}
    await relay(client, fake, body)
    [request] = fake.requests
    assert request.path == "/v1/messages"
    assert request.api_key == SECRET_KEY
    assert request.headers["authorization"] == f"Bearer {SECRET_KEY}"  # as the SDK sends it
    assert request.headers["content-type"] == "application/json"
    assert request.headers["anthropic-version"]  # the SDK's, whichever it is
    assert request.body == {
        "model": "claude-sonnet-5-5",
        "max_tokens": 300,
        "messages": messages,
        "system": "Be brief.",
        "stream": True,
    }


async def test_max_tokens_defaults_to_2048(client: httpx.AsyncClient, fake: FakeAnthropic) -> None:
    await relay(client, fake, {"messages": USER_HI}, model="claude-haiku-4-5")
    assert fake.requests[0].body["max_tokens"] == 2048
    assert fake.requests[0].body["model"] == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("model", "policy", "asked", "sent"),
    [
        ("claude-sonnet-4-6", "auto", None, 0.7),  # the guide's default, where accepted
        ("claude-sonnet-4-6", "auto", 0.2, 0.2),
        ("claude-opus-4-7", "auto", 0.2, None),  # newer models answer 400 to temperature
        ("claude-sonnet-5-5", "auto", None, None),
        ("claude-sonnet-5-5", "always", 0.3, 0.3),
        ("claude-sonnet-4-6", "never", 0.3, None),
    ],
)
async def test_temperature_reaches_only_models_that_accept_it(
    client: httpx.AsyncClient,
    fake: FakeAnthropic,
    model: str,
    policy: str,
    asked: float | None,
    sent: float | None,
) -> None:
    body: dict[str, Any] = {"messages": USER_HI}
    if asked is not None:
        body["temperature"] = asked
    result = await relay(client, fake, body, send_temperature=policy, model=model)
    assert fake.requests[0].body.get("temperature") == sent
    warned = result.named("start").get("warnings", [])
    if asked is not None and sent is None:
        assert warned == [f"temperature is not accepted by {model} and was not sent"]
    else:
        assert warned == []
    assert result.named("end")["reason"] == "completed"


@pytest.mark.parametrize("model", ["claude-sonnet-4-6", "claude-sonnet-5-5"])
@pytest.mark.parametrize("path", ["/ai/stream/chat", "/ai/chat"])
async def test_a_temperature_above_1_is_refused_for_a_claude_model_naming_it(
    client: httpx.AsyncClient, fake: FakeAnthropic, model: str, path: str
) -> None:
    body = {"messages": USER_HI, "temperature": 1.5}
    async with serve(settings_for(fake, model=model)) as url:
        refused = await client.post(f"{url}{path}", json=body)
        mock = await client.post(f"{url}{path}", json={**body, "model": "mock"})
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["error"]["fields"]
    assert problem == {
        "field": "temperature",
        "message": f"must be at most 1 for model {model!r}: Claude models take 0 to 1",
    }
    assert fake.requests == []
    assert mock.status_code == 200  # 0 to 2 on the wire: other models take up to 2


async def test_a_temperature_of_1_reaches_a_claude_model(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    body = {"messages": USER_HI, "temperature": 1}
    result = await relay(client, fake, body, model="claude-sonnet-4-6")
    assert result.named("end")["reason"] == "completed"
    assert fake.requests[0].body["temperature"] == 1


@pytest.mark.parametrize("model", ["claude-opus-4-5", "claude-sonnet-4-5-20250929"])
async def test_a_deprecated_or_retired_model_still_streams_and_the_client_is_told(
    client: httpx.AsyncClient, fake: FakeAnthropic, model: str
) -> None:
    result = await relay(client, fake, {"messages": USER_HI}, model=model)
    end_of_life = catalog.retires_on("anthropic", model)
    assert end_of_life is not None
    today = datetime.now(UTC).date()
    assert result.named("start")["warnings"] == [
        catalog.lifecycle_warning("anthropic", model, today)
    ]
    assert end_of_life.isoformat() in result.named("start")["warnings"][0]
    assert result.text == "Hello, world!"


async def test_a_current_model_carries_no_lifecycle_warning(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    result = await relay(client, fake, {"messages": USER_HI}, model="claude-sonnet-5-5")
    assert "warnings" not in result.named("start")


ERRORS = [
    # (id, scenario, code, attempts, content frames before the error)
    ("429", Scenario(status=429, retry_after_ms="5"), "rate_limited", 3, 0),
    ("529", Scenario(status=529, retry_after_ms="5"), "overloaded", 3, 0),
    ("503", Scenario(status=503, retry_after_ms="5"), "overloaded", 3, 0),
    ("500", Scenario(status=500, retry_after_ms="5"), "upstream_error", 3, 0),
    ("401", Scenario(status=401), "upstream_auth", 1, 0),
    ("403", Scenario(status=403), "upstream_auth", 1, 0),
    ("400", Scenario(status=400, error_message="prompt is too long"), "invalid_request", 1, 0),
    ("404", Scenario(status=404, error_message="model: nope"), "invalid_request", 1, 0),
    ("error event mid-stream", Scenario(error_event_after=2), "overloaded", 1, 2),
    (
        "rate limit event mid-stream",
        Scenario(error_event_after=1, error_type="rate_limit_error"),
        "rate_limited",
        1,
        1,
    ),
    ("error event before text", Scenario(error_event_after=0), "overloaded", 3, 0),
    ("truncated", Scenario(truncate_after=2), "upstream_error", 1, 2),
    ("connection dropped", Scenario(drop_after=2), "upstream_error", 1, 2),
]


@pytest.mark.parametrize(
    ("scenario", "code", "attempts", "before"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
async def test_upstream_failure_becomes_an_error_frame_with_its_code(
    client: httpx.AsyncClient,
    fake: FakeAnthropic,
    scenario: Scenario,
    code: str,
    attempts: int,
    before: int,
) -> None:
    fake.default = scenario
    result = await relay(client, fake)
    assert result.status == 200
    assert len(result.content_events) == before
    [error] = result.errors
    assert error["code"] == code
    assert SECRET_KEY not in json.dumps(error)
    assert len(fake.requests) == attempts
    assert result.named("end")["reason"] == "error"
    assert [e.data for e in result.events[-1:]] == ["[DONE]"]


async def test_upstream_rejection_text_is_shown_because_it_is_about_the_request(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.default = Scenario(status=400, error_message="prompt is too long: 250000 tokens")
    result = await relay(client, fake)
    assert result.errors[0]["error"] == (
        "The AI provider rejected the request: prompt is too long: 250000 tokens"
    )


async def test_a_retry_after_success_streams_the_reply_once(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.enqueue(Scenario(status=529, retry_after_ms="200"), Scenario(deltas=["once"]))
    result = await relay(client, fake)
    assert result.text == "once" and result.errors == []
    first, second = fake.requests
    assert second.received_at - first.received_at >= 0.2  # the upstream's retry-after-ms


async def test_a_retry_after_beyond_the_cap_fails_at_once_and_tells_the_client(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.default = Scenario(status=429, retry_after="300")
    began = time.monotonic()
    result = await relay(client, fake, retry_after_cap_s=20)
    assert time.monotonic() - began < 5
    assert len(fake.requests) == 1
    assert result.errors == [
        {
            "error": "The AI provider is rate limiting requests. Please wait a moment and retry.",
            "code": "rate_limited",
            "retry_after": 300,
        }
    ]


async def test_nothing_is_retried_once_text_has_been_sent(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.enqueue(Scenario(deltas=["a", "b", "c"], drop_after=1), Scenario(deltas=["x"]))
    result = await relay(client, fake)
    assert result.text == "a"
    assert len(fake.requests) == 1


@pytest.mark.parametrize("transport", ["relay", "httpx"])
async def test_a_refused_connection_ends_the_stream_with_upstream_error(
    client: httpx.AsyncClient, transport: str
) -> None:
    """No network is not a timeout: a refused connection fails at once, as `upstream_error`
    (the README's table), after its retries, in an error frame before `end` and `[DONE]`."""
    with socket.socket() as closed:  # bound, never listening: connections to it are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        settings = make_settings(
            provider="anthropic",
            anthropic_api_key=SECRET_KEY,
            anthropic_base_url=f"http://127.0.0.1:{port}",
            upstream_transport=transport,
            retry_base_s=0.01,
        )
        began = time.monotonic()
        async with serve(settings) as url:
            result = await stream_chat(client, url, {"messages": USER_HI})
            whole = await client.post(f"{url}/ai/chat", json={"messages": USER_HI})
    assert time.monotonic() - began < 5
    assert result.status == 200
    assert result.errors == [
        {"error": "The AI provider failed to answer. Please try again.", "code": "upstream_error"}
    ]
    error_frame, end, done = result.events[-3:]
    assert error_frame.data.startswith('{"error"') and end.event == "end" and done.data == "[DONE]"
    assert result.named("end")["reason"] == "error"
    assert whole.status_code == 502
    assert whole.json()["error"]["code"] == "upstream_error"


async def test_a_slow_first_token_past_the_timeout_is_upstream_timeout(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.default = Scenario(first_token_delay=3.0)
    began = time.monotonic()
    result = await relay(client, fake, first_token_timeout_s=0.3)
    assert 0.3 <= time.monotonic() - began < 2.5
    assert [e["code"] for e in result.errors] == ["upstream_timeout"]
    assert await fake.requests[0].wait_closed(1.0)


async def test_a_stalled_stream_is_upstream_timeout_with_heartbeats_meanwhile(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    fake.default = Scenario(deltas=["a", "b", "c"], stall_after=1)
    settings = settings_for(fake, read_timeout_s=0.6, first_token_timeout_s=0.6, heartbeat_s=0.1)
    lines: list[str] = []
    async with serve(settings) as url:
        body = {"messages": USER_HI}
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            lines = [line async for line in response.aiter_lines()]
    after_text = lines[lines.index('data: {"content":"a"}') :]
    assert after_text.count(": ping") >= 3
    error = next(line for line in lines if line.startswith('data: {"error"'))
    assert json.loads(error[6:])["code"] == "upstream_timeout"


async def test_an_unreachable_upstream_is_upstream_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key=SECRET_KEY,
        anthropic_base_url=f"http://127.0.0.1:{port}",
        retry_base_s=0.01,
    )
    async with serve(settings) as url:
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert [e["code"] for e in result.errors] == ["upstream_error"]


async def test_the_key_never_appears_in_logs_or_frames(
    client: httpx.AsyncClient, fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.enqueue(Scenario(status=401, error_message=f"invalid x-api-key {SECRET_KEY}"), Scenario())
    async with serve(settings_for(fake)) as url:
        failed = await stream_chat(client, url, {"messages": USER_HI})
        succeeded = await stream_chat(client, url, {"messages": USER_HI})
    assert failed.errors[0]["code"] == "upstream_auth"
    assert succeeded.named("end")["reason"] == "completed"
    # Every field of every log line, as the server's own formatter writes them.
    lines = "\n".join(JSONFormatter().format(record) for record in caplog.records)
    everything = lines + json.dumps([e.data for e in failed.events + succeeded.events])
    assert "stream" in caplog.text  # the log did record the streams
    assert SECRET_KEY not in everything
    assert "0123456789" not in everything


async def close_after(
    client: httpx.AsyncClient, url: str, fake: FakeAnthropic, content_frames: int
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
        (Scenario(deltas=["x"] * 5, stall_after=2), 2),  # upstream silent, relay waiting
        (Scenario(deltas=["x"] * 2000, interval=0.005), 5),  # upstream busily streaming
        (Scenario(first_token_delay=10.0), 0),  # still waiting for the first token
    ],
    ids=["stalled", "streaming", "before-first-token"],
)
async def test_client_disconnect_closes_the_upstream_within_100ms(
    client: httpx.AsyncClient, fake: FakeAnthropic, scenario: Scenario, frames: int
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


async def test_fifty_concurrent_streams_each_get_every_delta_in_order(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    replies = [[f"s{n}-{i} " for i in range(30)] for n in range(50)]
    fake.enqueue(*(Scenario(deltas=reply, interval=0.002) for reply in replies))
    async with serve(settings_for(fake)) as url:
        results = await asyncio.gather(
            *(stream_chat(client, url, {"messages": USER_HI}) for _ in replies)
        )
    texts = sorted(result.text for result in results)
    assert texts == sorted("".join(reply) for reply in replies)
    assert all(r.named("end")["reason"] == "completed" for r in results)
    assert all(len(r.content_events) == 30 for r in results)


async def test_consecutive_streams_reuse_one_upstream_connection(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    """A finished reply hands its connection back: no new TCP handshake per stream."""
    fake.enqueue(*(Scenario(deltas=[f"reply {n}"]) for n in range(5)))
    async with serve(settings_for(fake)) as url:
        results = [await stream_chat(client, url, {"messages": USER_HI}) for _ in range(5)]
    assert [r.text for r in results] == [f"reply {n}" for n in range(5)]
    assert fake.connections_opened == 1
    assert len({request.connection_id for request in fake.requests}) == 1


async def test_a_reply_cut_by_the_client_does_not_leave_its_connection_for_reuse(
    client: httpx.AsyncClient, fake: FakeAnthropic
) -> None:
    """A connection whose response was abandoned mid-body is closed, never handed to the next
    stream (which would read the old reply's leftovers)."""
    fake.enqueue(Scenario(deltas=["a "] * 200, interval=0.01), Scenario(deltas=["second"]))
    async with serve(settings_for(fake)) as url:
        async with client.stream("POST", f"{url}/ai/stream/chat", json={"messages": USER_HI}) as r:
            async for line in r.aiter_lines():
                if line.startswith('data: {"content"'):
                    break
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert result.text == "second"
    first, second = fake.requests
    assert first.outcome == "client_gone"
    assert first.connection_id != second.connection_id


@pytest.mark.parametrize("transport", ["relay", "httpx"])
async def test_both_upstream_transports_relay_the_same_stream(
    client: httpx.AsyncClient, fake: FakeAnthropic, transport: str
) -> None:
    """CHATRELAY_UPSTREAM_TRANSPORT=httpx (the SDK's own transport) streams exactly like the
    default one: same frames, same usage, a disconnect still closes the upstream."""
    deltas = ["Hel", "lo ", "🙂"]
    fake.enqueue(Scenario(deltas=deltas, input_tokens=3))
    result = await relay(client, fake, upstream_transport=transport)
    assert [json.loads(e.data) for e in result.content_events] == [{"content": d} for d in deltas]
    assert result.named("end")["usage"] == {"input_tokens": 3, "output_tokens": 3}


def test_a_configured_proxy_selects_the_sdks_own_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """chatrelay's transport speaks no proxies: with HTTPS_PROXY set, the SDK's is used."""
    import anthropic

    from chatrelay.providers.sdk import ClientOptions
    from chatrelay.providers.transport import RelayTransport

    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)

    def options() -> ClientOptions:  # as create_provider builds them
        proxied = make_settings().proxy_configured()
        return ClientOptions(connect_timeout=1, read_timeout=1, max_connections=5, proxied=proxied)

    default = options().sdk_kwargs(anthropic.DefaultAsyncHttpxClient)["http_client"]
    assert isinstance(default._transport, RelayTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    proxied = options().sdk_kwargs(anthropic.DefaultAsyncHttpxClient)["http_client"]
    assert not isinstance(proxied._transport, RelayTransport)
