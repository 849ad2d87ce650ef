"""A conversation whose instance died mid-reply (issue #15, F3 and F3b).

The lock carries its instance's lease; once that lease is gone (kill -9, or a restart under
the same name) the next message takes the lock over at once, and the dead reply is kept as far
as its checkpoints got, `end_reason: interrupted`: never two user turns in a row. With Redis,
the dead instance's concurrency slots go with its lease too.

The store is tested on its own with leases the test controls; then real `chatrelay serve`
processes are killed with SIGKILL: without Redis (restarted on the same port, so under the
same name) and with Redis (the lease expires, another instance takes over).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

import chatrelay.store
from chatrelay.db import create_engine, upgrade
from chatrelay.errors import ConversationBusy
from chatrelay.events import Reply
from chatrelay.leases import DB_LEASE_S, DatabaseLeases, RedisLeases
from chatrelay.store import Draft, Store

from .conftest import REDIS_URL, make_settings, postgres_database, redis_prefix, serve
from .processes import Process, chatrelay_env, free_port, start_chatrelay, wait_healthy

MOCK_DELAY_S = 0.02  # per word


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


class Leases:
    """Leases the test decides: `dead` instances have lost theirs."""

    def __init__(self, instance: str, dead: set[str]) -> None:
        self.instance = instance
        self.dead = dead
        self.asked: list[str] = []

    async def alive(self, instance: str) -> bool:
        self.asked.append(instance)
        return instance not in self.dead


@pytest.fixture
async def engine_url(database_url: str) -> AsyncIterator[str]:
    engine = create_engine(database_url)
    await upgrade(engine)
    await engine.dispose()
    yield database_url


async def two_instances(url: str, dead: set[str]) -> tuple[Store, Store]:
    """Instance `a` and instance `b` sharing one database."""
    return (
        Store(create_engine(url), leases=Leases("a", dead)),
        Store(create_engine(url), leases=Leases("b", dead)),
    )


# -- the store --------------------------------------------------------------------------------
async def test_a_lock_whose_lease_is_gone_is_taken_over_with_the_reply_interrupted(
    engine_url: str,
) -> None:
    dead: set[str] = set()
    a, b = await two_instances(engine_url, dead)
    try:
        seq = await a.begin_turn("c1", "alice", "s1", [user("q1")], "t", "mock", create=True)
        await a.checkpoint([Draft("c1", "s1", seq, "mock", "Once upon", None, started=False)])
        await a.checkpoint([Draft("c1", "s1", seq, "mock", "Once upon a time", None, True)])
        live = await b.get("c1", "alice")
        assert live is not None and live.locked_by == "s1"
        assert [(m.content, m.end_reason) for m in live.messages] == [
            ("q1", None),
            ("Once upon a time", "generating"),
        ]
        with pytest.raises(ConversationBusy):  # a's lease lives: the lock holds
            await b.begin_turn("c1", "alice", "s2", [user("q2")], "t", "mock", create=False)

        dead.add("a")
        taken = await b.begin_turn("c1", "alice", "s2", [user("q2")], "t", "mock", create=False)
        stored = await b.get("c1", "alice")
        assert stored is not None
        assert (stored.locked_by, stored.lock_owner) == ("s2", "b")
        assert [(m.seq, m.role, m.content, m.end_reason) for m in stored.messages] == [
            (0, "user", "q1", None),
            (1, "assistant", "Once upon a time", "interrupted"),
            (2, "user", "q2", None),
        ]
        assert taken == 3
        # A checkpoint of the dead stream that arrives late changes nothing, nor does a
        # first one (of a stream that no longer holds the lock).
        await a.checkpoint([Draft("c1", "s1", seq, "mock", "Once upon a time there", None, True)])
        await a.checkpoint([Draft("c1", "s7", 9, "mock", "Not mine", None, started=False)])
        await b.end_turn("c1", Reply("The end.", "mock", "s2", "completed"), taken)
        stored = await b.get("c1", "alice")
        assert stored is not None and stored.locked_by is None
        assert [m.content for m in stored.messages] == ["q1", "Once upon a time", "q2", "The end."]
    finally:
        await a.close()
        await b.close()


async def test_a_reply_that_ends_after_its_checkpoints_replaces_them(engine_url: str) -> None:
    a, b = await two_instances(engine_url, set())
    try:
        seq = await a.begin_turn("c1", "alice", "s1", [user("q1")], "t", "mock", create=True)
        await a.checkpoint([Draft("c1", "s1", seq, "mock", "Hel", "hmm", started=False)])
        await a.end_turn("c1", Reply("Hello!", "mock", "s1", "completed", thinking="hmm."), seq)
        stored = await b.get("c1", "alice")
        assert stored is not None and stored.locked_by is None
        [_question, answer] = stored.messages
        assert (answer.seq, answer.content, answer.thinking) == (1, "Hello!", "hmm.")
        assert answer.end_reason == "completed"
    finally:
        await a.close()
        await b.close()


async def test_a_reader_sees_a_dead_reply_as_interrupted_and_the_lock_freed(
    engine_url: str,
) -> None:
    """Even before anyone sends a message: the dead lock is freed by the read itself."""
    dead: set[str] = set()
    a, b = await two_instances(engine_url, dead)
    try:
        seq = await a.begin_turn("c1", "alice", "s1", [user("q1")], "t", "mock", create=True)
        await a.begin_turn("c2", "alice", "s9", [user("nothing yet")], "t", "mock", create=True)
        await a.checkpoint([Draft("c1", "s1", seq, "mock", "As far as", None, started=False)])
        dead.add("a")
        stored = await b.get("c1", "alice")
        assert stored is not None and stored.locked_by is None
        assert [(m.content, m.end_reason) for m in stored.messages] == [
            ("q1", None),
            ("As far as", "interrupted"),
        ]
        # A reply that never reached its first checkpoint: an empty interrupted turn.
        nothing = await b.get("c2", "alice")
        assert nothing is not None and nothing.locked_by is None
        assert [(m.role, m.content, m.end_reason) for m in nothing.messages] == [
            ("user", "nothing yet", None),
            ("assistant", "", "interrupted"),
        ]
    finally:
        await a.close()
        await b.close()


async def test_database_leases_live_while_renewed_and_die_with_a_restart_or_silence(
    engine_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(create_engine(engine_url))
    try:
        first = DatabaseLeases(store, instance="boot-1", name="host:8000")
        other = DatabaseLeases(store, instance="boot-9", name="host:8001")
        await first.start()
        await other.start()
        assert await other.alive("boot-1") and await first.alive("boot-9")
        assert not await other.alive("never-started")

        # A restart under the same name: the previous life is dead at once.
        second = DatabaseLeases(store, instance="boot-2", name="host:8000")
        await second.start()
        assert not await other.alive("boot-1")
        assert await other.alive("boot-2")

        # Silence past the lease (its renewals stopped, as a killed process's do).
        await first.close()
        real_now = chatrelay.store.now
        monkeypatch.setattr(
            chatrelay.store, "now", lambda: real_now() + timedelta(seconds=DB_LEASE_S + 1)
        )
        if store.engine.dialect.name == "sqlite":
            assert not await other.alive("boot-2")
        monkeypatch.setattr(chatrelay.store, "now", real_now)

        # A clean stop deletes the lease.
        await second.close()
        assert not await other.alive("boot-2")
        await other.close()
    finally:
        await store.close()


async def test_redis_leases_are_the_instances_keys_and_a_restart_ends_the_previous_life() -> None:
    async with redis_prefix() as prefix:
        redis = Redis.from_url(REDIS_URL)
        try:
            for instance in ("boot-1", "boot-9"):  # as their event logs keep them
                await redis.set(f"{prefix}:i:{instance}", b"1", px=3000)
            first = RedisLeases(redis, prefix=prefix, instance="boot-1", name="host:8000")
            other = RedisLeases(redis, prefix=prefix, instance="boot-9", name="host:8001")
            await first.start()
            await other.start()
            assert await other.alive("boot-1") and await first.alive("boot-9")
            assert not await other.alive("never-started")

            await redis.set(f"{prefix}:i:boot-2", b"1", px=3000)
            second = RedisLeases(redis, prefix=prefix, instance="boot-2", name="host:8000")
            await second.start()  # a restart under the same name
            assert not await other.alive("boot-1")
            assert await other.alive("boot-2") and await other.alive("boot-9")

            # A lease missing for a moment (Redis restarted without its data, the instance
            # renews it within a second) is not taken for dead.
            await redis.delete(f"{prefix}:i:boot-9")
            loop = asyncio.get_running_loop()
            renewal = loop.call_later(
                0.5, lambda: loop.create_task(redis.set(f"{prefix}:i:boot-9", b"1", px=3000))
            )
            try:
                assert await first.alive("boot-9")
            finally:
                renewal.cancel()
        finally:
            await redis.aclose()


# -- kill -9 ----------------------------------------------------------------------------------
class Reading:
    """An SSE response read in the background: each content frame with when it came."""

    def __init__(self) -> None:
        self.contents: list[tuple[float, str]] = []
        self.status = 0
        self.headers: httpx.Headers | None = None
        self.done = False

    @property
    def text(self) -> str:
        return "".join(text for _, text in self.contents)

    def text_until(self, moment: float) -> str:
        return "".join(text for at, text in self.contents if at <= moment)

    async def run(self, client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> None:
        try:
            async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
                self.status, self.headers = response.status_code, response.headers
                async for line in response.aiter_lines():
                    if line.startswith('data: {"content"'):
                        payload = json.loads(line.removeprefix("data: "))
                        self.contents.append((time.monotonic(), payload["content"]))
                    elif line == "data: [DONE]":
                        self.done = True
        except httpx.HTTPError:
            pass  # the server was killed under it


async def wait_for_text(reading: Reading, seconds: float, limit_s: float = 20) -> None:
    """Until the reply has streamed for `seconds`."""
    deadline = time.monotonic() + limit_s
    while not reading.contents or time.monotonic() - reading.contents[0][0] < seconds:
        assert time.monotonic() < deadline, "the reply did not stream"
        await asyncio.sleep(0.02)


def long_reply(cid: str, text: str, words: int = 500) -> dict[str, Any]:
    return {
        "conversation_id": cid,
        "messages": [user(text)],
        "metadata": {"mock": {"words": words}},
    }


async def next_message(client: httpx.AsyncClient, url: str, cid: str) -> tuple[int, str]:
    """Send the next message of `cid`; its status and (when 200) the whole stream."""
    body = {"conversation_id": cid, "messages": [user("Are you still there?")]}
    async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
        return response.status_code, (await response.aread()).decode()


async def history(client: httpx.AsyncClient, url: str, cid: str) -> list[dict[str, Any]]:
    response = await client.get(f"{url}/conversations/{cid}")
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def assert_interrupted(messages: list[dict[str, Any]], seen: Reading, killed: float) -> None:
    """user, the dead reply (as far as it was checkpointed), user, the next reply."""
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    dead, after = messages[1], messages[3]
    assert dead["end_reason"] == "interrupted"
    assert dead["stream_id"] == seen.headers["x-stream-id"]  # type: ignore[index]
    # What the client saw, at least up to the last checkpoint (about every second) before
    # the kill; never text the client did not see.
    assert seen.text.startswith(dead["content"])
    assert len(dead["content"]) >= len(seen.text_until(killed - 2.0)) > 0
    assert after["end_reason"] == "completed"


async def test_kill_9_mid_reply_then_restart_the_next_message_is_accepted_at_once(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = chatrelay_env(
        CHATRELAY_PROVIDER="mock",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chat.db",
        CHATRELAY_MOCK_DELAY_S=str(MOCK_DELAY_S),
        CHATRELAY_LOG_FORMAT="text",
    )
    processes: list[Process] = []
    url = f"http://127.0.0.1:{port}"
    try:
        first = start_chatrelay("chatrelay (first life)", port, env, tmp_path / "first")
        processes.append(first)
        await wait_healthy(first, port)
        seen = Reading()
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as client:
            reader = asyncio.create_task(seen.run(client, url, long_reply("crash-1", "story?")))
            await wait_for_text(seen, 2.5)
            first.send(signal.SIGKILL)
            killed = time.monotonic()
            assert await first.wait(5) == -signal.SIGKILL
            await reader
            assert not seen.done

            second = start_chatrelay("chatrelay (second life)", port, env, tmp_path / "second")
            processes.append(second)
            await wait_healthy(second, port)
            status, body = await next_message(client, url, "crash-1")
            assert status == 200, body  # not 409 conversation_busy
            assert "data: [DONE]" in body and '"reason":"completed"' in body
            assert_interrupted(await history(client, url, "crash-1"), seen, killed)
    finally:
        for process in processes:
            code = await process.stop()
            print(f"----- {process.name} (exit {code}) -----\n{process.output()}")


async def test_with_redis_a_dead_instances_lock_and_concurrency_slot_free_within_seconds(
    tmp_path: Path,
) -> None:
    """Instance A (a process) is killed mid-reply; instance B takes the conversation over and
    the key with concurrency 1 is usable again once A's Redis lease (3 s) has expired."""
    async with redis_prefix() as prefix, postgres_database() as database_url:
        port = free_port()
        env = chatrelay_env(
            CHATRELAY_PROVIDER="mock",
            DATABASE_URL=database_url,
            REDIS_URL=REDIS_URL,
            CHATRELAY_REDIS_PREFIX=prefix,
            CHATRELAY_LIMITS_PUBLIC="concurrency=1",
            CHATRELAY_MOCK_DELAY_S=str(MOCK_DELAY_S),
            CHATRELAY_LOG_FORMAT="text",
        )
        a = start_chatrelay("chatrelay A", port, env, tmp_path / "a")
        settings = make_settings(
            provider="mock",
            database_url=database_url,
            redis_url=REDIS_URL,
            redis_prefix=prefix,
            limits_public="concurrency=1",
        )
        try:
            await wait_healthy(a, port)
            a_url = f"http://127.0.0.1:{port}"
            async with (
                serve(settings) as b_url,
                httpx.AsyncClient(timeout=httpx.Timeout(30, connect=5)) as client,
            ):
                seen = Reading()
                cid = f"crash-{uuid.uuid4().hex[:8]}"
                reader = asyncio.create_task(seen.run(client, a_url, long_reply(cid, "story?")))
                await wait_for_text(seen, 2.5)
                busy = await client.post(f"{b_url}/ai/stream/chat", json={"messages": [user("x")]})
                assert busy.status_code == 429  # the one slot is A's stream
                a.send(signal.SIGKILL)
                killed = time.monotonic()
                assert await a.wait(5) == -signal.SIGKILL
                await reader

                while True:
                    status, body = await next_message(client, b_url, cid)
                    if status == 200:
                        break
                    assert status in (409, 429), body
                    assert time.monotonic() - killed < 8, f"still {status} after 8 s: {body}"
                    await asyncio.sleep(0.2)
                freed_after = time.monotonic() - killed
                assert freed_after < 6, f"usable again only after {freed_after:.1f} s"
                assert "data: [DONE]" in body and '"reason":"completed"' in body
                assert_interrupted(await history(client, b_url, cid), seen, killed)
                # And the slot of that reply is free again too.
                again = await client.post(f"{b_url}/ai/chat", json={"messages": [user("y")]})
                assert again.status_code == 200, again.text
        finally:
            code = await a.stop()
            print(f"----- {a.name} (exit {code}) -----\n{a.output()}")
