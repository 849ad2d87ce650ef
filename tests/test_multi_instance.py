"""Two real `chatrelay serve` instances behind a real nginx, sharing one Redis and PostgreSQL.

The multi-instance promise, end to end: a stream is generated on one instance (A) and read,
resumed and stopped through the load balancer, wherever it lands; killing or restarting the
generating instance ends its readers cleanly. nginx does plain round-robin with its default
(buffered) proxying, so the instances' `X-Accel-Buffering: no` is what keeps streams flowing.

Which instance served a request is asserted twice: by the stream's `X-Chatrelay-Instance` and
by the `X-Test-Upstream` header the test's nginx adds (the only way to tell for a stop).
Round-robin is steered, never assumed: idempotent requests are retried until they land where
the test needs them; a stop is aimed by first sending /healthz requests through nginx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import EventSource, aconnect_sse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from chatrelay.providers.base import ChatParams
from chatrelay.providers.mock import mock_options, reply_words

from .conftest import postgres_database
from .processes import Process, chatrelay_env, launch_chatrelay, launch_nginx

# Read at import: the autouse `clean_environ` fixture removes CHATRELAY_* before each test.
REDIS_URL = os.environ.get("CHATRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

MOCK_DELAY_S = 0.02  # per word: a 300-word reply takes about 6 s
RESUME_GRACE_S = 10  # a dropped connection must not cancel the generation during a test
SHUTDOWN_GRACE_S = 1
ATTEMPTS = 6  # bounded retries to land a request on a given instance


def chat_body(words: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "Tell me a long story, please"}],
        "metadata": {"mock": {"words": words}},
    }


def mock_reply(body: dict[str, Any]) -> str:
    """The mock provider's whole reply to `body`, computed independently of the servers."""
    params = ChatParams(
        model="mock", messages=body["messages"], max_tokens=2048, metadata=body["metadata"]
    )
    return "".join(reply_words(params, mock_options(params.metadata)))


# -- the cluster -----------------------------------------------------------------------------
@dataclass
class Instance:
    port: int
    process: Process
    id: str = ""  # its X-Chatrelay-Instance, from its own /healthz

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    url: str  # nginx
    instances: list[Instance]
    nginx: Process

    def by_upstream(self, addr: str) -> Instance:
        # After a failed attempt nginx lists every upstream it tried: the last one answered.
        last = addr.split(",")[-1].strip()
        [instance] = [i for i in self.instances if i.addr == last]
        return instance

    def served(self, response: httpx.Response) -> Instance:
        """The instance that answered `response`, checked against nginx's own account."""
        upstream = response.headers["x-test-upstream"]
        instance = self.by_upstream(upstream)
        if "x-chatrelay-instance" in response.headers:
            ids = {i.addr: i.id for i in self.instances}
            assert response.headers["x-chatrelay-instance"] == instance.id, (upstream, ids)
        return instance

    def other(self, instance: Instance) -> Instance:
        [other] = [i for i in self.instances if i is not instance]
        return other

    async def aim_at(self, target: Instance) -> None:
        """Make nginx's round-robin send the next request to `target`.

        With two peers nginx alternates strictly: once a /healthz lands on the other
        instance, the next request goes to `target`.
        """
        for _ in range(ATTEMPTS):
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(f"{self.url}/healthz")
            assert response.status_code == 200
            if self.served(response) is not target:
                return
        pytest.fail(f"round-robin never moved off {target.addr}")

    async def request_on(self, target: Instance, method: str, path: str) -> httpx.Response:
        """An idempotent request through nginx, retried until `target` answers it."""
        for _ in range(ATTEMPTS):
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.request(method, f"{self.url}{path}")
            if self.served(response) is target:
                return response
        pytest.fail(f"{method} {path} never landed on {target.addr}")


async def delete_keys(redis: Redis, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start : start + 500])


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two instances (own ports, shared Redis prefix and database) behind a fresh nginx."""
    prefix = f"chatrelay-test-{uuid.uuid4().hex}"
    redis = Redis.from_url(REDIS_URL)
    processes: list[Process] = []
    try:
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            pytest.fail(
                f"Redis at {REDIS_URL} is not reachable ({exc}); start it or set"
                " CHATRELAY_TEST_REDIS_URL"
            )
        async with postgres_database() as database_url:
            try:
                env = chatrelay_env(
                    CHATRELAY_PROVIDER="mock",
                    REDIS_URL=REDIS_URL,
                    CHATRELAY_REDIS_PREFIX=prefix,
                    DATABASE_URL=database_url,
                    CHATRELAY_RESUME_GRACE_S=str(RESUME_GRACE_S),
                    CHATRELAY_SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S),
                    CHATRELAY_MOCK_DELAY_S=str(MOCK_DELAY_S),
                    CHATRELAY_LOG_FORMAT="text",
                )
                ports: set[int] = set()
                launched = await asyncio.gather(
                    *(
                        launch_chatrelay(name, env, tmp_path / name, processes, ports)
                        for name in ("chatrelay-1", "chatrelay-2")
                    )
                )
                instances = [
                    Instance(port, process, health["instance"])
                    for process, port, health in launched
                ]
                for instance in instances:
                    instance.process.name += f" (instance {instance.id}, port {instance.port})"
                assert instances[0].id != instances[1].id
                nginx, port = await launch_nginx(
                    tmp_path / "nginx", [i.port for i in instances], processes, ports
                )
                yield Cluster(f"http://127.0.0.1:{port}", instances, nginx)
            finally:
                codes = await asyncio.gather(*(p.stop() for p in processes))
                for process, code in zip(processes, codes, strict=True):
                    # Shown by pytest when the test failed.
                    print(f"----- {process.name} (exit {code}) -----\n{process.output()}")
    finally:
        try:
            await delete_keys(redis, prefix)
        finally:
            await redis.aclose()


# -- reading streams -------------------------------------------------------------------------
@dataclass
class Frame:
    id: int
    event: str
    data: str
    at: float  # when it arrived (time.monotonic())

    @property
    def payload(self) -> Any:
        return None if self.data == "[DONE]" else json.loads(self.data)

    @property
    def content(self) -> str | None:
        payload = self.payload
        if self.event == "message" and isinstance(payload, dict) and "content" in payload:
            text: str = payload["content"]
            return text
        return None

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"


class Stream:
    """An open SSE response; `frames` holds every frame read so far, in order."""

    def __init__(self, source: EventSource) -> None:
        self.response = source.response
        self._events = source.aiter_sse()
        self.frames: list[Frame] = []

    @property
    def stream_id(self) -> str:
        return self.response.headers["x-stream-id"]

    @property
    def contents(self) -> list[Frame]:
        return [f for f in self.frames if f.content is not None]

    @property
    def text(self) -> str:
        return "".join(f.content or "" for f in self.frames)

    @property
    def errors(self) -> list[Frame]:
        return [f for f in self.frames if isinstance(f.payload, dict) and "error" in f.payload]

    async def next(self) -> Frame:
        event = await anext(self._events)
        frame = Frame(int(event.id or "-1"), event.event, event.data, time.monotonic())
        self.frames.append(frame)
        return frame

    async def read_contents(self, count: int, limit_s: float = 10) -> None:
        """Read until `count` content frames in all have been seen."""
        async with asyncio.timeout(limit_s):
            while len(self.contents) < count:
                assert not (await self.next()).done, "the stream ended early"

    async def read_to_end(self, limit_s: float = 20) -> None:
        """Read through `[DONE]`, and check the response ends right after it."""
        async with asyncio.timeout(limit_s):
            while not self.frames or not self.frames[-1].done:
                await self.next()
            with pytest.raises(StopAsyncIteration):
                await self.next()

    async def close(self) -> None:
        await self._events.aclose()


@asynccontextmanager
async def open_stream(method: str, url: str, **kwargs: Any) -> AsyncIterator[Stream]:
    """A stream on a fresh client (a new connection, so nginx balances it anew).

    Leaving the block before the end drops the connection, as a closed browser tab does.
    """
    timeout = httpx.Timeout(30, connect=5)
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        aconnect_sse(client, method, url, **kwargs) as source,
    ):
        response = source.response
        if response.status_code != 200:
            pytest.fail(f"{method} {url}: {response.status_code} {(await response.aread())!r}")
        stream = Stream(source)
        try:
            yield stream
        finally:
            await stream.close()


@asynccontextmanager
async def stream_on(
    cluster: Cluster, target: Instance, path: str, **kwargs: Any
) -> AsyncIterator[Stream]:
    """GET a stream through nginx, dropping and retrying until `target` serves it."""
    for _ in range(ATTEMPTS):
        async with open_stream("GET", f"{cluster.url}{path}", **kwargs) as stream:
            if cluster.served(stream.response) is target:
                yield stream
                return
    pytest.fail(f"GET {path} never landed on {target.addr}")


def assert_consecutive(frames: list[Frame], first: int) -> None:
    """Frame ids go first, first + 1, ...: no gap, no duplicate."""
    assert [f.id for f in frames] == list(range(first, first + len(frames)))


def assert_ends_with(frames: list[Frame], *payloads: dict[str, Any]) -> None:
    """The stream's last frames: these JSON payloads (the last one an `end`), then [DONE]."""
    tail = frames[-len(payloads) - 1 :]
    assert tail[-1].done
    assert tail[-2].event == "end"
    for frame, expected in zip(tail[:-1], payloads, strict=True):
        assert frame.payload.items() >= expected.items(), frame


# -- the tests -------------------------------------------------------------------------------
async def test_streams_through_nginx_are_not_buffered(cluster: Cluster) -> None:
    words = 100  # about 2 s of reply
    async with open_stream("POST", f"{cluster.url}/ai/stream/chat", json=chat_body(words)) as s:
        served = cluster.served(s.response)
        await s.read_to_end()
    # What tells nginx not to buffer (nginx consumes the header: only the instance shows it).
    assert "x-accel-buffering" not in s.response.headers
    direct = f"http://127.0.0.1:{served.port}/ai/stream/{s.stream_id}"
    # From the frame before the end: at the end itself a finished stream answers 416.
    last_but_one = str(s.frames[-2].id)
    async with open_stream("GET", direct, headers={"Last-Event-ID": last_but_one}) as d:
        assert d.response.headers["x-accel-buffering"] == "no"
    contents = s.contents
    assert len(contents) == words
    assert s.text == mock_reply(chat_body(words))
    first, done = contents[0].at, s.frames[-1].at
    span = done - first
    assert span > 0.7 * (words - 1) * MOCK_DELAY_S, f"the reply arrived in {span:.2f} s"
    # Frames arrive at many separate moments (a buffered proxy delivers them in a few lumps)...
    moments = 1 + sum(1 for a, b in itertools.pairwise(contents) if b.at - a.at > 0.005)
    assert moments >= 20, f"content arrived at only {moments} separate moments"
    # ...spread over the reply: about half of it is there half-way through.
    early = sum(1 for f in contents if f.at < first + span / 2)
    assert 0.25 * words <= early <= 0.75 * words, f"{early} of {words} frames in the first half"


async def test_resume_on_the_other_instance_continues_at_the_next_frame(cluster: Cluster) -> None:
    body = chat_body(200)  # about 4 s of reply
    async with open_stream("POST", f"{cluster.url}/ai/stream/chat", json=body) as first:
        a = cluster.served(first.response)
        await first.read_contents(20)
    # The connection is dropped; the generation runs on on A (resume grace 10 s).
    last = first.frames[-1].id
    b = cluster.other(a)
    path = f"/ai/stream/{first.stream_id}"
    async with stream_on(cluster, b, path, headers={"Last-Event-ID": str(last)}) as resumed:
        assert resumed.stream_id == first.stream_id
        await resumed.read_to_end()
    assert resumed.frames[0].id == last + 1
    assert_consecutive(first.frames + resumed.frames, 1)
    assert first.text + resumed.text == mock_reply(body)
    assert first.frames[0].event == "start"
    assert_ends_with(resumed.frames, {"reason": "completed", "stop_reason": "end_turn"})
    assert resumed.errors == []
    # B followed the generation live (through Redis), not a finished log after the fact.
    assert resumed.frames[-1].at - resumed.frames[0].at > 1.0


async def test_stop_through_the_other_instance(cluster: Cluster) -> None:
    body = chat_body(300)  # about 6 s of reply
    async with open_stream("POST", f"{cluster.url}/ai/stream/chat", json=body) as s:
        a = cluster.served(s.response)
        conversation_id = s.response.headers["x-conversation-id"]
        await s.read_contents(10)
        b = cluster.other(a)
        await cluster.aim_at(b)
        asked = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            stop = await client.post(f"{cluster.url}/ai/stream/{s.stream_id}/stop")
        assert cluster.served(stop) is b
        assert stop.status_code == 200, stop.text
        assert stop.json() == {"stream_id": s.stream_id, "status": "stopped"}
        await s.read_to_end(limit_s=5)
    # Promptly: the rest of the reply would have taken about 5.8 s more.
    assert s.frames[-1].at - asked < 1.5
    assert_ends_with(s.frames, {"reason": "stopped"})
    assert s.errors == []
    assert_consecutive(s.frames, 1)
    full = mock_reply(body)
    assert 10 <= len(s.contents) < 300
    assert full.startswith(s.text) and s.text != full
    # The partial reply is stored, and both instances read the same conversation.
    for instance in (a, b):
        response = await cluster.request_on(instance, "GET", f"/conversations/{conversation_id}")
        assert response.status_code == 200, response.text
        messages = response.json()["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        reply = messages[-1]
        assert reply["content"] == s.text
        assert reply["end_reason"] == "stopped"
        assert reply["stream_id"] == s.stream_id


async def test_a_killed_instance_ends_its_remote_readers_with_instance_lost(
    cluster: Cluster,
) -> None:
    async with open_stream("POST", f"{cluster.url}/ai/stream/chat", json=chat_body(300)) as first:
        a = cluster.served(first.response)
        await first.read_contents(10)
    b = cluster.other(a)
    last = first.frames[-1].id
    path = f"/ai/stream/{first.stream_id}"
    async with stream_on(cluster, b, path, headers={"Last-Event-ID": str(last)}) as follower:
        await follower.read_contents(10)
        a.process.send(signal.SIGKILL)
        killed = time.monotonic()
        await follower.read_to_end(limit_s=15)
    assert await a.process.wait(5) == -signal.SIGKILL
    [error] = follower.errors
    assert error.payload["code"] == "instance_lost"
    assert error.at - killed < 8, f"instance_lost after {error.at - killed:.1f} s"
    assert follower.frames[-3] is error
    assert_ends_with(follower.frames, {"code": "instance_lost"}, {"reason": "error"})
    assert_consecutive(follower.frames, last + 1)
    # The loss is recorded: a later resume (only B is left) replays the same ending.
    headers = {"Last-Event-ID": str(error.id - 1)}
    async with open_stream("GET", f"{cluster.url}{path}", headers=headers) as again:
        assert cluster.served(again.response) is b
        await again.read_to_end()
    assert [(f.id, f.event, f.data) for f in again.frames] == [
        (f.id, f.event, f.data) for f in follower.frames[-3:]
    ]


async def test_sigterm_drains_then_ends_the_stream_with_server_restarting(
    cluster: Cluster,
) -> None:
    body = chat_body(300)  # about 6 s of reply: longer than the 1 s shutdown grace
    async with open_stream("POST", f"{cluster.url}/ai/stream/chat", json=body) as s:
        a = cluster.served(s.response)
        await s.read_contents(10)
        a.process.send(signal.SIGTERM)
        terminated = time.monotonic()
        await s.read_to_end(limit_s=10)
    [error] = s.errors
    assert error.payload["code"] == "server_restarting"
    # The generation ran on for the shutdown grace, then was ended.
    assert SHUTDOWN_GRACE_S - 0.2 < error.at - terminated < SHUTDOWN_GRACE_S + 3
    assert s.contents[-1].at > terminated + SHUTDOWN_GRACE_S / 2
    assert_ends_with(s.frames, {"code": "server_restarting"}, {"reason": "error"})
    assert_consecutive(s.frames, 1)
    assert mock_reply(body).startswith(s.text) and len(s.contents) < 300
    exit_code = await a.process.wait(10)  # asserted last, once the resume is checked too
    # A resume through the remaining instance replays the same ending.
    b = cluster.other(a)
    last = s.contents[-1].id
    path = f"/ai/stream/{s.stream_id}"
    async with open_stream(
        "GET", f"{cluster.url}{path}", headers={"Last-Event-ID": str(last)}
    ) as resumed:
        assert cluster.served(resumed.response) is b
        await resumed.read_to_end()
    assert [(f.id, f.event, f.data) for f in resumed.frames] == [
        (f.id, f.event, f.data) for f in s.frames if f.id > last
    ]
    # A clean drain is a clean exit (a supervisor must not count a deploy as a crash).
    assert exit_code == 0, f"exit code {exit_code}:\n{a.process.output()}"
