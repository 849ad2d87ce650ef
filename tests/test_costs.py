"""Prices, the cost of each reply, /usage's sums of it, and budgets in money (#18 items 3, 4),
against the Anthropic loopback fake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from chatrelay.prices import Price, Prices

from .conftest import REDIS_URL, make_settings, redis_prefix, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario

ASK = [{"role": "user", "content": "hello"}]


def models_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(
        f"""
default = "own"

[models.own]
provider = "anthropic"
model = "claude-sonnet-5-5"
base_url = "{base_url}"
price = {{ input = 2.0, output = 10.0, cache_read = 0.2 }}

[models.table]
provider = "anthropic"
model = "claude-haiku-4-5-20251001"
base_url = "{base_url}"

[models.unpriced]
provider = "anthropic"
model = "claude-sonnet-5-5"
base_url = "{base_url}"
""",
        encoding="utf-8",
    )
    return path


def settings(tmp_path: Path, base_url: str, **values: Any) -> Any:
    return make_settings(
        models_file=models_file(tmp_path, base_url),
        database_url=f"sqlite+aiosqlite:///{tmp_path}/costs.db",
        **values,
    )


def test_the_packaged_table_prices_dated_ids_by_pattern_and_knows_no_others() -> None:
    prices = Prices.packaged()
    row = prices.lookup("anthropic", "claude-sonnet-4-5-20250929")
    assert row is not None and row.price == Price(3.0, 15.0, 3.75, 0.30)
    assert row.source.startswith("https://") and row.noted.year >= 2026
    assert prices.lookup("openai", "gpt-4o-mini") is not None
    assert prices.lookup("openai", "gpt-4o").price.input == 2.5  # type: ignore[union-attr]
    assert prices.lookup("openai", "gpt-4o-2024-05-13") is None  # priced otherwise: not guessed
    assert prices.lookup("openai", "llama3.2") is None


def test_a_cost_bills_each_part_of_the_input_at_its_price() -> None:
    price = Price(3.0, 15.0, cache_write=3.75, cache_read=0.30)
    # 1,000 input of which 600 read and 100 written: 300 uncached.
    assert price.cost(1000, 100, 600, 100) == pytest.approx(
        (300 * 3.0 + 100 * 3.75 + 600 * 0.30 + 100 * 15.0) / 1e6
    )
    assert Price(1.0, 2.0).cost(1000, 0, 1000, 0) == pytest.approx(1000 / 1e6)  # cache = input


async def test_each_reply_costs_its_usage_at_its_price_and_usage_sums_it(
    tmp_path: Path, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    async with FakeAnthropic() as fake, serve(settings(tmp_path, fake.base_url)) as url:
        costs = {}
        for alias in ("own", "table", "unpriced"):
            fake.enqueue(
                Scenario(
                    deltas=["Hi"], input_tokens=100, cache_read_input_tokens=900, output_tokens=50
                )
            )
            seed = await stream_chat(client, url, {"messages": ASK, "model": alias})
            conversation = seed.named("start")["conversation_id"]
            stored = (await client.get(f"{url}/conversations/{conversation}")).json()
            costs[alias] = (seed.named("end")["usage"], stored["messages"][-1]["usage"])
        by_model = (await client.get(f"{url}/usage", params={"group_by": "model"})).json()
        by_day = (await client.get(f"{url}/usage", params={"group_by": "day"})).json()
    own = (100 * 2.0 + 900 * 0.2 + 50 * 10.0) / 1e6  # the alias's own price (cache_write unused)
    table = (100 * 1.0 + 900 * 0.10 + 50 * 5.0) / 1e6  # prices.toml's claude-haiku-4-5*
    assert costs["own"][0]["cost_usd"] == pytest.approx(own)
    assert costs["own"][1]["cost_usd"] == pytest.approx(own)
    assert costs["table"][1]["cost_usd"] == pytest.approx(table)
    assert "cost_usd" not in costs["unpriced"][0]  # the end frame: no price, no cost
    assert costs["unpriced"][1]["cost_usd"] is None  # stored: unknown, never 0
    rows = {row["model"]: row for row in by_model["data"]}
    assert rows["own"]["cost_usd"] == pytest.approx(own)
    assert rows["unpriced"]["cost_usd"] is None and rows["unpriced"]["unpriced_messages"] == 1
    assert by_model["total"]["cost_usd"] == pytest.approx(own + table)
    assert by_model["total"]["unpriced_messages"] == 1
    assert by_day["data"][0]["cost_usd"] == pytest.approx(own + table)


async def test_a_money_budget_refuses_before_the_provider_is_called_and_settles_the_rest(
    tmp_path: Path, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    # Worst case of one request: ~2 input tokens at $2/M + 1,000 output at $10/M ~ $0.01.
    budget = "daily_usd=0.015,monthly_usd=1"
    async with (
        FakeAnthropic() as fake,
        serve(settings(tmp_path, fake.base_url, limits_public=budget)) as url,
    ):
        before = (await client.get(f"{url}/me")).json()["limits"]
        fake.enqueue(Scenario(deltas=["Hi"], input_tokens=2, output_tokens=10))
        body = {"messages": ASK, "model": "own", "max_tokens": 1000}
        first = await stream_chat(client, url, body)
        after = (await client.get(f"{url}/me")).json()["limits"]
        fake.enqueue(Scenario(deltas=["Hi"], input_tokens=2, output_tokens=10))
        second = await stream_chat(client, url, body)
        requests = len(fake.requests)
        # $0.000208 spent; a worst case of ~$0.0148 fits the budget but not what is left.
        big = await client.post(f"{url}/ai/stream/chat", json={**body, "max_tokens": 1480})
        never = await client.post(f"{url}/ai/stream/chat", json={**body, "max_tokens": 2000})
        unpriced = await client.post(f"{url}/ai/stream/chat", json={**body, "model": "unpriced"})
        assert len(fake.requests) == requests  # refused before anything went upstream
    assert before["daily_usd"] == {
        "limit": 0.015,
        "spent": 0.0,
        "remaining": 0.015,
        "reset_s": before["daily_usd"]["reset_s"],
    }
    assert first.status == 200 and second.status == 200
    # Settled from the real cost: 2 * $2/M + 10 * $10/M, the rest of the reservation given back.
    assert after["daily_usd"]["spent"] == pytest.approx(0.000104)
    assert after["monthly_usd"]["remaining"] == pytest.approx(1 - 0.000104)
    assert big.status_code == 429
    assert big.headers["x-ratelimit-scope"] == "daily_usd"
    assert "daily_usd" in big.json()["error"]["message"]
    assert never.status_code == 422  # more than the whole budget: no wait would let it in
    assert unpriced.status_code == 403
    assert unpriced.json()["error"]["code"] == "model_unpriced"
    assert "unpriced" in unpriced.json()["error"]["message"]


async def test_a_money_budget_is_shared_by_two_instances_on_one_redis(
    tmp_path: Path, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    async with FakeAnthropic() as fake, redis_prefix() as prefix:
        config = settings(
            tmp_path,
            fake.base_url,
            limits_public="daily_usd=0.015",
            redis_url=REDIS_URL,
            redis_prefix=prefix,
        )
        async with serve(config) as one, serve(config) as two:
            body = {"messages": ASK, "model": "own", "max_tokens": 1000}
            fake.enqueue(Scenario(deltas=["Hi"], input_tokens=2, output_tokens=600))
            first = await stream_chat(client, one, body)  # $0.006004 spent
            requests = len(fake.requests)
            # A worst case of ~$0.01 fits the budget, but not the $0.009 the other one left.
            refused = await client.post(f"{two}/ai/stream/chat", json=body)
            assert len(fake.requests) == requests
            left = (await client.get(f"{two}/me")).json()["limits"]["daily_usd"]
    assert first.status == 200
    assert refused.status_code == 429 and refused.headers["x-ratelimit-scope"] == "daily_usd"
    assert left["spent"] == pytest.approx(0.006004)
