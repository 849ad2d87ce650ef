"""Shared fixtures: the app served by a real uvicorn on a loopback port, and SSE readers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from httpx_sse import ServerSentEvent, aconnect_sse

from chatrelay.app import create_app
from chatrelay.settings import Settings

USER_HI = [{"role": "user", "content": "Hi there"}]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Tests build their own settings: nothing from the developer's environment leaks in."""
    import os

    for name in list(os.environ):
        if name.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_")) or name == "PORT":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def make_settings(**values: Any) -> Settings:
    """Settings from field names (not env names), e.g. make_settings(provider="mock")."""
    base: dict[str, Any] = {"mock_delay_s": 0.0}
    base.update(values)
    return Settings.model_validate(base, by_name=True)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """Run the app on uvicorn (real HTTP, real disconnects) and yield its base URL."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class StreamResult:
    """Everything a client saw of one SSE response."""

    status: int
    headers: httpx.Headers
    events: list[ServerSentEvent]

    @property
    def text(self) -> str:
        return "".join(json.loads(e.data)["content"] for e in self.content_events)

    @property
    def content_events(self) -> list[ServerSentEvent]:
        return [e for e in self.events if e.event == "message" and e.data.startswith('{"content"')]

    def named(self, name: str) -> dict[str, Any]:
        [event] = [e for e in self.events if e.event == name]
        parsed: dict[str, Any] = json.loads(event.data)
        return parsed

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [
            json.loads(e.data)
            for e in self.events
            if e.event == "message" and e.data.startswith('{"error"')
        ]


async def stream_chat(
    client: httpx.AsyncClient, base_url: str, body: dict[str, Any], **kwargs: Any
) -> StreamResult:
    async with aconnect_sse(
        client, "POST", f"{base_url}/ai/stream/chat", json=body, **kwargs
    ) as source:
        events = [event async for event in source.aiter_sse()]
        return StreamResult(source.response.status_code, source.response.headers, events)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


ServeFactory = Callable[..., Any]
