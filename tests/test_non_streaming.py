"""The non-streaming endpoints (`POST /ai/chat`, `/v1/chat/completions` without `stream`)
when their client leaves before the reply is complete: nobody is billed for the rest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from .conftest import make_settings, serve
from .fakes.anthropic_upstream import FakeAnthropic, Scenario

HI = [{"role": "user", "content": "Tell me a long story"}]
WORD = "word "


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        upstream.default = Scenario(deltas=[WORD] * 20, interval=0.5)  # a 10 s reply
        yield upstream


async def stored_reply(client: httpx.AsyncClient, url: str, conversation_id: str) -> dict[str, Any]:
    """The conversation's last message, once the reply has been stored."""
    for _ in range(100):
        messages = (await client.get(f"{url}/conversations/{conversation_id}")).json()["messages"]
        if messages[-1]["role"] == "assistant":
            last: dict[str, Any] = messages[-1]
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"no reply stored in {conversation_id}")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/ai/chat", {"messages": HI, "conversation_id": "left-ai"}),
        (
            "/v1/chat/completions",
            {"messages": HI, "stream": False, "metadata": {"conversation_id": "left-v1"}},
        ),
    ],
    ids=["ai-chat", "v1"],
)
async def test_a_client_that_leaves_cancels_the_upstream_and_the_partial_reply_is_stored(
    client: httpx.AsyncClient, fake: FakeAnthropic, path: str, body: dict[str, Any]
) -> None:
    settings = make_settings(
        provider="anthropic", anthropic_api_key="sk-test", anthropic_base_url=fake.base_url
    )
    async with serve(settings) as url:
        # As `curl -m 1` does: give up after a second and close the connection.
        async with httpx.AsyncClient(timeout=1) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(f"{url}{path}", json=body)
        left = time.monotonic()
        [request] = fake.requests
        assert await request.wait_closed(3), "the upstream request ran on after the client left"
        conversation_id = body.get("conversation_id") or body["metadata"]["conversation_id"]
        reply = await stored_reply(client, url, conversation_id)
    assert request.outcome == "client_gone"
    assert request.disconnected_at is not None
    assert request.disconnected_at - left < 1.0
    assert request.deltas_sent < 5
    assert reply["end_reason"] == "disconnected"
    assert (WORD * 20).startswith(reply["content"])
