"""Who gets in, what they may see, and how much they may spend."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from chatrelay.app import create_app
from chatrelay.conversation_ids import stored_id
from chatrelay.errors import ConfigError

from .conftest import (
    REDIS_URL,
    StreamResult,
    make_settings,
    redis_prefix,
    serve_app,
    stream_chat,
)
from .fakes.anthropic_upstream import FakeAnthropic, RecordedRequest, Scenario

HI = {"messages": [{"role": "user", "content": "hi"}]}
SECRET = "jwt-test-secret-that-is-long-enough-0123456789"


def uncached(content: Any) -> Any:
    """A message's content as the client sent it, without the prompt cache breakpoint
    chatrelay adds to a long one (tests/test_prompt_cache.py checks where they go)."""
    if isinstance(content, list) and len(content) == 1 and "cache_control" in content[0]:
        return content[0]["text"]
    return content


@asynccontextmanager
async def running(tmp_path: Any, **values: Any) -> AsyncIterator[tuple[str, Any]]:
    """A server and its app (to reach app.state, e.g. to create keys)."""
    values.setdefault("database_url", f"sqlite+aiosqlite:///{tmp_path}/access.db")
    app = create_app(make_settings(**values))
    async with serve_app(app) as url:
        yield url, app


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- startup rules ---------------------------------------------------------------------------


def test_a_paid_provider_without_chatrelay_auth_refuses_to_start() -> None:
    settings = make_settings(provider="anthropic", anthropic_api_key="sk-ant-x", auth=None)
    with pytest.raises(ConfigError, match="CHATRELAY_AUTH is not set") as refused:
        create_app(settings)
    assert "CHATRELAY_AUTH=none" in refused.value.message
    assert "chatrelay keys create" in refused.value.message


def test_auth_none_with_a_paid_provider_starts_with_a_loud_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    create_app(make_settings(provider="anthropic", anthropic_api_key="sk-ant-x", auth="none"))
    assert "ANYONE who can reach this server" in caplog.text


def test_the_mock_alone_needs_no_auth_setting() -> None:
    create_app(make_settings(provider="mock", auth=None))


def test_jwt_mode_needs_a_secret_or_a_jwks_url() -> None:
    with pytest.raises(ConfigError, match="CHATRELAY_JWT_SECRET"):
        create_app(make_settings(provider="mock", auth="jwt"))


def test_unknown_modes_and_bad_limits_are_named() -> None:
    with pytest.raises(Exception, match="unknown mode"):
        make_settings(provider="mock", auth="api_key,password")
    with pytest.raises(ConfigError, match="CHATRELAY_LIMITS_USER"):
        create_app(make_settings(provider="mock", auth="none", limits_user="rpm=lots"))


# -- API keys --------------------------------------------------------------------------------


async def test_api_keys_are_accepted_and_rejected(client: httpx.AsyncClient, tmp_path: Any) -> None:
    async with running(tmp_path, provider="mock", auth="api_key", key_cache_s=0) as (url, app):
        key, row = await app.state.services.keys.create("frontend")
        missing = await client.post(f"{url}/ai/stream/chat", json=HI)
        basic = await client.post(
            f"{url}/ai/stream/chat", json=HI, headers={"authorization": "Basic x"}
        )
        wrong = await client.post(f"{url}/ai/stream/chat", json=HI, headers=bearer(key[:-2] + "xx"))
        unknown = await client.post(
            f"{url}/ai/stream/chat", json=HI, headers=bearer("crk_000000000000_" + "a" * 43)
        )
        ok = await stream_chat(client, url, HI, headers=bearer(key))
        me = (await client.get(f"{url}/me", headers=bearer(key))).json()
        listed = await app.state.services.keys.all()
        await app.state.services.keys.revoke(row.id)
        revoked = await client.post(f"{url}/ai/stream/chat", json=HI, headers=bearer(key))
        health = await client.get(f"{url}/healthz")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]
    assert basic.status_code == 401
    assert wrong.status_code == 401 and unknown.status_code == 401
    assert key not in wrong.text
    assert ok.named("end")["reason"] == "completed"
    assert me["principal"] == {
        "id": f"key:{row.id}",
        "kind": "api_key",
        "admin": False,
        "name": "frontend",
    }
    assert me["limits"]["requests_per_minute"]["limit"] == 600
    assert listed[0].last_used_at is not None
    assert listed[0].secret_hash != key and key not in json.dumps(
        {c: str(getattr(listed[0], c)) for c in ("id", "name", "secret_hash")}
    )
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    assert health.status_code == 200  # health checks need no credentials


async def test_per_key_limits_override_the_defaults(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    async with running(tmp_path, provider="mock", auth="api_key") as (url, app):
        key, _ = await app.state.services.keys.create("batch", rpm=2, daily_tokens=50_000)
        me = (await client.get(f"{url}/me", headers=bearer(key))).json()["limits"]
    assert me["requests_per_minute"]["limit"] == 2
    assert me["tokens_per_day"]["limit"] == 50_000
    assert me["concurrent_streams"]["limit"] == 50  # the api_key default


# -- JWT -------------------------------------------------------------------------------------


def token(
    claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", kid: str | None = None
) -> str:
    base = {
        "sub": "alice",
        "exp": int(time.time()) + 300,
        "aud": "chat",
        "iss": "https://auth.example",
    }
    headers = {"kid": kid} if kid else None
    return jwt.encode(base | claims, key, algorithm=alg, headers=headers)


async def test_jwts_are_checked_for_signature_expiry_audience_and_issuer(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    settings = {
        "provider": "mock",
        "auth": "jwt",
        "jwt_secret": SECRET,
        "jwt_audience": "chat",
        "jwt_issuer": "https://auth.example",
        "jwt_leeway_s": 5,
    }
    cases = {
        "valid": token({}),
        "expired": token({"exp": int(time.time()) - 60}),
        "within leeway": token({"exp": int(time.time()) - 2}),
        "wrong signature": token({}, key="another-secret-that-is-also-long-enough-xx"),
        "wrong audience": token({"aud": "billing"}),
        "wrong issuer": token({"iss": "https://evil.example"}),
        "no subject": jwt.encode(
            {"exp": int(time.time()) + 60, "aud": "chat", "iss": "https://auth.example"}, SECRET
        ),
        "garbage": "abc.def.ghi",
        "empty subject": token({"sub": ""}),
        "blank subject": token({"sub": "  "}),
    }
    async with running(tmp_path, **settings) as (url, _):
        answers = {
            name: await client.get(f"{url}/me", headers=bearer(t)) for name, t in cases.items()
        }
    assert answers["valid"].status_code == 200
    assert answers["valid"].json()["principal"]["id"] == "user:alice"
    assert answers["within leeway"].status_code == 200
    messages = {
        name: r.json()["error"]["message"] for name, r in answers.items() if r.status_code == 401
    }
    assert set(messages) == {
        "expired",
        "wrong signature",
        "wrong audience",
        "wrong issuer",
        "no subject",
        "garbage",
        "empty subject",
        "blank subject",
    }
    assert "subject" in messages["empty subject"]
    assert "expired" in messages["expired"]
    assert "audience" in messages["wrong audience"]
    assert "issuer" in messages["wrong issuer"]
    for name, message in messages.items():
        assert cases[name] not in message


class JWKSServer:
    """A local JWKS endpoint whose key set the test can rotate."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.stalled = threading.Event()  # while set, requests hang (until released)
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                if outer.stalled.is_set():
                    outer.release.wait(30)
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def publish(self, private_key: Any, kid: str, alg: str) -> None:
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[alg].to_jwk(private_key.public_key())
        )
        self.keys = [jwk | {"kid": kid, "alg": alg, "use": "sig"}]


@contextmanager
def jwks_server() -> Iterator[JWKSServer]:
    server = JWKSServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


def jwks_settings(jwks: JWKSServer, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "mock",
        "auth": "jwt",
        "jwt_jwks_url": jwks.url,
        "jwt_audience": "chat",
        "jwks_cooldown_s": 0,
        **extra,
    }


async def test_a_jwks_url_serves_rotating_rsa_and_ec_keys(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    second = ec.generate_private_key(ec.SECP256R1())
    with jwks_server() as jwks:
        jwks.publish(first, "k1", "RS256")
        async with running(tmp_path, **jwks_settings(jwks)) as (url, _):
            before = await client.get(f"{url}/me", headers=bearer(token({}, first, "RS256", "k1")))
            jwks.publish(second, "k2", "ES256")  # the provider rotates its key
            after = await client.get(
                f"{url}/me", headers=bearer(token({"sub": "bob"}, second, "ES256", "k2"))
            )
            retired = await client.get(f"{url}/me", headers=bearer(token({}, first, "RS256", "k1")))
            forged = await client.get(
                f"{url}/me",
                headers=bearer(
                    token(
                        {},
                        rsa.generate_private_key(public_exponent=65537, key_size=2048),
                        "RS256",
                        "k9",
                    )
                ),
            )
    assert before.status_code == 200 and before.json()["principal"]["id"] == "user:alice"
    assert after.status_code == 200 and after.json()["principal"]["id"] == "user:bob"
    assert retired.status_code == 401
    assert forged.status_code == 401 and "signing key" in forged.json()["error"]["message"]
    assert jwks.fetches >= 2


async def test_a_stalled_jwks_never_delays_a_token_with_a_known_key(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with jwks_server() as jwks:
        jwks.publish(signer, "k1", "RS256")
        async with running(tmp_path, **jwks_settings(jwks, jwks_timeout_s=1)) as (url, _):
            assert (
                await client.get(f"{url}/me", headers=bearer(token({}, signer, "RS256", "k1")))
            ).status_code == 200
            jwks.stalled.set()  # the provider's JWKS endpoint now hangs
            unknown = asyncio.create_task(
                client.get(f"{url}/me", headers=bearer(token({}, signer, "RS256", "k2")))
            )
            await asyncio.sleep(0.2)  # its fetch is now hanging
            started = time.monotonic()
            known = await client.get(f"{url}/me", headers=bearer(token({}, signer, "RS256", "k1")))
            known_took = time.monotonic() - started
            refused = await unknown
            refused_took = time.monotonic() - started
    assert known.status_code == 200 and known.json()["principal"]["id"] == "user:alice"
    assert known_took < 0.5  # not the fetch's 1 s timeout, nor the JWKS's stall
    assert refused.status_code == 401
    assert "signing key" in refused.json()["error"]["message"]
    assert refused_took < 3  # the unknown key waited for the timeout only, not the stall


# -- anonymous -------------------------------------------------------------------------------


async def test_anonymous_callers_are_told_apart_by_address(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    forwarded = {"x-forwarded-for": "198.51.100.9, 203.0.113.7"}
    async with running(tmp_path, provider="mock", auth="anonymous") as (url, _):
        direct = (await client.get(f"{url}/me", headers=forwarded)).json()["principal"]
    async with running(
        tmp_path, provider="mock", auth="anonymous", trusted_proxies="127.0.0.0/8"
    ) as (url, _):
        proxied = (await client.get(f"{url}/me", headers=forwarded)).json()["principal"]
        limits = (await client.get(f"{url}/me")).json()["limits"]
        made_up = [
            (await client.get(f"{url}/me", headers={"x-forwarded-for": value})).json()
            for value in ("garbage", "x" * 5000, "203.0.113.7, not-an-ip")
        ]
    assert direct["id"] == "anon:127.0.0.1"  # X-Forwarded-For from an untrusted peer is ignored
    assert proxied["id"] == "anon:203.0.113.7"  # the nearest untrusted hop
    assert limits["requests_per_minute"]["limit"] == 5
    # A value that is not an address is the client's own invention: it picks no identity.
    assert [me["principal"]["id"] for me in made_up] == ["anon:127.0.0.1"] * 3


async def test_preflight_needs_no_credentials(client: httpx.AsyncClient, tmp_path: Any) -> None:
    settings = {"provider": "mock", "auth": "api_key", "cors_origins": "https://app.example"}
    async with running(tmp_path, **settings) as (url, _):
        response = await client.options(
            f"{url}/ai/stream/chat",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type",
            },
        )
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


# -- ownership -------------------------------------------------------------------------------


async def test_no_principal_sees_anothers_conversations_or_streams(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    settings = {"provider": "mock", "auth": "api_key", "mock_delay_s": 0.05, "resume_grace_s": 5}
    async with running(tmp_path, **settings) as (url, app):
        alice, alice_row = await app.state.services.keys.create("alice")
        bob, bob_row = await app.state.services.keys.create("bob")
        root, _ = await app.state.services.keys.create("ops", admin=True)
        body = {**HI, "metadata": {"mock": {"words": 40}}}
        async with client.stream(
            "POST", f"{url}/ai/stream/chat", json=body, headers=bearer(alice)
        ) as r:
            sid, cid = r.headers["x-stream-id"], r.headers["x-conversation-id"]
            as_bob = bearer(bob)
            answers = {
                "list": await client.get(f"{url}/conversations", headers=as_bob),
                "get": await client.get(f"{url}/conversations/{cid}", headers=as_bob),
                "patch": await client.patch(
                    f"{url}/conversations/{cid}", json={"title": "x"}, headers=as_bob
                ),
                "delete": await client.delete(f"{url}/conversations/{cid}", headers=as_bob),
                "resume": await client.get(f"{url}/ai/stream/{sid}", headers=as_bob),
                "stop": await client.post(f"{url}/ai/stream/{sid}/stop", headers=as_bob),
                "usage": await client.get(f"{url}/usage", headers=as_bob),
            }
            # Alice's id in Bob's mouth names a conversation of his own, a new one.
            bobs = await client.post(
                f"{url}/ai/stream/chat", json={**HI, "conversation_id": cid}, headers=as_bob
            )
            # An admin sees every conversation, another namespace's by its whole stored id.
            admin_list = await client.get(f"{url}/conversations", headers=bearer(root))
            listed = {c["id"] for c in admin_list.json()["data"]}
            alices = stored_id(f"key:{alice_row.id}", cid)
            admin_view = await client.get(f"{url}/conversations/{alices}", headers=bearer(root))
            admin_stop = await client.post(f"{url}/ai/stream/{sid}/stop", headers=bearer(root))
            await r.aread()
        own = await client.get(f"{url}/conversations/{cid}", headers=bearer(alice))
    assert answers["list"].json()["data"] == []
    for name in ("get", "patch", "delete", "resume", "stop"):
        assert answers[name].status_code == 404, name
        assert answers[name].json()["error"]["code"] == "not_found", name
    assert answers["usage"].json()["data"] == []
    assert bobs.status_code == 200 and bobs.headers["x-conversation-id"] == cid
    # Alice's and Bob's, both named cid to them, whole to the admin.
    assert listed == {alices, stored_id(f"key:{bob_row.id}", cid)}, listed
    assert admin_view.status_code == 200 and admin_view.json()["id"] == alices
    assert admin_stop.json()["status"] == "stopped"
    assert own.status_code == 200 and own.json()["title"] == "hi"
    assert own.json()["id"] == cid and len(own.json()["messages"]) == 2  # Bob's turn is his


# -- limits ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def limits_backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "memory":
        yield {}
    else:
        async with redis_prefix() as prefix:
            yield {"redis_url": REDIS_URL, "redis_prefix": prefix}


async def test_requests_per_minute(
    client: httpx.AsyncClient, tmp_path: Any, limits_backend: dict[str, Any]
) -> None:
    settings = {
        "provider": "mock",
        "auth": "anonymous",
        "limits_anonymous": "rpm=2",
        **limits_backend,
    }
    async with running(tmp_path, **settings) as (url, _):
        answers = [await client.post(f"{url}/ai/stream/chat", json=HI) for _ in range(3)]
        me = (await client.get(f"{url}/me")).json()["limits"]["requests_per_minute"]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.json()["error"]["code"] == "limit_exceeded"
    assert "requests_per_minute is 2" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-scope"] == "requests_per_minute"
    assert me["remaining"] == 0


async def test_concurrent_streams(
    client: httpx.AsyncClient, tmp_path: Any, limits_backend: dict[str, Any]
) -> None:
    settings = {
        "provider": "mock",
        "auth": "anonymous",
        "limits_anonymous": "concurrency=1",
        "mock_delay_s": 0.02,
        **limits_backend,
    }
    body = {**HI, "metadata": {"mock": {"words": 30}}}
    async with running(tmp_path, **settings) as (url, _):
        first = asyncio.create_task(stream_chat(client, url, body))
        await asyncio.sleep(0.2)
        second = await client.post(f"{url}/ai/stream/chat", json=body)
        await first
        third = await client.post(f"{url}/ai/stream/chat", json=HI)
    assert second.status_code == 429
    assert second.headers["x-ratelimit-scope"] == "concurrent_streams"
    assert third.status_code == 200  # the first stream's slot was given back


async def test_token_budgets_are_reserved_up_front_and_settled_from_usage(
    client: httpx.AsyncClient, tmp_path: Any, limits_backend: dict[str, Any]
) -> None:
    async with FakeAnthropic() as fake:
        fake.default = Scenario(deltas=["ok"], input_tokens=7, output_tokens=3)
        settings = {
            "provider": "anthropic",
            "anthropic_api_key": "sk-ant-test",
            "anthropic_base_url": fake.base_url,
            "auth": "anonymous",
            "limits_anonymous": "tpm=3000,daily_tokens=1000",
            **limits_backend,
        }
        async with running(tmp_path, **settings) as (url, _):
            small = await stream_chat(client, url, {**HI, "max_tokens": 500})
            after_small = (await client.get(f"{url}/me")).json()["limits"]
            too_big = await client.post(f"{url}/ai/stream/chat", json={**HI, "max_tokens": 995})
            over_minute = await client.post(
                f"{url}/ai/stream/chat", json={**HI, "max_tokens": 3500}
            )
    assert small.named("end")["reason"] == "completed"
    # 500 + the estimated input were reserved; 7 + 3 were used and kept.
    assert after_small["tokens_per_day"]["remaining"] == 990
    assert after_small["tokens_per_minute"]["remaining"] == 2990
    assert too_big.status_code == 429
    assert too_big.headers["x-ratelimit-scope"] == "tokens_per_day"
    # More than the whole per-minute budget can never pass: no "try again in N s" for it.
    assert over_minute.status_code == 422
    assert over_minute.json()["error"]["code"] == "request_over_limit"
    assert "tokens_per_minute limit of 3000" in over_minute.json()["error"]["message"]
    assert over_minute.json()["error"]["fields"][0]["field"] == "max_tokens"
    assert "retry-after" not in over_minute.headers
    assert len(fake.requests) == 1  # refused before the upstream was called


LONG = "x" * 30_000  # about 7,500 tokens
TOKEN_SCOPES = pytest.mark.parametrize("scope", ["tokens_per_minute", "tokens_per_day"])


@dataclass
class LongTurns:
    """A long turn accepted, a second long one refused, then a short one (all one
    conversation), and what the caller, the store and the upstream saw of them."""

    first: StreamResult
    refused: httpx.Response
    remaining: int  # of the refused turn's scope, just after it
    short: StreamResult
    stored: dict[str, Any]
    upstream: list[RecordedRequest]

    def assert_refused_before_the_provider_and_the_store(self) -> None:
        assert self.first.named("end")["reason"] == "completed"
        # The next turn is accepted, and the refused message was never stored or sent.
        assert self.short.named("end")["reason"] == "completed"
        assert len(self.upstream) == 2
        sent = [uncached(m["content"]) for m in self.upstream[1].body["messages"]]
        assert sent == [LONG, "ok", "and a short one"]
        assert [m["content"] for m in self.stored["messages"]] == [*sent, "ok"]


async def long_turns(
    client: httpx.AsyncClient,
    tmp_path: Any,
    backend: dict[str, Any],
    scope: str,
    budget: int,
    input_tokens: int,
) -> LongTurns:
    """`input_tokens` is what the upstream reports (and so what the first turn is billed)."""
    async with FakeAnthropic() as fake:
        fake.default = Scenario(deltas=["ok"], input_tokens=input_tokens, output_tokens=3)
        limit = {"tokens_per_minute": "tpm", "tokens_per_day": "daily_tokens"}[scope]
        settings = {
            "provider": "anthropic",
            "anthropic_api_key": "sk-ant-test",
            "anthropic_base_url": fake.base_url,
            "auth": "anonymous",
            "limits_anonymous": f"{limit}={budget}",
            **backend,
        }

        def turn(content: str) -> dict[str, Any]:
            return {
                "messages": [{"role": "user", "content": content}],
                "conversation_id": "long-history",
                "max_tokens": 100,
            }

        async with running(tmp_path, **settings) as (url, _):
            first = await stream_chat(client, url, turn(LONG))
            # Alone the second would fit (7,600 reserved); with its history it is about
            # 15,100 tokens upstream.
            refused = await client.post(f"{url}/ai/stream/chat", json=turn(LONG))
            remaining = (await client.get(f"{url}/me")).json()["limits"][scope]["remaining"]
            short = await stream_chat(client, url, turn("and a short one"))
            stored = (await client.get(f"{url}/conversations/long-history")).json()
        return LongTurns(first, refused, remaining, short, stored, list(fake.requests))


@TOKEN_SCOPES
async def test_the_reservation_counts_the_stored_history_sent_upstream(
    client: httpx.AsyncClient, tmp_path: Any, limits_backend: dict[str, Any], scope: str
) -> None:
    # 7,503 of 20,000 used by the first turn: the second fits the budget, not what is left.
    turns = await long_turns(client, tmp_path, limits_backend, scope, 20_000, 7_500)
    assert turns.refused.status_code == 429
    assert turns.refused.json()["error"]["code"] == "limit_exceeded"
    assert turns.refused.headers["x-ratelimit-scope"] == scope
    assert turns.remaining == 20_000 - 7_503  # the refused reservation was given back
    turns.assert_refused_before_the_provider_and_the_store()


@TOKEN_SCOPES
async def test_a_history_larger_than_the_whole_budget_loses_its_oldest_turns(
    client: httpx.AsyncClient, tmp_path: Any, limits_backend: dict[str, Any], scope: str
) -> None:
    """~15,100 tokens could never fit a 10,000 budget: rather than refusing every later turn
    of the conversation, the oldest turns are left out of what is sent, as for the history
    budget."""
    async with FakeAnthropic() as fake:
        fake.default = Scenario(deltas=["ok"], input_tokens=7, output_tokens=3)
        limit = {"tokens_per_minute": "tpm", "tokens_per_day": "daily_tokens"}[scope]
        settings = {
            "provider": "anthropic",
            "anthropic_api_key": "sk-ant-test",
            "anthropic_base_url": fake.base_url,
            "auth": "anonymous",
            "limits_anonymous": f"{limit}=10000",
            **limits_backend,
        }
        body = {
            "messages": [{"role": "user", "content": LONG}],
            "conversation_id": "long-history",
            "max_tokens": 100,
        }
        async with running(tmp_path, **settings) as (url, _):
            first = await stream_chat(client, url, body)
            second = await stream_chat(client, url, body)
            stored = (await client.get(f"{url}/conversations/long-history")).json()
    assert first.named("end")["reason"] == "completed"
    assert second.named("end")["reason"] == "completed"
    assert second.named("start")["history_omitted"] == 2
    assert [uncached(m["content"]) for m in fake.requests[1].body["messages"]] == [LONG]
    assert [m["content"] for m in stored["messages"]] == [LONG, "ok", LONG, "ok"]


# -- input limits ----------------------------------------------------------------------------


PNG_60_BYTES = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(52)).decode()  # 80 characters


async def test_input_limits_name_themselves(client: httpx.AsyncClient, tmp_path: Any) -> None:
    settings = {
        "provider": "mock",
        "max_messages": 3,
        "max_message_chars": 50,
        "max_total_chars": 80,
        "max_image_bytes": 30,
    }
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG_60_BYTES},
    }
    bodies = {
        "CHATRELAY_MAX_MESSAGES": {"messages": [{"role": "user", "content": "x"}] * 4},
        "CHATRELAY_MAX_MESSAGE_CHARS": {"messages": [{"role": "user", "content": "x" * 51}]},
        "CHATRELAY_MAX_TOTAL_CHARS": {
            "messages": [
                {"role": "user", "content": "x" * 45},
                {"role": "assistant", "content": "y" * 45},
            ]
        },
        "CHATRELAY_MAX_IMAGE_BYTES": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]
        },
    }
    async with running(tmp_path, **settings) as (url, _):
        answers = {
            name: await client.post(f"{url}/ai/stream/chat", json=b) for name, b in bodies.items()
        }
    for name, answer in answers.items():
        assert answer.status_code == 422, name
        assert name in answer.json()["error"]["message"], answer.json()


# -- across processes ------------------------------------------------------------------------


def test_two_server_processes_share_one_budget(tmp_path: Any) -> None:
    """rpm=3 for one key, counted in Redis by two `chatrelay serve` processes."""
    import subprocess
    import uuid

    import redis

    from .test_cli import chatrelay, env, free_port
    from .test_cli import running as serving

    database = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    prefix = f"chatrelay-test-{uuid.uuid4().hex[:12]}"
    created = subprocess.run(
        chatrelay("keys", "create", "--name", "shared", "--rpm", "3"),
        env=env(DATABASE_URL=database),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    key = created.stdout.strip()
    common = env(
        DATABASE_URL=database,
        CHATRELAY_AUTH="api_key",
        REDIS_URL=REDIS_URL,
        CHATRELAY_REDIS_PREFIX=prefix,
    )
    a, b = free_port(), free_port()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with (
            serving(chatrelay("serve", "--port", str(a)), common, a, tmp_path),
            serving(chatrelay("serve", "--port", str(b)), common, b, tmp_path),
        ):
            statuses = []
            for port in (a, b, a, b):
                response = httpx.post(
                    f"http://127.0.0.1:{port}/ai/stream/chat",
                    json=HI,
                    headers=bearer(key),
                    timeout=10,
                )
                statuses.append(response.status_code)
        listed = subprocess.run(
            chatrelay("keys", "list"),
            env=env(DATABASE_URL=database),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    assert statuses == [200, 200, 200, 429]
    assert "shared" in listed and "rpm=3" in listed and key not in listed


def test_secrets_never_appear_in_the_servers_output(tmp_path: Any) -> None:
    """The provider key, an API key and a JWT secret, through a failing and a good request."""
    import subprocess

    from .test_cli import chatrelay, env, free_port
    from .test_cli import running as serving

    provider_key = "sk-ant-SECRET-provider-key-0123456789"
    jwt_secret = "SECRET-jwt-signing-secret-0123456789abcdef"
    database = f"sqlite+aiosqlite:///{tmp_path}/s.db"
    created = subprocess.run(
        chatrelay("keys", "create", "--name", "ops"),
        env=env(DATABASE_URL=database),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    api_key = created.stdout.strip()
    with FakeAnthropic.in_thread() as fake:
        # The upstream refuses the key and echoes it, as some servers do; then it answers.
        fake.enqueue(Scenario(status=401, error_message=f"invalid x-api-key {provider_key}"))
        port = free_port()
        environ = env(
            DATABASE_URL=database,
            ANTHROPIC_API_KEY=provider_key,
            ANTHROPIC_BASE_URL=fake.base_url,
            CHATRELAY_AUTH="api_key,jwt",
            CHATRELAY_JWT_SECRET=jwt_secret,
            CHATRELAY_LOG_LEVEL="debug",
            CHATRELAY_LOG_FORMAT="json",
        )
        user_token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 60}, jwt_secret)
        with serving(chatrelay("serve", "--port", str(port)), environ, port, tmp_path) as server:
            url = f"http://127.0.0.1:{port}/ai/stream/chat"
            failed = httpx.post(url, json=HI, headers=bearer(api_key), timeout=10)
            good = httpx.post(url, json=HI, headers=bearer(user_token), timeout=10)
            refused = httpx.post(url, json=HI, headers=bearer(api_key[:-3] + "zzz"), timeout=10)
        output = server.output
    assert '"code":"upstream_auth"' in failed.text
    assert "data: [DONE]" in good.text and '"reason":"completed"' in good.text
    assert refused.status_code == 401
    assert "stream" in output and "upstream_auth" in output  # the log did record them
    for secret in (provider_key, api_key, api_key.split("_")[-1], jwt_secret, user_token):
        for text in (output, failed.text, good.text, refused.text):
            assert secret not in text
