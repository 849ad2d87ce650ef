"""A finished reply is stored before its end is told, and survives a database outage (issue
#15, F16 and F4).

- On PostgreSQL, a client that reads `[DONE]` (or /ai/chat's answer) and at once reads the
  conversation finds the reply in it, on every surface.
- A private PostgreSQL (`tests/servers.py`, never the shared server) stopped while
  a reply streams: started again within `CHATRELAY_REPLY_RETRY_S` the reply is stored and the
  conversation unlocked; started after it, the reply is lost with one error line, and the
  conversation is unlocked all the same once the database answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import make_settings, postgres_database, serve
from .servers import PrivatePostgres, private_postgres


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def last_message(client: httpx.AsyncClient, url: str, cid: str) -> dict[str, Any]:
    response = await client.get(f"{url}/conversations/{cid}")
    assert response.status_code == 200, response.text
    message: dict[str, Any] = response.json()["messages"][-1]
    return message


async def read_to_done(response: httpx.Response) -> str:
    """Content up to `data: [DONE]`, leaving the response open after it."""
    text: list[str] = []
    async for line in response.aiter_lines():
        if line == "data: [DONE]":
            return "".join(text)
        if line.startswith("data: {"):
            payload = json.loads(line.removeprefix("data: "))
            if "content" in payload:
                text.append(payload["content"])
            for choice in payload.get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    raise AssertionError("the stream ended without [DONE]")


# -- F16: [DONE] comes once the reply is committed ----------------------------------------------
@pytest.mark.parametrize("surface", ["stream", "openai", "chat"])
async def test_on_postgresql_the_reply_is_in_the_conversation_as_soon_as_done_is_read(
    surface: str,
) -> None:
    async with postgres_database() as database_url:
        settings = make_settings(provider="mock", database_url=database_url)
        async with (
            serve(settings) as url,
            httpx.AsyncClient(timeout=30) as streams,
            httpx.AsyncClient(timeout=30) as reader,
        ):
            cid = f"done-{surface}"
            found = []
            for n in range(10):
                said = f"question {n}"
                body: dict[str, Any]
                if surface == "chat":
                    body = {"conversation_id": cid, "messages": [user(said)]}
                    response = await streams.post(f"{url}/ai/chat", json=body)
                    assert response.status_code == 200, response.text
                    text = response.json()["content"]
                    message = await last_message(reader, url, cid)
                elif surface == "openai":
                    body = {
                        "model": "mock",
                        "messages": [user(said)],
                        "stream": True,
                        "metadata": {"conversation_id": cid},
                    }
                    async with streams.stream(
                        "POST", f"{url}/v1/chat/completions", json=body
                    ) as response:
                        assert response.status_code == 200, await response.aread()
                        text = await read_to_done(response)
                        message = await last_message(reader, url, cid)
                else:
                    body = {"conversation_id": cid, "messages": [user(said)]}
                    async with streams.stream("POST", f"{url}/ai/stream/chat", json=body) as r:
                        assert r.status_code == 200, await r.aread()
                        text = await read_to_done(r)
                        message = await last_message(reader, url, cid)
                assert said in text
                found.append(message["role"] == "assistant" and message["content"] == text)
            assert found == [True] * 10


# -- F4: the database goes away when a reply ends -------------------------------------------
@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


async def stop(server: PrivatePostgres) -> None:
    await asyncio.to_thread(server.stop)  # in a thread: the app under test runs on this loop


async def start(server: PrivatePostgres) -> None:
    await asyncio.to_thread(server.start)


WORD_S = 0.25  # the mock's pause between words: the reply takes about 3 s


def slow_reply(cid: str) -> dict[str, Any]:
    return {
        "conversation_id": cid,
        "messages": [user("Take your time")],
        "metadata": {"mock": {"words": 12, "delay_s": WORD_S}},
    }


async def reply_with_the_database_stopped(
    client: httpx.AsyncClient, url: str, postgres: PrivatePostgres, cid: str
) -> tuple[str, str]:
    """Stream a reply, stopping PostgreSQL before it ends: its text, as the client saw it
    complete, and its stream id."""
    async with client.stream("POST", f"{url}/ai/stream/chat", json=slow_reply(cid)) as response:
        assert response.status_code == 200, await response.aread()
        stream_id = response.headers["x-stream-id"]
        text, seen, ended = [], 0, None
        async for line in response.aiter_lines():
            if line.startswith('data: {"content"'):
                text.append(json.loads(line.removeprefix("data: "))["content"])
                seen += 1
                if seen == 3:
                    await stop(postgres)  # about 2 s of the reply still to come
            elif line.startswith('data: {"reason"'):
                ended = json.loads(line.removeprefix("data: "))
            elif line == "data: [DONE]":
                break
    assert seen == 12
    assert ended is not None and ended["reason"] == "completed"
    return "".join(text), stream_id


async def until_stored(
    client: httpx.AsyncClient, url: str, cid: str, limit_s: float
) -> list[dict[str, Any]]:
    """The conversation's messages once its lock is free (polled; the database was down)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            response = await client.get(f"{url}/conversations/{cid}")
            if response.status_code == 200 and len(response.json()["messages"]) >= 2:
                status = await client.post(
                    f"{url}/ai/chat", json={"conversation_id": cid, "messages": [user("next")]}
                )
                if status.status_code == 200:
                    messages: list[dict[str, Any]] = (
                        await client.get(f"{url}/conversations/{cid}")
                    ).json()["messages"]
                    return messages
                assert status.status_code in (409, 500, 503), status.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{cid} still not stored and unlocked"
        await asyncio.sleep(0.25)


def chatrelay_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("chatrelay")
    ]


async def test_a_reply_ending_while_postgresql_is_down_is_stored_once_it_is_back(
    postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(provider="mock", database_url=postgres.url, reply_retry_s=30)
    async with serve(settings) as url, httpx.AsyncClient(timeout=30) as client:
        text, stream_id = await reply_with_the_database_stopped(client, url, postgres, "down-1")
        await asyncio.sleep(1)  # down a while after the reply ended
        await start(postgres)
        messages = await until_stored(client, url, "down-1", limit_s=15)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    reply = messages[1]
    assert (reply["content"], reply["end_reason"]) == (text, "completed")
    assert reply["stream_id"] == stream_id
    assert chatrelay_errors(caplog) == []


async def test_a_reply_the_database_refuses_for_longer_than_the_window_is_lost_but_unlocked(
    postgres: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(provider="mock", database_url=postgres.url, reply_retry_s=1)
    async with serve(settings) as url, httpx.AsyncClient(timeout=30) as client:
        text, stream_id = await reply_with_the_database_stopped(client, url, postgres, "down-2")
        await asyncio.sleep(3)  # past the 1 s window
        await start(postgres)
        messages = await until_stored(client, url, "down-2", limit_s=15)
    [error] = chatrelay_errors(caplog)
    assert "down-2" in error.getMessage() and stream_id in error.getMessage()
    assert "lost the reply" in error.getMessage()
    # What its checkpoints had stored before the database went away is kept, as interrupted.
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    lost = messages[1]
    assert lost["stream_id"] == stream_id and lost["end_reason"] == "interrupted"
    assert text.startswith(lost["content"])
    assert messages[3]["end_reason"] == "completed"
