"""An instance started while Redis is down (issue #15): it starts, says it is not ready, answers
503 `storage_unavailable` where Redis is needed, and serves once Redis comes up.

A real `chatrelay serve` process points at a private redis-server (tests/servers.py, on a free
port; never the shared one) that is not running yet. Once it is started, the first instance's
lease, its Stop channel (pub/sub) and its streams take over by themselves: a second instance,
started after Redis, stops a reply of the first one through Redis.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from .processes import Process, chatrelay_env, launch_chatrelay
from .servers import PrivateRedis


def chat(words: int = 5, delay_s: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "go"}],
        "metadata": {"mock": {"words": words, "delay_s": delay_s}},
        **extra,
    }


async def read_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[str]:
    """A stream's `data:` lines, to its end."""
    async with client.stream("POST", f"{url}/ai/stream/chat", json=body) as response:
        assert response.status_code == 200, await response.aread()
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


def end_reason(lines: list[str]) -> str:
    assert lines[-1] == "[DONE]", lines[-3:]
    reason: str = json.loads(lines[-2])["reason"]
    return reason


@pytest.fixture
async def redis_down(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A private Redis, not started (the test starts it)."""
    root = tmp_path / "redis"
    root.mkdir()
    server = PrivateRedis(root)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("auth", ["none", "anonymous"])
async def test_an_instance_started_before_redis_serves_once_redis_is_up(
    redis_down: PrivateRedis, tmp_path: Path, auth: str
) -> None:
    env = chatrelay_env(
        REDIS_URL=redis_down.url,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chat.db",
        CHATRELAY_AUTH=auth,  # anonymous: quotas (in Redis) first; none: no quotas
        CHATRELAY_LOG_FORMAT="text",
    )
    started: list[Process] = []
    try:
        a, port_a, health = await launch_chatrelay("a", env, tmp_path / "a", started, set())
        url_a = f"http://127.0.0.1:{port_a}"
        async with httpx.AsyncClient(timeout=10) as client:
            # Started, alive, not ready; what needs Redis is a JSON 503 (the conversation the
            # refused request named is left unlocked: sent to again below).
            assert a.alive
            ready = await client.get(f"{url_a}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["redis"].startswith("failed")
            refused = await client.post(f"{url_a}/ai/stream/chat", json=chat(conversation_id="c1"))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "storage_unavailable"
            assert refused.headers["retry-after"]
            # One warning for the outage, no traceback.
            output = a.output()
            assert output.count("Redis is unreachable (") == 1, output
            assert "Traceback" not in output, output

            await asyncio.to_thread(redis_down.start)
            came_up = time.monotonic()
            while (await client.get(f"{url_a}/readyz")).status_code != 200:
                assert time.monotonic() - came_up < 5, "/readyz not 200 within 5 s"
                await asyncio.sleep(0.05)
            # The lease loop has written this instance's lease by itself.
            redis = Redis.from_url(redis_down.url)
            try:
                lease = f"chatrelay:i:{health['instance']}"
                while not await redis.exists(lease):
                    assert time.monotonic() - came_up < 5, "no lease within 5 s"
                    await asyncio.sleep(0.05)
            finally:
                await redis.aclose()

            lines = await read_stream(client, url_a, chat(conversation_id="c1"))
            assert end_reason(lines) == "completed"
            assert "Redis is reachable again after" in a.output()

            # A Stop through another instance reaches this one's control channel (subscribed
            # once Redis came up) and is confirmed.
            b, port_b, _ = await launch_chatrelay("b", env, tmp_path / "b", started, {port_a})
            url_b = f"http://127.0.0.1:{port_b}"
            async with client.stream(
                "POST", f"{url_a}/ai/stream/chat", json=chat(words=500, delay_s=0.02)
            ) as response:
                assert response.status_code == 200
                stream_id = response.headers["x-stream-id"]
                lines = []
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    lines.append(line[6:])
                    if len(lines) == 5:
                        stop = await client.post(f"{url_b}/ai/stream/{stream_id}/stop")
                        assert stop.status_code == 200, stop.text
                        assert stop.json()["status"] == "stopped"
            assert end_reason(lines) == "stopped"
            assert len(lines) < 100
            assert "Traceback" not in a.output() + b.output()
    finally:
        for process in started:
            code = await process.stop()
            print(f"----- {process.name} (exit {code}) -----\n{process.output()}")
