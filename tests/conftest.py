"""Shared fixtures: the app served by a real uvicorn on a loopback port, and SSE readers."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
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
    for name in list(os.environ):
        if name.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_")) or name in (
            "PORT",
            "DATABASE_URL",
            "REDIS_URL",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


# The PostgreSQL server the storage tests run against (each test gets a database of its own).
# .ci/run starts the server if it is down; the project's machines run one with trust auth.
POSTGRES_URL = os.environ.get(
    "CHATRELAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    import asyncpg
    from sqlalchemy.engine import make_url

    admin_url = make_url(POSTGRES_URL)
    name = f"chatrelay_test_{uuid.uuid4().hex[:16]}"
    dsn = admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL at {admin_url.render_as_string()} is not reachable ({exc}); start it or"
            " set CHATRELAY_TEST_DATABASE_URL (.ci/run does both)"
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield admin_url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
            hide_password=False
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """The same storage test runs on SQLite (a temp file) and on a real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/chatrelay.db"
    else:
        async with postgres_database() as url:
            yield url


REDIS_URL = os.environ.get("CHATRELAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the test Redis; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    prefix = f"chatrelay-test-{uuid.uuid4().hex[:12]}"
    redis = Redis.from_url(REDIS_URL)
    try:
        await redis.ping()
    except Exception as exc:
        pytest.fail(
            f"Redis at {REDIS_URL} is not reachable ({exc}); start it or set"
            " CHATRELAY_TEST_REDIS_URL (.ci/run does both)"
        )
    try:
        yield prefix
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


def make_settings(**values: Any) -> Settings:
    """Settings from field names (not env names), e.g. make_settings(provider="mock")."""
    # Auth is off unless a test turns it on (a paid provider needs CHATRELAY_AUTH set).
    base: dict[str, Any] = {"mock_delay_s": 0.0, "auth": "none"}
    base.update(values)
    return Settings.model_validate(base, by_name=True)


def serve(settings: Settings) -> Any:
    """Run the app on uvicorn (real HTTP, real disconnects) and yield its base URL."""
    return serve_app(create_app(settings))


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        loop="none",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        proxy_headers=False,  # as `chatrelay serve` runs it
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
        """The error frames, each checked to carry a request id, which is then left out."""
        return [
            without_request_id(json.loads(e.data))
            for e in self.events
            if e.event == "message" and e.data.startswith('{"error"')
        ]


def without_request_id(error: dict[str, Any]) -> dict[str, Any]:
    """An error body or frame minus its `request_id` (which must be there, and sane)."""
    rest = dict(error)
    request_id = rest.pop("request_id", None)
    assert isinstance(request_id, str) and 1 <= len(request_id) <= 64, error
    return rest


def error_of(response: httpx.Response) -> dict[str, Any]:
    """A JSON error response's `error` object, minus its request id."""
    return without_request_id(response.json()["error"])


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
