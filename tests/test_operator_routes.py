"""Operator routes: `/metrics` for the operator only, `/docs` and `/openapi.json` optional."""

from __future__ import annotations

from typing import Any

import httpx

from .test_access import bearer, running

METRICS_TOKEN = "scrape-token-0123456789"


async def test_metrics_need_an_admin_key_or_the_metrics_token_once_auth_is_on(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    async with running(tmp_path, provider="mock", auth="api_key", metrics_token=METRICS_TOKEN) as (
        url,
        app,
    ):
        user, _ = await app.state.services.keys.create("frontend")
        admin, _ = await app.state.services.keys.create("ops", admin=True)
        anonymous = await client.get(f"{url}/metrics")
        as_user = await client.get(f"{url}/metrics", headers=bearer(user))
        as_admin = await client.get(f"{url}/metrics", headers=bearer(admin))
        scraper = await client.get(f"{url}/metrics", headers=bearer(METRICS_TOKEN))
        wrong = await client.get(f"{url}/metrics", headers=bearer(METRICS_TOKEN + "x"))
        basic = await client.get(f"{url}/metrics", headers={"authorization": "Basic b3BzOng="})
        health = await client.get(f"{url}/healthz")
    assert anonymous.status_code == 401
    assert as_user.status_code == 403
    assert as_user.json()["error"]["code"] == "forbidden"
    assert "CHATRELAY_METRICS_TOKEN" in as_user.json()["error"]["message"]
    assert as_admin.status_code == 200 and "chatrelay_requests_total" in as_admin.text
    assert scraper.status_code == 200 and "chatrelay_requests_total" in scraper.text
    assert wrong.status_code == 401
    assert METRICS_TOKEN not in wrong.text
    # Another scheme is the caller's mistake, named: not a server error.
    assert basic.status_code == 401 and "Bearer" in basic.json()["error"]["message"]
    assert health.status_code == 200  # liveness stays open for load balancers


async def test_an_open_server_keeps_its_metrics_open(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    async with running(tmp_path, provider="mock") as (url, _):
        response = await client.get(f"{url}/metrics")
    assert response.status_code == 200 and "chatrelay_requests_total" in response.text


async def test_the_api_docs_can_be_turned_off(client: httpx.AsyncClient, tmp_path: Any) -> None:
    async with running(tmp_path, provider="mock") as (url, _):
        on = [(await client.get(f"{url}{path}")).status_code for path in ("/docs", "/openapi.json")]
    async with running(tmp_path, provider="mock", api_docs=False) as (url, _):
        off = [
            (await client.get(f"{url}{path}")).status_code for path in ("/docs", "/openapi.json")
        ]
    assert on == [200, 200]
    assert off == [404, 404]
