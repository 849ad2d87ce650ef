"""SIGTERM to a real `chatrelay serve` while `/v1/chat/completions` streams are running.

The streams relay a slow loopback upstream (a 15 s reply), longer than the shutdown grace: each
must run on for the grace, then end with OpenAI's error chunk (`server_restarting`) and
`data: [DONE]`, as `/ai/stream/chat` streams do; the process must exit 0 about as soon.
Read once by the real `openai` SDK (which raises the error chunk as an `APIError`) and once
as raw SSE lines (the exact wire).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario
from .processes import Process, chatrelay_env, running_chatrelay

GRACE_S = 2
BODY: dict[str, Any] = {"messages": [{"role": "user", "content": "A long story, please"}]}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    slow = OpenAIScenario(deltas=[f"w{i} " for i in range(300)], interval=0.05)  # 15 s
    async with FakeOpenAI(default=slow) as upstream:
        yield upstream


@pytest.fixture
async def server(fake: FakeOpenAI, tmp_path: Path) -> AsyncIterator[tuple[Process, str]]:
    env = chatrelay_env(
        CHATRELAY_PROVIDER="openai",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test",
        CHATRELAY_MODEL="gpt-fake",
        CHATRELAY_AUTH="none",
        CHATRELAY_SHUTDOWN_GRACE_S=str(GRACE_S),
        CHATRELAY_LOG_FORMAT="text",
    )
    async with running_chatrelay(env, tmp_path) as running:
        yield running


async def read_raw(url: str, started: asyncio.Event) -> list[tuple[float, str]]:
    """Every `data:` line of one stream, with when it arrived."""
    lines: list[tuple[float, str]] = []
    async with (
        httpx.AsyncClient(timeout=30) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json={**BODY, "stream": True}) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                lines.append((time.monotonic(), line[6:]))
                if len(lines) == 5:
                    started.set()
    return lines


async def read_sdk(url: str, started: asyncio.Event) -> tuple[str, openai.APIError | None]:
    """The text the SDK assembled, and the error it raised (if any)."""
    text: list[str] = []
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30
    ) as sdk:
        stream = await sdk.chat.completions.create(model="gpt-fake", stream=True, **BODY)
        try:
            async with stream:
                async for chunk in stream:
                    text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
                    if len(text) == 5:
                        started.set()
        except openai.APIError as error:
            return "".join(text), error
    return "".join(text), None


async def test_sigterm_ends_v1_streams_with_an_error_chunk_and_done_within_the_grace(
    fake: FakeOpenAI, server: tuple[Process, str]
) -> None:
    process, url = server
    raw_started, sdk_started = asyncio.Event(), asyncio.Event()
    raw = asyncio.create_task(read_raw(url, raw_started))
    sdk = asyncio.create_task(read_sdk(url, sdk_started))
    await asyncio.wait_for(asyncio.gather(raw_started.wait(), sdk_started.wait()), 15)
    process.send(signal.SIGTERM)
    terminated = time.monotonic()
    lines, (text, error) = await asyncio.wait_for(asyncio.gather(raw, sdk), 30)
    code = await process.wait(GRACE_S + 10)
    took = time.monotonic() - terminated
    print(f"shutdown took {took:.2f} s with a {GRACE_S} s grace")

    # The raw wire: chunks, then one OpenAI error chunk, then [DONE], and nothing else.
    *chunks, (error_at, last_chunk), (_, done) = lines
    assert done == "[DONE]"
    assert json.loads(last_chunk) == {
        "error": {
            "message": "The server is restarting; send the request again in a moment",
            "type": "api_error",
            "param": None,
            "code": "server_restarting",
        }
    }
    assert all(json.loads(c)["object"] == "chat.completion.chunk" for _, c in chunks)
    # The stream ran on for the grace, then was ended.
    assert GRACE_S - 0.2 < error_at - terminated < GRACE_S + 1
    assert chunks[-1][0] > terminated + GRACE_S / 2
    assert len(chunks) < 300
    # The SDK saw part of the reply, then raised the error chunk.
    assert isinstance(error, openai.APIError)
    assert isinstance(error.body, dict) and error.body["code"] == "server_restarting"
    assert "".join(f"w{i} " for i in range(300)).startswith(text) and text
    # The upstream requests were closed, and the process is gone within the grace and a bit.
    assert len(fake.requests) == 2
    assert all(r.outcome == "client_gone" for r in fake.requests)
    assert code == 0, f"exit code {code}"
    assert took < GRACE_S + 1.5, f"shutdown took {took:.1f} s with a {GRACE_S} s grace"
