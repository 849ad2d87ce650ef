"""Streams that outlive their connection: resume, grace, Stop, idempotency and drain, on the
memory backend (one instance) and on real Redis (two instances sharing it)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse

from chatrelay.settings import Settings

from .conftest import REDIS_URL, error_of, make_settings, redis_prefix, serve, serve_app
from .fakes.anthropic_upstream import FakeAnthropic, Scenario

LONG = {"messages": [{"role": "user", "content": "go"}], "metadata": {"mock": {"words": 40}}}


@dataclass
class Cluster:
    """`a` takes the POSTs; `b` is another instance (the same one with the memory backend)."""

    a: str
    b: str
    backend: str


@pytest.fixture(params=["memory", "redis"])
async def cluster_factory(
    request: pytest.FixtureRequest, tmp_path: Any
) -> AsyncIterator[Callable[..., Any]]:
    """Start a cluster for the given settings; everything is torn down after the test."""
    async with AsyncExitStack() as stack:
        extra: dict[str, Any] = {"database_url": f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"}
        if request.param == "redis":
            prefix = await stack.enter_async_context(redis_prefix())
            extra |= {"redis_url": REDIS_URL, "redis_prefix": prefix}

        async def start(**values: Any) -> Cluster:
            settings: Settings = make_settings(**(extra | values))
            a = await stack.enter_async_context(serve(settings))
            b = a
            if request.param == "redis":
                b = await stack.enter_async_context(serve(make_settings(**(extra | values))))
            return Cluster(a, b, request.param)

        yield start


async def events_of(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    from httpx_sse import EventSource

    async for event in EventSource(response).aiter_sse():
        yield event


def content(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["content"] for e in events if e.data.startswith('{"content"'))


async def read_some(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], frames: int, **kw: Any
) -> tuple[httpx.Headers, list[ServerSentEvent]]:
    """POST, read `frames` frames, drop the connection."""
    seen: list[ServerSentEvent] = []
    async with aconnect_sse(client, "POST", f"{url}/ai/stream/chat", json=body, **kw) as source:
        async for event in source.aiter_sse():
            seen.append(event)
            if len(seen) == frames:
                break
        return source.response.headers, seen


async def read_all(
    client: httpx.AsyncClient, method: str, url: str, **kw: Any
) -> tuple[httpx.Response, list[ServerSentEvent]]:
    async with aconnect_sse(client, method, url, **kw) as source:
        return source.response, [event async for event in source.aiter_sse()]


async def finished_stream(client: httpx.AsyncClient, url: str) -> tuple[list[ServerSentEvent], str]:
    """A whole reply read to its end: its frames and its stream id."""
    async with aconnect_sse(client, "POST", f"{url}/ai/stream/chat", json=LONG) as source:
        return [event async for event in source.aiter_sse()], source.response.headers["x-stream-id"]


async def full_reply(client: httpx.AsyncClient, url: str) -> str:
    async with aconnect_sse(client, "POST", f"{url}/ai/stream/chat", json=LONG) as source:
        return content([event async for event in source.aiter_sse()])


@pytest.mark.parametrize("cut", [1, 12, 30])
async def test_resume_from_an_offset_replays_exactly_the_missing_frames(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any], cut: int
) -> None:
    cluster = await cluster_factory(provider="mock", mock_delay_s=0.01, resume_grace_s=5)
    expected = await full_reply(client, cluster.a)
    headers, before = await read_some(client, cluster.a, LONG, cut)
    stream_id = headers["x-stream-id"]
    last = before[-1].id
    response, after = await read_all(
        client, "GET", f"{cluster.b}/ai/stream/{stream_id}", headers={"last-event-id": last}
    )
    assert response.status_code == 200
    ids = [int(e.id) for e in before + after]
    assert ids == list(range(1, len(ids) + 1))  # no gap, no duplicate, in order
    assert after[-1].data == "[DONE]"
    assert content(before + after) == expected


async def test_resume_after_the_stream_finished_and_with_the_after_parameter(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any]
) -> None:
    cluster = await cluster_factory(provider="mock")
    everything, stream_id = await finished_stream(client, cluster.a)
    _, replay = await read_all(client, "GET", f"{cluster.b}/ai/stream/{stream_id}?after=3")
    _, whole = await read_all(client, "GET", f"{cluster.b}/ai/stream/{stream_id}")
    assert [e.id for e in replay] == [e.id for e in everything[3:]]
    assert [e.data for e in whole] == [e.data for e in everything]


async def test_a_resume_past_the_end_of_a_finished_stream_says_so(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any]
) -> None:
    """Not an empty 200 without `[DONE]`, which a client reads as a cut and retries."""
    cluster = await cluster_factory(provider="mock")
    everything, stream_id = await finished_stream(client, cluster.a)
    last = int(everything[-1].id)
    url = f"{cluster.b}/ai/stream/{stream_id}"
    past = await client.get(url, headers={"last-event-id": str(last + 5)})
    at_end = await client.get(url, headers={"last-event-id": str(last)})
    _, tail = await read_all(client, "GET", url, headers={"last-event-id": str(last - 1)})
    for response in (past, at_end):
        assert response.status_code == 416
        assert response.json()["error"]["code"] == "stream_ended"
        assert "past its end" in response.json()["error"]["message"]
    assert [e.data for e in tail] == ["[DONE]"]


async def test_an_unknown_stream_is_a_404_with_a_clear_message(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any]
) -> None:
    cluster = await cluster_factory(provider="mock")
    resumed = await client.get(f"{cluster.b}/ai/stream/0123456789abcdef")
    stopped = await client.post(f"{cluster.b}/ai/stream/0123456789abcdef/stop")
    bad_id = await client.get(
        f"{cluster.b}/ai/stream/0123456789abcdef", headers={"last-event-id": "x"}
    )
    assert resumed.status_code == 404
    assert error_of(resumed) == {
        "code": "not_found",
        "message": "Stream '0123456789abcdef' not found (unknown, or expired)",
    }
    assert stopped.status_code == 404
    assert bad_id.status_code == 422 and "Last-Event-ID" in bad_id.json()["error"]["message"]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


def claude(fake: FakeAnthropic, **values: Any) -> dict[str, Any]:
    return {
        "provider": "anthropic",
        "anthropic_api_key": "sk-ant-test",
        "anthropic_base_url": fake.base_url,
        **values,
    }


async def test_with_no_reader_back_the_upstream_is_cancelled_right_after_the_grace(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any], fake: FakeAnthropic
) -> None:
    fake.default = Scenario(deltas=["x "] * 10, stall_after=3)
    cluster = await cluster_factory(**claude(fake, resume_grace_s=0.4))
    headers, _ = await read_some(
        client, cluster.a, {"messages": [{"role": "user", "content": "hi"}]}, 3
    )
    left_at = time.monotonic()
    [upstream] = await fake.wait_for_requests(1)
    assert await upstream.wait_closed(3)
    assert upstream.disconnected_at is not None
    waited = upstream.disconnected_at - left_at
    assert 0.35 <= waited < 0.4 + 0.1  # not before the grace, and within 100 ms after it
    cid = headers["x-conversation-id"]
    stored = await wait_for_reply(client, cluster.b, cid)
    assert stored["end_reason"] == "disconnected"


async def wait_for_reply(client: httpx.AsyncClient, url: str, cid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        messages = (await client.get(f"{url}/conversations/{cid}")).json()["messages"]
        if messages[-1]["role"] == "assistant" or time.monotonic() > deadline:
            reply: dict[str, Any] = messages[-1]
            return reply
        await asyncio.sleep(0.02)


async def test_a_reader_back_within_the_grace_keeps_the_generation_going(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any]
) -> None:
    cluster = await cluster_factory(provider="mock", mock_delay_s=0.02, resume_grace_s=0.5)
    headers, before = await read_some(client, cluster.a, LONG, 3)
    await asyncio.sleep(0.2)
    _, after = await read_all(
        client,
        "GET",
        f"{cluster.b}/ai/stream/{headers['x-stream-id']}",
        headers={"last-event-id": before[-1].id},
    )
    assert after[-1].data == "[DONE]"
    assert json.loads(next(e.data for e in after if e.event == "end"))["reason"] == "completed"
    stored = await wait_for_reply(client, cluster.b, headers["x-conversation-id"])
    assert stored["end_reason"] == "completed"


async def test_stop_ends_every_reader_and_closes_the_upstream_within_100ms(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any], fake: FakeAnthropic
) -> None:
    fake.default = Scenario(deltas=["w "] * 400, interval=0.01)
    cluster = await cluster_factory(**claude(fake))
    body = {"messages": [{"role": "user", "content": "talk"}]}
    async with aconnect_sse(client, "POST", f"{cluster.a}/ai/stream/chat", json=body) as source:
        stream_id = source.response.headers["x-stream-id"]
        cid = source.response.headers["x-conversation-id"]
        events = []
        async for event in source.aiter_sse():
            events.append(event)
            if len(events) == 6:
                asked_at = time.monotonic()
                stop = await client.post(f"{cluster.b}/ai/stream/{stream_id}/stop")
        [upstream] = fake.requests
    assert stop.status_code == 200 and stop.json() == {"stream_id": stream_id, "status": "stopped"}
    assert upstream.disconnected_at is not None
    assert upstream.disconnected_at - asked_at < 0.1
    end = json.loads(next(e.data for e in events if e.event == "end"))
    assert end["reason"] == "stopped"
    assert events[-1].data == "[DONE]"
    assert upstream.deltas_sent < 400
    stored = await wait_for_reply(client, cluster.a, cid)
    assert stored["end_reason"] == "stopped"
    assert stored["content"] == content(events) and stored["content"]
    again = await client.post(f"{cluster.b}/ai/stream/{stream_id}/stop")
    assert again.json()["status"] == "finished"


async def test_a_retried_post_with_the_same_idempotency_key_does_not_bill_twice(
    client: httpx.AsyncClient, cluster_factory: Callable[..., Any], fake: FakeAnthropic
) -> None:
    fake.default = Scenario(deltas=["once ", "only"], interval=0.05)
    cluster = await cluster_factory(**claude(fake))
    body = {"messages": [{"role": "user", "content": "pay me once"}]}
    key = {"idempotency-key": "order-7"}
    first, events = await read_all(
        client, "POST", f"{cluster.a}/ai/stream/chat", json=body, headers=key
    )
    retried, replay = await read_all(
        client, "POST", f"{cluster.b}/ai/stream/chat", json=body, headers=key
    )
    other, _ = await read_all(
        client,
        "POST",
        f"{cluster.b}/ai/stream/chat",
        json=body,
        headers={"idempotency-key": "order-8"},
    )
    assert retried.headers["x-stream-id"] == first.headers["x-stream-id"]
    assert [e.data for e in replay] == [e.data for e in events]
    assert other.headers["x-stream-id"] != first.headers["x-stream-id"]
    assert len(fake.requests) == 2  # order-7 once, order-8 once
    stored = (
        await client.get(f"{cluster.a}/conversations/{first.headers['x-conversation-id']}")
    ).json()
    assert len(stored["messages"]) == 2


async def test_a_generation_whose_instance_died_ends_its_readers_with_instance_lost(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    """A stream registered by an instance whose lease is gone (as after kill -9)."""
    from redis.asyncio import Redis

    from chatrelay.eventlogs.codec import dump, dump_meta
    from chatrelay.events import Answering, StreamMeta, TextDelta
    from chatrelay.models import ModelSpec

    async with redis_prefix() as prefix:
        redis = Redis.from_url(REDIS_URL)
        meta = f"{prefix}:s:ghoststream"
        stream = StreamMeta("ghoststream", "seed", 0, "mock")
        await redis.hset(
            meta,
            mapping={
                "owner": "public",
                "instance": "deadbeef0000",
                "finished": "0",
                "meta": dump_meta(stream),
            },
        )
        start = dump(Answering(ModelSpec("mock", "mock", "mock")))
        await redis.xadd(f"{meta}:log", {"f": start}, id="0-1")
        await redis.xadd(f"{meta}:log", {"f": dump(TextDelta("half"))}, id="0-2")
        settings = make_settings(
            provider="mock",
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        )
        async with serve(settings) as url:
            began = time.monotonic()
            _, events = await read_all(client, "GET", f"{url}/ai/stream/ghoststream")
            took = time.monotonic() - began
            _, again = await read_all(client, "GET", f"{url}/ai/stream/ghoststream?after=2")
        await redis.aclose()
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    assert json.loads(events[2].data)["code"] == "instance_lost"
    assert events[-1].data == "[DONE]"
    assert took < 5
    assert [e.data for e in again] == [e.data for e in events[2:]]


async def test_draining_ends_running_streams_with_server_restarting(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    from chatrelay.app import create_app

    settings = make_settings(
        provider="mock", mock_delay_s=0.02, database_url=f"sqlite+aiosqlite:///{tmp_path}/d.db"
    )
    app = create_app(settings)
    async with serve_app(app) as url:

        async def reader() -> list[ServerSentEvent]:
            return (await read_all(client, "POST", f"{url}/ai/stream/chat", json=LONG))[1]

        reading = asyncio.create_task(reader())
        await asyncio.sleep(0.2)
        await app.state.services.streams.drain(0.1)
        events = await reading
        refused = await client.post(
            f"{url}/ai/stream/chat", json={**LONG, "conversation_id": "during-drain"}
        )
        # The refused turn is recorded as failed and leaves its conversation usable.
        later = await client.post(
            f"{url}/ai/chat", json={**LONG, "conversation_id": "during-drain"}
        )
        stored = (await client.get(f"{url}/conversations/during-drain")).json()
    errors = [json.loads(e.data) for e in events if e.data.startswith('{"error"')]
    assert [e["code"] for e in errors] == ["server_restarting"]
    assert events[-1].data == "[DONE]"
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_restarting"
    assert later.status_code == 200
    replies = [m for m in stored["messages"] if m["role"] == "assistant"]
    assert [(m["end_reason"], m["error_code"]) for m in replies] == [
        ("error", "server_restarting"),
        ("completed", None),
    ]


async def test_a_reader_leaving_the_memory_log_does_not_stall_the_others() -> None:
    """Three readers follow one stream; one is cancelled mid-wait; the other two still get
    every event."""
    from chatrelay.eventlogs.memory import MemoryEventLog
    from chatrelay.events import StreamMeta, TextDelta

    log = MemoryEventLog("i1", ttl_s=60)
    await log.create(StreamMeta("s1", "seed", 0, "mock"), "alice")
    await log.append("s1", 1, TextDelta("one "))

    async def read_all() -> str:
        batches = [batch async for batch in log.read("s1", 0)]
        return "".join(e.text for _, events in batches for e in events)  # type: ignore[union-attr]

    readers = [asyncio.create_task(read_all()) for _ in range(3)]
    await asyncio.sleep(0.01)  # all three are waiting for frame 2
    readers[1].cancel()
    await asyncio.sleep(0)
    await log.append("s1", 2, TextDelta("two "))
    await log.append("s1", 3, TextDelta("three"))
    await log.finish("s1")
    assert await asyncio.wait_for(readers[0], 1) == "one two three"
    assert await asyncio.wait_for(readers[2], 1) == "one two three"
    assert readers[1].cancelled()
