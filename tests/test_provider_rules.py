"""What each provider's models take, decided by the provider (not the chat service): Claude's
temperature of 0 to 1, refused for the model the client chose, brought into range for a
fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from chatrelay.errors import FieldProblem, InvalidField
from chatrelay.models import ModelSpec
from chatrelay.providers import ChatParams, Provider, create_provider

from .conftest import USER_HI, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario


@pytest.fixture
async def providers() -> AsyncIterator[dict[str, Provider]]:
    settings = make_settings()
    made = {
        kind: create_provider(
            ModelSpec(kind, kind, "some-model", base_url="http://127.0.0.1:9"), "sk-test", settings
        )
        for kind in ("anthropic", "openai", "mock")
    }
    yield made
    for provider in made.values():
        await provider.aclose()


def params(temperature: float | None) -> ChatParams:
    return ChatParams(model="some-model", messages=USER_HI, max_tokens=10, temperature=temperature)


def test_claude_refuses_a_temperature_above_1_naming_the_alias(
    providers: dict[str, Provider],
) -> None:
    with pytest.raises(InvalidField) as refused:
        providers["anthropic"].check_temperature(1.01, "claude")
    assert refused.value.problems == [
        FieldProblem(
            "temperature", "must be at most 1 for model 'claude': Claude models take 0 to 1"
        )
    ]
    providers["anthropic"].check_temperature(1.0, "claude")
    providers["anthropic"].check_temperature(0.0, "claude")


@pytest.mark.parametrize("kind", ["openai", "mock"])
def test_other_providers_take_up_to_2(providers: dict[str, Provider], kind: str) -> None:
    providers[kind].check_temperature(2.0, "other")
    assert providers[kind].adapt(params(1.5)).temperature == 1.5


def test_claude_brings_a_fallbacks_temperature_into_range(
    providers: dict[str, Provider],
) -> None:
    claude = providers["anthropic"]
    assert claude.adapt(params(1.5)).temperature == 1.0
    assert claude.adapt(params(0.4)).temperature == 0.4
    assert claude.adapt(params(None)).temperature is None  # not sent stays not sent


FALLBACK_TO_CLAUDE = """\
default = "local"

[models.local]
provider = "openai"
model = "llama3.2"
base_url = "{openai}"
fallbacks = ["claude"]

[models.claude]
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{anthropic}"
"""


async def test_a_claude_fallback_gets_at_most_1_where_the_chosen_model_took_more(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    async with FakeOpenAI() as openai_fake, FakeAnthropic() as anthropic_fake:
        path = tmp_path / "models.toml"
        path.write_text(
            FALLBACK_TO_CLAUDE.format(
                openai=openai_fake.base_url, anthropic=anthropic_fake.base_url
            )
        )
        openai_fake.default = OpenAIScenario(status=503)
        settings = make_settings(models_file=path, retry_base_s=0.01, max_retries=0)
        async with serve(settings) as url:
            result = await stream_chat(client, url, {"messages": USER_HI, "temperature": 1.5})
    assert result.named("start")["model"] == "claude"
    assert openai_fake.requests[0].body["temperature"] == 1.5
    assert anthropic_fake.requests[0].body["temperature"] == 1.0
