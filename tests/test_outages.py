"""A database or Redis outage answers 503 `storage_unavailable` in JSON, on every route (F9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from chatrelay.app import create_app

from .conftest import USER_HI, make_settings, serve_app
from .servers import private_postgres, private_redis

CHAT = {"messages": USER_HI}


def assert_outage(response: httpx.Response, *, openai_shape: bool = False) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "storage_unavailable"
    assert "try again" in error["message"]
    if openai_shape:
        assert error["type"] == "api_error"
    else:
        assert error["request_id"] == response.headers["x-request-id"]


async def test_a_database_outage_is_a_json_503_on_every_route(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    with private_postgres() as postgres:
        app = create_app(make_settings(provider="mock", auth="api_key", database_url=postgres.url))
        async with serve_app(app) as url:
            key, _ = await app.state.services.keys.create("frontend")
            unused, _ = await app.state.services.keys.create("batch")  # not in the key cache yet
            headers = {"authorization": f"Bearer {key}"}
            assert (await client.post(f"{url}/ai/chat", json=CHAT, headers=headers)).is_success
            postgres.stop()
            listed = await client.get(f"{url}/conversations", headers=headers)
            streamed = await client.post(f"{url}/ai/stream/chat", json=CHAT, headers=headers)
            completion = {"model": "mock", **CHAT}
            stateless = await client.post(
                f"{url}/v1/chat/completions", json=completion, headers=headers
            )
            unverifiable = await client.post(
                f"{url}/v1/chat/completions",
                json=completion,
                headers={"authorization": f"Bearer {unused}"},
            )
            ready = await client.get(f"{url}/readyz")
    assert_outage(listed)
    assert_outage(streamed)
    # /v1 stores nothing: with a key still in the key cache it keeps serving...
    assert stateless.status_code == 200
    # ...and a key that must be looked up in the database cannot be checked.
    assert_outage(unverifiable, openai_shape=True)
    assert ready.status_code == 503


async def test_a_redis_outage_is_a_json_503(client: httpx.AsyncClient, tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as redis:
        settings: dict[str, Any] = {
            "provider": "mock",
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
            "redis_url": redis.url,
        }
        async with serve_app(create_app(make_settings(**settings))) as url:
            assert (await client.post(f"{url}/ai/chat", json=CHAT)).is_success
            redis.stop()
            streamed = await client.post(f"{url}/ai/stream/chat", json=CHAT)
            resumed = await client.get(f"{url}/ai/stream/0123456789abcdef0123456789abcdef")
    assert_outage(streamed)
    assert_outage(resumed)
