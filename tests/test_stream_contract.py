"""The seed's wire contract of `POST /ai/stream/chat`, frame by frame (mock provider)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest

from .conftest import USER_HI, make_settings, serve, stream_chat


async def test_frames_follow_the_seed_contract_exactly(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        body = {"messages": USER_HI, "conversation_id": "conv-1"}
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            raw = (await response.aread()).decode()
            headers = response.headers
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    assert "content-length" not in headers
    frames = raw.split("\n\n")
    assert frames.pop() == ""
    start, *middle, end, done = frames
    stream_id = headers["x-stream-id"]
    assert start == (
        "event: start\nid: 1\ndata: "
        + json.dumps(
            {
                "stream_id": stream_id,
                "model": "mock",
                "provider": "mock",
                "conversation_id": "conv-1",
            },
            separators=(",", ":"),
        )
    )
    assert headers["x-conversation-id"] == "conv-1"
    text = ""
    for seq, content in enumerate(middle, start=2):
        lines = content.split("\n")
        assert lines[0] == f"id: {seq}"
        assert lines[1].startswith("data: ")
        payload = json.loads(lines[1][6:])
        assert list(payload) == ["content"]  # exactly that key, nothing else
        text += payload["content"]
    assert text == "Hello! This is a mock AI response to: “Hi there”. The streaming is working!"
    assert end.startswith(f"event: end\nid: {len(middle) + 2}\ndata: ")
    assert json.loads(end.split("data: ", 1)[1]) == {
        "reason": "completed",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 2, "output_tokens": len(middle)},
    }
    assert done == f"id: {len(middle) + 3}\ndata: [DONE]"


async def test_a_content_only_reader_sees_the_text_and_nothing_else(
    client: httpx.AsyncClient,
) -> None:
    """What the guide's frontend does: read `data:` lines, JSON-parse all but [DONE]."""
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(f"{url}/ai/stream/chat", json={"messages": USER_HI})
    seen, errors, done = "", [], False
    for line in response.text.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        parsed = json.loads(data)
        seen += parsed.get("content", "")
        if "error" in parsed:
            errors.append(parsed["error"])
    assert done and not errors
    assert seen.startswith("Hello! This is a mock AI response")


async def test_gzip_is_never_applied_to_the_stream(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(
            f"{url}/ai/stream/chat",
            json={"messages": USER_HI},
            headers={"accept-encoding": "gzip, br"},
        )
    assert "content-encoding" not in response.headers
    assert response.text.endswith("data: [DONE]\n\n")


async def test_mock_failure_mid_stream_ends_with_an_error_frame_then_done(
    client: httpx.AsyncClient,
) -> None:
    async with serve(make_settings(provider="mock")) as url:
        body = {
            "messages": USER_HI,
            "metadata": {"mock": {"fail_after": 3, "fail_code": "rate_limited"}},
        }
        result = await stream_chat(client, url, body)
    assert len(result.content_events) == 3
    assert result.errors == [
        {
            "error": "The AI provider is rate limiting requests. Please wait a moment and retry.",
            "code": "rate_limited",
        }
    ]
    assert result.named("end")["reason"] == "error"
    assert result.events[-1].data == "[DONE]"
    ids = [int(e.id) for e in result.events]
    assert ids == list(range(1, len(ids) + 1))


@pytest.mark.parametrize(
    "code",
    [
        "rate_limited",
        "overloaded",
        "upstream_auth",
        "invalid_request",
        "upstream_timeout",
        "upstream_error",
    ],
)
async def test_every_error_code_can_be_simulated_by_the_mock(
    client: httpx.AsyncClient, code: str
) -> None:
    async with serve(make_settings(provider="mock", max_retries=0)) as url:
        body = {"messages": USER_HI, "metadata": {"mock": {"fail_after": 0, "fail_code": code}}}
        result = await stream_chat(client, url, body)
    assert result.status == 200
    assert [e["code"] for e in result.errors] == [code]
    assert result.content_events == []
    assert result.events[-1].data == "[DONE]"


async def test_mock_long_reply_and_custom_reply(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        long = await stream_chat(
            client, url, {"messages": USER_HI, "metadata": {"mock": {"words": 500}}}
        )
        custom = await stream_chat(
            client, url, {"messages": USER_HI, "metadata": {"mock": {"reply": "one two three"}}}
        )
        capped = await stream_chat(
            client,
            url,
            {"messages": USER_HI, "max_tokens": 3, "metadata": {"mock": {"words": 50}}},
        )
    assert len(long.content_events) == 500
    assert len(long.text.split()) == 500
    assert custom.text == "one two three"
    assert len(capped.content_events) == 3
    assert capped.named("end")["stop_reason"] == "max_tokens"


async def test_mock_paces_its_reply_and_can_delay_the_first_token(
    client: httpx.AsyncClient,
) -> None:
    async with serve(make_settings(provider="mock", mock_delay_s=0.05)) as url:
        began = time.perf_counter()
        body = {"messages": USER_HI, "metadata": {"mock": {"first_token_delay_s": 0.3, "words": 5}}}
        arrivals: list[float] = []
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith('data: {"content"'):
                    arrivals.append(time.perf_counter() - began)
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.04 for gap in gaps), gaps  # one piece at a time, not one burst


async def test_heartbeat_comments_flow_while_waiting_for_the_first_token(
    client: httpx.AsyncClient,
) -> None:
    async with serve(make_settings(provider="mock", heartbeat_s=0.1)) as url:
        body = {"messages": USER_HI, "metadata": {"mock": {"first_token_delay_s": 0.55}}}
        lines: list[str] = []
        async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
            async for line in response.aiter_lines():
                lines.append(line)
    first_content = next(i for i, line in enumerate(lines) if line.startswith('data: {"content"'))
    pings_before = lines[:first_content].count(": ping")
    assert 4 <= pings_before <= 6, lines[:first_content]
    assert lines[-2:] == ["data: [DONE]", ""] or lines[-1] == "data: [DONE]"


async def test_no_heartbeat_while_text_flows(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock", heartbeat_s=0.2, mock_delay_s=0.05)) as url:
        body = {"messages": USER_HI, "metadata": {"mock": {"words": 20}}}
        response = await client.post(f"{url}/ai/stream/chat", json=body)
    assert ": ping" not in response.text


async def test_fifty_concurrent_streams_each_get_their_own_text_intact(
    client: httpx.AsyncClient,
) -> None:
    async with serve(make_settings(provider="mock", mock_delay_s=0.002)) as url:
        bodies = [
            {
                "messages": [{"role": "user", "content": f"question number {n}"}],
                "metadata": {"mock": {"words": 40}},
            }
            for n in range(50)
        ]
        results = await asyncio.gather(*(stream_chat(client, url, body) for body in bodies))
    for n, result in enumerate(results):
        assert result.status == 200
        assert len(result.content_events) == 40
        assert f"“question number {n}”" in result.text
        assert result.named("end")["reason"] == "completed"


async def test_health_answers_200(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await client.get(f"{url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert len(response.json()["instance"]) == 12
