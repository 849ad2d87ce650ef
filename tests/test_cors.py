"""CORS: the browser frontend's origin may call the API; others may not, once money is at stake."""

from __future__ import annotations

import httpx

from .conftest import make_settings, serve

PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type,authorization",
}


async def preflight(client: httpx.AsyncClient, url: str, origin: str) -> httpx.Response:
    return await client.options(f"{url}/ai/stream/chat", headers={"origin": origin, **PREFLIGHT})


async def test_any_origin_is_allowed_while_the_mock_is_live(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await preflight(client, url, "http://localhost:5173")
        streamed = await client.post(
            f"{url}/ai/stream/chat",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"origin": "http://localhost:5173"},
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert streamed.headers["access-control-allow-origin"] == "*"
    assert "x-stream-id" in streamed.headers["access-control-expose-headers"].lower()


async def test_no_origin_is_allowed_by_default_with_a_paid_provider(
    client: httpx.AsyncClient,
) -> None:
    settings = make_settings(provider="anthropic", anthropic_api_key="sk-test")
    async with serve(settings) as url:
        response = await preflight(client, url, "https://evil.example")
    assert "access-control-allow-origin" not in response.headers


async def test_configured_origins_are_allowed_and_others_refused(
    client: httpx.AsyncClient,
) -> None:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-test",
        cors_origins="https://app.example, https://staging.app.example",
    )
    async with serve(settings) as url:
        allowed = await preflight(client, url, "https://staging.app.example")
        refused = await preflight(client, url, "https://evil.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://staging.app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_a_body_not_declared_as_json_is_refused_so_no_page_can_spend_cross_site(
    client: httpx.AsyncClient,
) -> None:
    """A form or text/plain POST needs no preflight: any web page could make its visitors'
    browsers send one and spend the operator's anonymous quota (F10)."""
    body = '{"messages": [{"role": "user", "content": "hi"}]}'
    settings = make_settings(provider="mock", auth="anonymous")
    async with serve(settings) as url:
        plain = await client.post(
            f"{url}/ai/chat", content=body, headers={"content-type": "text/plain"}
        )
        form = await client.post(
            f"{url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        json_utf8 = await client.post(
            f"{url}/ai/chat",
            content=body,
            headers={"content-type": "application/json; charset=utf-8"},
        )
        undeclared = await client.post(f"{url}/ai/chat", content=body)
    assert plain.status_code == 415
    assert plain.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in plain.json()["error"]["message"]
    assert form.status_code == 415 and form.json()["error"]["type"] == "invalid_request_error"
    assert json_utf8.status_code == 200 and json_utf8.json()["content"]
    assert undeclared.status_code == 200  # no Content-Type at all is no cross-site form
