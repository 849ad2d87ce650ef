"""Redis going away under running streams (issue #15): Stop, resume and logs across an outage.

Each test runs a redis-server of its own on a free port (never the shared one, which other
tests use), two app instances sharing it, and stops, restarts or cuts that server mid-stream.
The instance taking the POST (`a`) generates the reply; `b` is the other instance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from chatrelay.app import create_app
from chatrelay.streams import StreamHub

from .conftest import error_of, make_settings, serve_app
from .servers import PrivateRedis, private_redis

MOCK_DELAY_S = 0.02  # per word
SAID = ("Redis is unreachable (", "Redis is reachable again after ")  # an outage's two lines


def long_chat(words: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "go"}], "metadata": {"mock": {"words": words}}}


# -- a private Redis -------------------------------------------------------------------------
class RedisServer:
    """A private redis-server (tests/servers.py), stopped and started from a thread so the
    instances under test go on meanwhile."""

    def __init__(self, server: PrivateRedis) -> None:
        self.server = server
        self.port = server.port
        self.url = server.url

    async def stop(self, *, keep_data: bool) -> None:
        """Kill the server; with `keep_data` it comes back with its keys (a snapshot first),
        else empty, as a Redis without persistence does."""
        if keep_data:
            redis = Redis.from_url(self.url)
            await redis.save()
            await redis.aclose()
        else:
            (self.server.root / "dump.rdb").unlink(missing_ok=True)
        await asyncio.to_thread(self.server.stop)

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def restart(self, *, keep_data: bool) -> None:
        await self.stop(keep_data=keep_data)
        await self.start()

    async def exists(self, key: str) -> bool:
        redis = Redis.from_url(self.url)
        try:
            return bool(await redis.exists(key))
        finally:
            await redis.aclose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with private_redis(tmp_path / "redis") as server:
        yield RedisServer(server)


class CuttableProxy:
    """A TCP proxy to Redis for one instance: `cut()` drops its connections and refuses new
    ones (that instance is cut off from Redis; the others are not) until `restore()`."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.cut_off = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def __aenter__(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self.server.close()
        await self.server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def restore(self) -> None:
        self.cut_off = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}


# -- two instances ---------------------------------------------------------------------------
@dataclass
class Node:
    url: str
    app: Any

    @property
    def hub(self) -> StreamHub:
        hub: StreamHub = self.app.state.services.streams
        return hub


@asynccontextmanager
async def two_instances(
    tmp_path: Path, redis_url: str, redis_url_a: str | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    """`a` (on `redis_url_a` if given) and `b`, sharing the Redis and the database."""

    def app(url: str) -> Any:
        return create_app(
            make_settings(
                provider="mock",
                mock_delay_s=MOCK_DELAY_S,
                resume_grace_s=30,
                redis_url=url,
                database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
            )
        )

    app_a, app_b = app(redis_url_a or redis_url), app(redis_url)
    async with serve_app(app_a) as a, serve_app(app_b) as b:
        yield Node(a, app_a), Node(b, app_b)


@dataclass
class Reading:
    """One SSE response read in the background, its events available as they come."""

    task: asyncio.Task[None] | None = None
    response: httpx.Response | None = None
    events: list[ServerSentEvent] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    async def until(self, count: int, limit_s: float = 10) -> None:
        deadline = time.monotonic() + limit_s
        while len(self.events) < count:
            assert self.task is not None
            if self.task.done():
                self.task.result()
                pytest.fail(f"the stream ended after {len(self.events)} events")
            assert time.monotonic() < deadline, f"only {len(self.events)} events"
            await asyncio.sleep(0.01)

    async def done(self) -> list[ServerSentEvent]:
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
        return self.events


def read(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> Reading:
    reading = Reading()

    async def run() -> None:
        async with aconnect_sse(client, method, url, **kw) as source:
            reading.response = source.response
            reading.opened.set()
            async for event in source.aiter_sse():
                reading.events.append(event)

    reading.task = asyncio.create_task(run())
    return reading


def content(events: list[ServerSentEvent]) -> str:
    return "".join(json.loads(e.data)["content"] for e in events if e.data.startswith('{"content"'))


def end_of(events: list[ServerSentEvent]) -> dict[str, Any]:
    [end] = [e.data for e in events if e.event == "end"]
    parsed: dict[str, Any] = json.loads(end)
    return parsed


def error_codes(events: list[ServerSentEvent]) -> list[str]:
    return [json.loads(e.data)["code"] for e in events if e.data.startswith('{"error"')]


def check_no_silent_gap(events: list[ServerSentEvent], after: int) -> bool:
    """Every frame after `after` exactly once and in order, ending with `[DONE]`; True when
    the reply is complete, False when it ended with `stream_incomplete` (never a gap followed
    by `completed`)."""
    ids = [int(e.id) for e in events if e.id]
    assert ids == list(range(after + 1, after + 1 + len(ids))), ids
    assert events[-1].data == "[DONE]"
    if error_codes(events) == ["stream_incomplete"]:
        assert end_of(events)["reason"] == "error"
        return False
    assert error_codes(events) == []
    assert end_of(events)["reason"] == "completed"
    return True


async def wait_for(check: Callable[[], Awaitable[bool]], limit_s: float, what: str) -> float:
    """Poll `check` until true; how long it took."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < limit_s, f"{what}: not within {limit_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def stored_reply(client: httpx.AsyncClient, url: str, cid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while True:
        messages = (await client.get(f"{url}/conversations/{cid}")).json()["messages"]
        if messages[-1]["role"] == "assistant" or time.monotonic() > deadline:
            reply: dict[str, Any] = messages[-1]
            return reply
        await asyncio.sleep(0.02)


# -- F1: Stop across a Redis restart ---------------------------------------------------------
@pytest.mark.parametrize("keep_data", [True, False], ids=["redis-keeps-its-data", "redis-empty"])
async def test_after_a_redis_restart_a_stop_through_the_other_instance_stops_the_reply(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer, keep_data: bool
) -> None:
    async with two_instances(tmp_path, redis_server.url) as (a, b):
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(400))
        await post.until(10)
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]
        cid = post.response.headers["x-conversation-id"]

        await redis_server.restart(keep_data=keep_data)
        # An empty Redis has forgotten the stream: its instance writes it again.
        meta = f"chatrelay:s:{stream_id}"
        await wait_for(lambda: redis_server.exists(meta), 3, "the stream registered again")
        asked = time.monotonic()
        stop = await client.post(f"{b.url}/ai/stream/{stream_id}/stop")
        took = time.monotonic() - asked
        events = await post.done()
        stored = await stored_reply(client, a.url, cid)

    assert end_of(events)["reason"] == "stopped"
    assert events[-1].data == "[DONE]"
    assert len(content(events).split()) < 400  # it did not run to its end
    assert stored["end_reason"] == "stopped"
    assert stored["content"] == content(events)
    assert stop.status_code == 200, stop.text
    assert stop.json() == {"stream_id": stream_id, "status": "stopped"}
    assert took < 1  # answered once `a` had stopped it, not after a timeout


async def test_a_stop_the_generating_instance_cannot_receive_is_503_stop_unconfirmed(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer
) -> None:
    async with (
        CuttableProxy(redis_server.port) as proxy,
        two_instances(tmp_path, redis_server.url, redis_url_a=proxy.url) as (a, b),
    ):
        b.hub.stop_wait_s = 1.0
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(400))
        await post.until(5)
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]

        proxy.cut()  # `a` generates on, but hears nothing from Redis
        asked = time.monotonic()
        refused = await client.post(f"{b.url}/ai/stream/{stream_id}/stop")
        took = time.monotonic() - asked
        running = len(post.events)

        # Once `a` reaches Redis again, the same Stop goes through.
        proxy.restore()
        b.hub.stop_wait_s = 5.0
        stop = await client.post(f"{b.url}/ai/stream/{stream_id}/stop")
        events = await post.done()

    assert refused.status_code == 503, refused.text
    assert error_of(refused) == {
        "code": "stop_unconfirmed",
        "message": f"The server generating stream {stream_id!r} did not confirm the stop within"
        " 1 s; the reply may still be running: send the stop again",
    }
    assert 1.0 <= took < 1.5
    assert running < 400
    assert stop.status_code == 200 and stop.json()["status"] == "stopped", stop.text
    assert end_of(events)["reason"] == "stopped"


# -- F2: no silent holes after an outage -----------------------------------------------------
@pytest.mark.parametrize("keep_data", [True, False], ids=["redis-keeps-its-data", "redis-empty"])
async def test_frames_made_during_a_redis_outage_reach_the_other_instance_with_no_gap(
    client: httpx.AsyncClient,
    tmp_path: Path,
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
    keep_data: bool,
) -> None:
    caplog.set_level(logging.INFO)
    async with two_instances(tmp_path, redis_server.url) as (a, b):
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(300))
        await post.until(1)
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]
        resume = f"{b.url}/ai/stream/{stream_id}"
        follower = read(client, "GET", resume)  # follows through `b` across the outage
        await post.until(40)

        await redis_server.stop(keep_data=keep_data)
        outage_began = time.monotonic()
        await post.until(len(post.events) + 60)  # ~1.2 s of frames while Redis is away
        await redis_server.start()
        outage_s = time.monotonic() - outage_began
        meta = f"chatrelay:s:{stream_id}"
        restored_s = await wait_for(lambda: redis_server.exists(meta), 3, "stream registered")
        # A client that saw up to id 41, resuming through `b` right after the outage.
        resumed = read(client, "GET", resume, headers={"last-event-id": "41"})

        everything = await post.done()
        followed = await follower.done()
        after_outage = await resumed.done()
        replay = await read(client, "GET", f"{resume}?after=0").done()

    assert check_no_silent_gap(everything, 0)
    assert len(content(everything).split()) == 300
    for events, after in ((followed, 0), (after_outage, 41)):
        if check_no_silent_gap(events, after):
            assert content(events) == content(everything[after:])
    # Once Redis is back, the copier fills in everything it missed: nothing is lost for good.
    assert check_no_silent_gap(replay, 0)
    assert [e.data for e in replay] == [e.data for e in everything]

    # One warning when Redis went away and one line when it came back, per instance; no
    # traceback for any frame.
    lines = [r for r in caplog.records if r.name == "chatrelay.eventlogs.redis"]
    for node in (a, b):
        mine = [r for r in lines if getattr(r, "instance", None) == node.hub.instance]
        said = [(r.levelname, r.getMessage()) for r in mine]
        assert [level for level, _ in said] == ["WARNING", "INFO"], said
        assert all(m.startswith(s) for (_, m), s in zip(said, SAID, strict=True)), said
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    print(f"outage {outage_s:.2f} s; stream registered again {restored_s:.2f} s after")


# -- a reader never skips frames -------------------------------------------------------------
@pytest.mark.parametrize("hole", ["gap-in-ids", "finished-without-done"])
async def test_a_reader_on_another_instance_ends_with_stream_incomplete_over_missing_frames(
    client: httpx.AsyncClient, tmp_path: Path, hole: str
) -> None:
    """A log in Redis with frames missing (as an older instance's failed flushes left them),
    its generating instance alive: the reader delivers what precedes the hole, then
    `stream_incomplete`, never the frames after it as if nothing were missing."""
    from chatrelay.eventlogs.codec import dump, dump_meta
    from chatrelay.events import Answering, End, StreamMeta, TextDelta
    from chatrelay.models import ModelSpec

    from .conftest import REDIS_URL, redis_prefix

    async with redis_prefix() as prefix:
        redis = Redis.from_url(REDIS_URL)
        meta = f"{prefix}:s:holey"
        finished = "1" if hole == "finished-without-done" else "0"
        fields = {
            "owner": "public",
            "instance": "alive",
            "finished": finished,
            "meta": dump_meta(StreamMeta("holey", "seed", 0, "mock")),
        }
        await redis.hset(meta, mapping=fields)  # type: ignore[arg-type]
        await redis.set(f"{prefix}:i:alive", b"1", px=30_000)
        logged = [dump(Answering(ModelSpec("mock", "mock", "mock"))), dump(TextDelta("one "))]
        if hole == "gap-in-ids":  # 3 and 4 never reached Redis; the end did
            logged += [b"", b"", dump(End("end_turn", None))]
        for seq, event in enumerate(logged, 1):
            if event:
                await redis.xadd(f"{meta}:log", {"f": event}, id=f"0-{seq}")
        settings = make_settings(
            provider="mock",
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite",
        )
        async with serve_app(create_app(settings)) as url:
            events = await asyncio.wait_for(
                read(client, "GET", f"{url}/ai/stream/holey").done(), 10
            )
        await redis.aclose()
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    assert check_no_silent_gap(events, 0) is False
    assert content(events) == "one "
    assert json.loads(events[2].data)["code"] == "stream_incomplete"
    assert json.loads(events[3].data)["reason"] == "error"
    assert events[4].data == "[DONE]"


# -- Redis restarted empty: a Stop's answer, a resume before the stream is registered again --
async def fill_pool(node: Node, connections: int) -> None:
    """Make the instance's Redis pool hold `connections` idle connections: after a restart,
    each fails once when next used (as under real traffic, where the pool has grown)."""
    redis: Redis = node.hub.events._redis  # type: ignore[attr-defined]
    await asyncio.gather(*(redis.execute_command("PING") for _ in range(connections)))


async def test_a_stop_right_after_redis_restarted_empty_answers_stopped_not_finished(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Chaos run: the Stop ended the reply (stored `stopped`) but answered `finished`, when the
    generating instance's answer did not reach Redis (a connection to the old server failed)
    and the stopper read "finished, and no answer within 0.5 s" as "it had already ended"."""
    async with two_instances(tmp_path, redis_server.url) as (a, b):
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(400))
        await post.until(10)
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]
        cid = post.response.headers["x-conversation-id"]
        await fill_pool(a, 12)

        await redis_server.restart(keep_data=False)
        meta = f"chatrelay:s:{stream_id}"
        await wait_for(lambda: redis_server.exists(meta), 3, "the stream registered again")
        stop = await client.post(f"{b.url}/ai/stream/{stream_id}/stop")
        events = await post.done()
        stored = await stored_reply(client, a.url, cid)

    assert end_of(events)["reason"] == "stopped"
    assert stored["end_reason"] == "stopped"
    assert stop.status_code == 200, stop.text
    assert stop.json() == {"stream_id": stream_id, "status": "stopped"}


async def test_a_stop_of_a_reply_that_ended_on_its_own_answers_finished_at_once(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer
) -> None:
    async with two_instances(tmp_path, redis_server.url) as (a, b):
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(5))
        events = await post.done()
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]
        meta = f"chatrelay:s:{stream_id}"

        async def finished_in_redis() -> bool:
            redis = Redis.from_url(redis_server.url)
            try:
                return bool(await redis.hget(meta, "finished") == b"1")
            finally:
                await redis.aclose()

        await wait_for(finished_in_redis, 3, "the stream finished in Redis")
        stop = await client.post(f"{b.url}/ai/stream/{stream_id}/stop")
    assert end_of(events)["reason"] == "completed"
    assert stop.status_code == 200 and stop.json()["status"] == "finished", stop.text


async def test_a_resume_right_after_redis_restarted_empty_follows_the_running_reply(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Chaos run: a resume through the other instance, after Redis came back empty and before
    the generating instance wrote the stream again, answered 404 (final for the clients)."""
    async with two_instances(tmp_path, redis_server.url) as (a, b):
        post = read(client, "POST", f"{a.url}/ai/stream/chat", json=long_chat(200))
        await post.until(10)
        assert post.response is not None
        stream_id = post.response.headers["x-stream-id"]

        # Hold `a`'s copier (as its backoff does after an outage) until the resume is in.
        copier = a.hub.events
        gate = asyncio.Event()
        copy_round = copier._copy_round  # type: ignore[attr-defined]

        async def held_copy_round() -> Exception | None:
            await gate.wait()
            result: Exception | None = await copy_round()
            return result

        copier._copy_round = held_copy_round  # type: ignore[attr-defined]
        await redis_server.restart(keep_data=False)
        resumed = read(client, "GET", f"{b.url}/ai/stream/{stream_id}?after=5")
        await asyncio.sleep(0.4)
        gate.set()
        after_restart = await resumed.done()
        everything = await post.done()

    assert resumed.response is not None and resumed.response.status_code == 200
    assert check_no_silent_gap(after_restart, 5)
    assert content(after_restart) == content(everything[5:])


async def test_an_unknown_stream_right_after_redis_restarted_empty_is_503_then_404(
    client: httpx.AsyncClient, tmp_path: Path, redis_server: RedisServer
) -> None:
    async with two_instances(tmp_path, redis_server.url) as (_a, b):
        await redis_server.restart(keep_data=False)
        asked = time.monotonic()
        unsure = await client.get(f"{b.url}/ai/stream/nonesuch")
        took = time.monotonic() - asked
        await asyncio.sleep(6)
        unknown = await client.get(f"{b.url}/ai/stream/nonesuch")
    assert unsure.status_code == 503, unsure.text
    assert error_of(unsure)["code"] == "storage_unavailable"
    assert unsure.headers["retry-after"] == "1"
    assert 1.5 <= took < 3
    assert unknown.status_code == 404, unknown.text
