"""Models-file entries that are patterns: one entry serves every upstream id it matches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatrelay.errors import ConfigError
from chatrelay.models import load_models_file, models_config
from chatrelay.routing import Router

from .conftest import USER_HI, error_of, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario
from .test_operations import samples, value

MODELS = """\
default = "claude"

[models.claude]
provider = "anthropic"
model = "claude-sonnet-5-5"
base_url = "{anthropic}"

[models.claude-local-exact]
provider = "openai"
model = "llama3.2"
base_url = "{openai}"

[models."claude-local-*"]
provider = "openai"
base_url = "{openai}"

[models."claude-*"]
provider = "anthropic"
base_url = "{anthropic}"
fallbacks = ["local"]

[models."gpt-?"]
provider = "openai"
model = "gpt-5.4-mini"
api_key_env = "CHATRELAY_TEST_MISSING_KEY"

[models.local]
provider = "openai"
model = "llama3.2"
base_url = "{openai}"
"""


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def settings(
    tmp_path: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("CHATRELAY_TEST_MISSING_KEY", raising=False)
    path = tmp_path / "models.toml"
    path.write_text(MODELS.format(anthropic=anthropic_fake.base_url, openai=openai_fake.base_url))
    return make_settings(models_file=path, retry_base_s=0.01)


async def test_an_id_a_pattern_matches_is_sent_upstream_as_requested(
    client: httpx.AsyncClient, settings: Any, anthropic_fake: FakeAnthropic
) -> None:
    anthropic_fake.default = Scenario(deltas=["from ", "opus 9"])
    async with serve(settings) as url:
        seed = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-opus-9"})
        completion = await client.post(
            f"{url}/v1/chat/completions",
            json={"model": "claude-haiku-9-1", "messages": USER_HI},
        )
    assert [r.body["model"] for r in anthropic_fake.requests] == [
        "claude-opus-9",
        "claude-haiku-9-1",
    ]
    assert seed.text == "from opus 9"
    start = seed.named("start")
    assert start["model"] == "claude-opus-9"
    assert start["provider"] == "anthropic"
    assert completion.status_code == 200
    assert completion.json()["model"] == "claude-haiku-9-1"
    # The catalog answers for the real id: a new Claude model takes no temperature.
    assert "temperature" not in anthropic_fake.requests[0].body


async def test_the_first_matching_pattern_serves_and_an_exact_alias_wins(
    client: httpx.AsyncClient,
    settings: Any,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    openai_fake.default = OpenAIScenario(deltas=["from ", "openai"])
    async with serve(settings) as url:
        local = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-local-9"})
        exact = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-local-exact"})
        claude = await stream_chat(client, url, {"messages": USER_HI, "model": "claude"})
    # "claude-local-*" comes before "claude-*" in the file, so it serves claude-local-9.
    assert local.named("start")["provider"] == "openai"
    assert local.named("start")["model"] == "claude-local-9"
    # The exact alias claude-local-exact wins over "claude-local-*", which also matches it.
    assert exact.named("start")["model"] == "claude-local-exact"
    assert [r.body["model"] for r in openai_fake.requests] == ["claude-local-9", "llama3.2"]
    # And the exact alias claude over "claude-*".
    assert [r.body["model"] for r in anthropic_fake.requests] == ["claude-sonnet-5-5"]
    assert claude.named("start")["model"] == "claude"


async def test_patterns_match_case_sensitively_and_an_unknown_id_lists_them(
    client: httpx.AsyncClient, settings: Any
) -> None:
    async with serve(settings) as url:
        upper = await client.post(
            f"{url}/ai/stream/chat", json={"messages": USER_HI, "model": "Claude-opus-9"}
        )
        openai_surface = await client.post(
            f"{url}/v1/chat/completions", json={"model": "gemini-3", "messages": USER_HI}
        )
    assert upper.status_code == 400
    assert error_of(upper)["code"] == "unknown_model"
    assert error_of(upper)["message"] == (
        "Unknown model 'Claude-opus-9'; known models: claude, claude-local-exact, local, mock;"
        " patterns: claude-local-*, claude-*, gpt-?"
    )
    assert openai_surface.status_code == 400
    assert "patterns: claude-local-*, claude-*, gpt-?" in openai_surface.json()["error"]["message"]


async def test_a_pattern_without_its_key_is_refused_alone(
    client: httpx.AsyncClient, settings: Any
) -> None:
    async with serve(settings) as url:
        refused = await client.post(
            f"{url}/ai/stream/chat", json={"messages": USER_HI, "model": "gpt-5"}
        )
        served = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-x"})
    assert refused.status_code == 503
    assert error_of(refused) == {
        "code": "model_unavailable",
        "message": "Model 'gpt-5' is not available: its API key variable"
        " CHATRELAY_TEST_MISSING_KEY is not set (it is served by the pattern 'gpt-?')",
    }
    assert served.named("end")["reason"] == "completed"


async def test_v1_models_shows_the_patterns(client: httpx.AsyncClient, settings: Any) -> None:
    async with serve(settings) as url:
        listed = (await client.get(f"{url}/v1/models")).json()
    assert [(m["id"], m.get("pattern", False)) for m in listed["data"]] == [
        ("claude", False),
        ("claude-local-exact", False),
        ("claude-local-*", True),
        ("claude-*", True),
        ("gpt-?", True),
        ("local", False),
        ("mock", False),
    ]
    claude = next(m for m in listed["data"] if m["id"] == "claude-*")
    assert claude == {
        "id": "claude-*",
        "object": "model",
        "created": 0,
        "owned_by": "anthropic",
        "default": False,
        "fallbacks": ["local"],
        "available": True,
        "pattern": True,
    }
    assert next(m for m in listed["data"] if m["id"] == "gpt-?")["available"] is False


async def test_a_pattern_falls_back_and_its_metrics_name_the_pattern(
    client: httpx.AsyncClient,
    settings: Any,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    anthropic_fake.default = Scenario(status=529, retry_after_ms="5")
    openai_fake.default = OpenAIScenario(deltas=["the ", "fallback"])
    async with serve(settings) as url:
        result = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-mini-9"})
        served = await stream_chat(client, url, {"messages": USER_HI, "model": "claude-local-9"})
        found = samples((await client.get(f"{url}/metrics")).text)
    assert [r.body["model"] for r in anthropic_fake.requests] == ["claude-mini-9"] * 3
    start = result.named("start")
    assert start["model"] == "local"
    assert start["requested_model"] == "claude-mini-9"
    assert start["fallback_from"] == ["claude-mini-9"]
    assert result.text == "the fallback"
    assert served.named("end")["reason"] == "completed"
    # Metrics count an id a pattern served under the pattern: their labels stay bounded.
    assert value(found, "chatrelay_fallbacks_total", from_model="claude-*", to_model="local") == 1
    assert value(found, "chatrelay_streams_total", model="claude-local-*", reason="completed") == 1
    assert not any("claude-local-9" in str(labels) for _, labels in found)


async def test_the_ids_of_one_pattern_share_its_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    path = tmp_path / "models.toml"
    path.write_text(
        '[models.claude]\nprovider = "anthropic"\nmodel = "claude-sonnet-5-5"\n\n'
        '[models."claude-*"]\nprovider = "anthropic"\nmodel = "claude-opus-4-7"\n'
    )
    settings = make_settings(models_file=path)
    router = Router.build(models_config(settings), settings)
    try:
        [one] = router.targets("claude-a")
        [two] = router.targets("claude-b")
        [exact] = router.targets("claude")
    finally:
        await router.aclose()
    assert one.provider is two.provider is exact.provider  # one client per upstream and key
    # A pattern naming a model sends that one upstream id for every id it matches.
    assert (one.spec.alias, one.spec.model, one.spec.pattern) == (
        "claude-a",
        "claude-opus-4-7",
        "claude-*",
    )
    assert two.spec.model == "claude-opus-4-7"
    assert exact.spec.pattern is None


def test_a_pattern_entry_needs_no_model_but_an_exact_alias_does(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(
        'default = "a"\n[models.a]\nprovider = "mock"\nmodel = "m"\n\n'
        '[models."claude-[0-9]*"]\nprovider = "anthropic"\n'
    )
    specs, default = load_models_file(path)
    assert default == "a"
    assert specs["claude-[0-9]*"].model == ""
    assert specs["claude-[0-9]*"].serving("claude-3").model == "claude-3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[models.a]\nprovider = "mock"\n',
            r"line 1: models.a.model: required for an exact alias",
        ),
        (
            '[models.a]\nprovider = "mock"\nmodel = "m"\n\n'
            '[models."claude-*"]\nprovider = "anthropic"\nmodel = "claude-opus-*"\n',
            r"line 7: models.\"claude-\*\".model: 'claude-opus-\*' contains \*, \? or \[",
        ),
        (
            'default = "claude-*"\n[models.a]\nprovider = "mock"\nmodel = "m"\n\n'
            '[models."claude-*"]\nprovider = "anthropic"\n',
            r"line 1: default: 'claude-\*' is a pattern; the default must be an exact alias",
        ),
        (
            '[models.a]\nprovider = "mock"\nmodel = "m"\nfallbacks = ["claude-*"]\n\n'
            '[models."claude-*"]\nprovider = "anthropic"\n',
            r"line 4: models.a.fallbacks: 'claude-\*' is a pattern; fallbacks must be exact",
        ),
        (
            "[models.'claude-*']\nprovider = \"anthropic\"\n",
            r"models: only patterns: the file needs an exact alias to be the default",
        ),
    ],
    ids=["alias without model", "pattern model", "pattern default", "pattern fallback", "only"],
)
def test_a_models_file_misusing_patterns_names_the_entry(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_models_file(path)
