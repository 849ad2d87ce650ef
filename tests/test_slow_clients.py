"""Slow and silent clients are cut off (slowloris): `CHATRELAY_REQUEST_TIMEOUT_S`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from .processes import Process, chatrelay_env, launch_chatrelay

TIMEOUT_S = 1.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[int]:
    env = chatrelay_env(
        CHATRELAY_REQUEST_TIMEOUT_S=str(TIMEOUT_S),
        CHATRELAY_PROVIDER="mock",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
    )
    started: list[Process] = []
    try:
        _, port, _ = await launch_chatrelay("slow", env, tmp_path, started, set())
        yield port
    finally:
        for process in started:
            await process.stop()


async def closed_after(port: int, drip: list[bytes], every_s: float) -> tuple[float, bytes]:
    """Send `drip` a piece at a time; when the server closes: seconds taken, what it answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    received = b""
    try:
        for piece in drip:
            if piece:
                writer.write(piece)
            try:
                chunk = await asyncio.wait_for(reader.read(65536), every_s)
            except TimeoutError:
                continue
            received += chunk
            if not chunk:
                break
        received += await asyncio.wait_for(reader.read(), 5)
        return time.monotonic() - started, received
    finally:
        writer.close()


async def test_a_client_dripping_its_headers_is_answered_408_and_closed(server: int) -> None:
    head = b"POST /ai/stream/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    drips = [head[i : i + 1] for i in range(len(head))]
    results = await asyncio.gather(*(closed_after(server, drips, 0.2) for _ in range(30)))
    for took, answer in results:
        assert took < TIMEOUT_S + 2, took  # not after the ~20 s the drip would last
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"CHATRELAY_REQUEST_TIMEOUT_S" in answer


async def test_a_silent_connection_and_a_dripped_body_are_closed(server: int) -> None:
    took, answer = await closed_after(server, [b""] * 40, 0.2)
    assert took < TIMEOUT_S + 2 and answer.startswith(b"HTTP/1.1 408")
    head = (
        b"POST /ai/chat HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 200\r\n\r\n"
    )
    took, _ = await closed_after(server, [head] + [b" "] * 40, 0.2)
    assert took < TIMEOUT_S + 2


async def test_a_reply_streaming_longer_than_the_deadline_is_not_cut(server: int) -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "metadata": {"mock": {"words": 8, "delay_s": 0.4}},
    }
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        async with client.stream(
            "POST", f"http://127.0.0.1:{server}/ai/stream/chat", json=body
        ) as response:
            text = "".join([chunk async for chunk in response.aiter_text()])
        took = time.monotonic() - started
        # The connection stays usable for the next request, well within keep-alive.
        again = await client.get(f"http://127.0.0.1:{server}/healthz")
    assert took > TIMEOUT_S * 2
    assert text.rstrip().endswith("data: [DONE]")
    assert '"error"' not in text
    assert again.status_code == 200


async def test_the_408_survives_a_client_still_sending_after_the_deadline(server: int) -> None:
    # Bytes that reach a closed socket are answered with a reset, which can discard the 408
    # before the client reads it; the server lingers so that the client reads the answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        writer.write(b"POST /ai/stream/chat HTTP/1.1\r\nhost: x\r\n")
        await asyncio.sleep(TIMEOUT_S + 0.5)
        for _ in range(5):
            writer.write(b"x-drip: 1\r\n")
            await asyncio.sleep(0.05)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    finally:
        writer.close()
