"""Named models: the models file, routing by alias, fallbacks, `/v1/models` and `/ai/chat`."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatrelay.app import create_app
from chatrelay.errors import ConfigError
from chatrelay.models import load_models_file

from .conftest import USER_HI, error_of, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario

MODELS = """\
default = "claude"

[models.claude]
provider = "anthropic"
model = "claude-sonnet-5-5"
base_url = "{anthropic}"
fallbacks = ["local"]

[models.local]
provider = "openai"
model = "llama3.2"
base_url = "{openai}"
max_tokens = 333
temperature = false

[models.gpt]
provider = "openai"
model = "gpt-5.4-mini"
api_key_env = "CHATRELAY_TEST_MISSING_KEY"
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
def models_file(
    tmp_path: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    path = tmp_path / "models.toml"
    path.write_text(MODELS.format(anthropic=anthropic_fake.base_url, openai=openai_fake.base_url))
    return path


def settings_with(models_file: Path, **values: Any) -> Any:
    return make_settings(models_file=models_file, retry_base_s=0.01, **values)


async def test_a_requests_model_picks_the_alias_and_its_upstream(
    client: httpx.AsyncClient,
    models_file: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    openai_fake.default = OpenAIScenario(deltas=["from ", "llama"])
    anthropic_fake.default = Scenario(deltas=["from ", "claude"])
    async with serve(settings_with(models_file)) as url:
        default = await stream_chat(client, url, {"messages": USER_HI})
        local = await stream_chat(client, url, {"messages": USER_HI, "model": "local"})
        mock = await stream_chat(client, url, {"messages": USER_HI, "model": "mock"})
    assert default.text == "from claude" and default.named("start")["model"] == "claude"
    assert anthropic_fake.requests[0].body["model"] == "claude-sonnet-5-5"
    assert local.text == "from llama" and local.named("start")["provider"] == "openai"
    assert openai_fake.requests[0].body["model"] == "llama3.2"
    assert mock.text.startswith("Hello! This is a mock AI response")


async def test_per_alias_defaults_apply_max_tokens_and_no_temperature(
    client: httpx.AsyncClient, models_file: Path, openai_fake: FakeOpenAI
) -> None:
    async with serve(settings_with(models_file)) as url:
        result = await stream_chat(
            client, url, {"messages": USER_HI, "model": "local", "temperature": 0.4}
        )
    body = openai_fake.requests[0].body
    assert body["max_tokens"] == 333
    assert "temperature" not in body
    assert result.named("start")["warnings"] == [
        "temperature is not accepted by llama3.2 and was not sent"
    ]


async def test_an_unknown_model_is_a_400_listing_the_known_ones(
    client: httpx.AsyncClient, models_file: Path
) -> None:
    async with serve(settings_with(models_file)) as url:
        response = await client.post(
            f"{url}/ai/stream/chat", json={"messages": USER_HI, "model": "gpt-9"}
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "unknown_model"
    assert error["message"] == "Unknown model 'gpt-9'; known models: claude, local, gpt, mock"
    assert error["fields"][0]["field"] == "model"


async def test_an_alias_whose_key_is_unset_is_refused_alone(
    client: httpx.AsyncClient, models_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with serve(settings_with(models_file)) as url:
        refused = await client.post(
            f"{url}/ai/stream/chat", json={"messages": USER_HI, "model": "gpt"}
        )
        served = await stream_chat(client, url, {"messages": USER_HI, "model": "local"})
        listed = (await client.get(f"{url}/v1/models")).json()
    assert (
        "model 'gpt' cannot serve: its API key variable CHATRELAY_TEST_MISSING_KEY is not set"
        in (caplog.text)
    )
    assert refused.status_code == 503
    assert error_of(refused) == {
        "code": "model_unavailable",
        "message": "Model 'gpt' is not available: its API key variable"
        " CHATRELAY_TEST_MISSING_KEY is not set",
    }
    assert served.named("end")["reason"] == "completed"
    available = {m["id"]: m["available"] for m in listed["data"]}
    assert available == {"claude": True, "local": True, "gpt": False, "mock": True}


async def test_v1_models_lists_the_aliases(client: httpx.AsyncClient, models_file: Path) -> None:
    async with serve(settings_with(models_file)) as url:
        listed = (await client.get(f"{url}/v1/models")).json()
    assert listed["object"] == "list"
    claude = next(m for m in listed["data"] if m["id"] == "claude")
    assert claude == {
        "id": "claude",
        "object": "model",
        "created": 0,
        "owned_by": "anthropic",
        "default": True,
        "fallbacks": ["local"],
        "available": True,
    }


async def test_a_model_failing_before_text_falls_back_and_the_start_frame_says_so(
    client: httpx.AsyncClient,
    models_file: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    anthropic_fake.default = Scenario(status=529, retry_after_ms="5")
    openai_fake.default = OpenAIScenario(deltas=["the ", "fallback ", "answers"])
    async with serve(settings_with(models_file)) as url:
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert len(anthropic_fake.requests) == 3  # the primary's own retries first
    start = result.named("start")
    assert start["model"] == "local"
    assert start["requested_model"] == "claude"
    assert start["fallback_from"] == ["claude"]
    assert result.text == "the fallback answers"
    assert result.errors == []


async def test_a_model_failing_after_text_does_not_fall_back(
    client: httpx.AsyncClient,
    models_file: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    anthropic_fake.default = Scenario(deltas=["a", "b", "c"], error_event_after=2)
    async with serve(settings_with(models_file)) as url:
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert result.text == "ab"
    assert [e["code"] for e in result.errors] == ["overloaded"]
    assert result.named("start")["model"] == "claude"
    assert openai_fake.requests == []


async def test_a_rejected_request_does_not_fall_back(
    client: httpx.AsyncClient,
    models_file: Path,
    anthropic_fake: FakeAnthropic,
    openai_fake: FakeOpenAI,
) -> None:
    anthropic_fake.default = Scenario(status=400, error_message="bad request")
    async with serve(settings_with(models_file)) as url:
        result = await stream_chat(client, url, {"messages": USER_HI})
    assert [e["code"] for e in result.errors] == ["invalid_request"]
    assert openai_fake.requests == []


async def test_images_go_to_vision_models_and_are_refused_by_others(
    client: httpx.AsyncClient, models_file: Path, anthropic_fake: FakeAnthropic
) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    content = [{"type": "text", "text": "What is this?"}, image]
    body = {"messages": [{"role": "user", "content": content}]}
    async with serve(settings_with(models_file)) as url:
        accepted = await stream_chat(client, url, body)
        refused = await client.post(f"{url}/ai/stream/chat", json={**body, "model": "local"})
    assert accepted.named("end")["reason"] == "completed"
    sent = anthropic_fake.requests[0].body["messages"][0]["content"]
    # The image's ~1,600 tokens make the first turn worth caching for the next one.
    assert sent[-1].pop("cache_control") == {"type": "ephemeral"}
    assert sent == content
    assert refused.status_code == 400
    assert error_of(refused) == {
        "code": "unsupported",
        "message": "messages: model 'local' does not accept images",
        "fields": [{"field": "messages", "message": "model 'local' does not accept images"}],
    }


@pytest.mark.parametrize(
    ("data", "media_type", "says"),
    [
        ("not base64!", "image/png", "is not valid base64"),
        ("iVBORw0KGgo", "image/png", "is not valid base64"),  # padding missing
        ("iVBORw0KGgo=", "image/jpeg", "is not a jpeg image"),  # a PNG, declared as JPEG
        ("R0lGODlhAQABAAAAACw=", "image/webp", "is not a webp image"),  # a GIF
    ],
)
async def test_image_data_that_is_not_what_it_says_is_refused_before_the_upstream(
    client: httpx.AsyncClient,
    anthropic_fake: FakeAnthropic,
    models_file: Path,
    data: str,
    media_type: str,
    says: str,
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, image]}]}
    async with serve(settings_with(models_file)) as url:
        refused = await client.post(f"{url}/ai/stream/chat", json=body)
    assert refused.status_code == 422
    [problem] = [
        p for p in error_of(refused)["fields"] if p["field"].startswith("messages[0].content[1]")
    ]
    assert says in problem["message"]
    assert anthropic_fake.requests == []


async def test_anthropic_extras_reach_the_upstream(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=anthropic_fake.base_url,
        model="claude-sonnet-4-6",
    )
    body = {
        "messages": USER_HI,
        "stop_sequences": ["\n\nHuman:"],
        "top_p": 0.9,
        "top_k": 40,
        "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
    }
    async with serve(settings) as url:
        await stream_chat(client, url, body)
    sent = anthropic_fake.requests[0].body
    assert sent["stop_sequences"] == ["\n\nHuman:"]
    assert sent["top_p"] == 0.9 and sent["top_k"] == 40
    assert "temperature" not in sent  # the client chose top_p: no default temperature with it
    assert sent["system"] == "Be brief."


async def test_thinking_is_requested_upstream_and_relayed_as_named_frames(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=anthropic_fake.base_url,
        model="claude-sonnet-4-6",
    )
    anthropic_fake.default = Scenario(
        thinking=["The user ", "greets me."], deltas=["Hello", " there!"]
    )
    async with serve(settings) as url:
        with_thinking = await stream_chat(
            client, url, {"messages": USER_HI, "thinking": True, "temperature": 0.5}
        )
    kinds = [e.event for e in with_thinking.events]
    assert kinds[:3] == ["start", "thinking", "thinking"]
    thoughts = [json.loads(e.data) for e in with_thinking.events if e.event == "thinking"]
    assert thoughts == [{"thinking": "The user "}, {"thinking": "greets me."}]
    assert with_thinking.text == "Hello there!"
    sent = anthropic_fake.requests[0].body
    assert sent["thinking"] == {"type": "adaptive"}
    assert "temperature" not in sent  # the API refuses sampling parameters with thinking
    assert with_thinking.named("start")["warnings"] == [
        "temperature is not accepted with thinking on and was not sent"
    ]


async def test_mock_thinking_frames_come_before_the_text(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        result = await stream_chat(client, url, {"messages": USER_HI, "thinking": True})
        plain = await stream_chat(client, url, {"messages": USER_HI})
    kinds = [e.event for e in result.events]
    first_thinking, first_content = kinds.index("thinking"), kinds.index("message")
    assert first_thinking < first_content
    thoughts = [json.loads(e.data)["thinking"] for e in result.events if e.event == "thinking"]
    assert thoughts == ["Let me think ", "about that. "]
    assert result.text == plain.text
    assert "thinking" not in [e.event for e in plain.events]


async def test_ai_chat_answers_one_json_object(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(
            f"{url}/ai/chat", json={"messages": USER_HI, "conversation_id": "c-7"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["content"] == (
        "Hello! This is a mock AI response to: “Hi there”. The streaming is working!"
    )
    assert body["model"] == "mock"
    assert body["stop_reason"] == "end_turn"
    assert body["usage"] == {"input_tokens": 2, "output_tokens": 14}
    assert body["conversation_id"] == "c-7"


async def test_ai_chat_failures_are_http_errors_with_the_partial_text(
    client: httpx.AsyncClient, anthropic_fake: FakeAnthropic
) -> None:
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-ant-test",
        anthropic_base_url=anthropic_fake.base_url,
        max_retries=0,
    )
    anthropic_fake.enqueue(
        Scenario(status=429, retry_after="12"), Scenario(deltas=["a", "b"], truncate_after=1)
    )
    async with serve(settings) as url:
        limited = await client.post(f"{url}/ai/chat", json={"messages": USER_HI})
        cut = await client.post(f"{url}/ai/chat", json={"messages": USER_HI})
        unknown = await client.post(f"{url}/ai/chat", json={"messages": USER_HI, "model": "x"})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "12"
    assert limited.json()["error"]["code"] == "rate_limited"
    assert cut.status_code == 502
    assert cut.json()["error"]["code"] == "upstream_error"
    assert cut.json()["error"]["partial_content"] == "a"
    assert unknown.status_code == 400


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[models.a]\nprovider = mock\nmodel = "m"\n', "line 2"),
        ('[models.a]\nprovider = "mock"\nmodel = "m"\nfallbacks = [\n', "line 4"),
    ],
)
def test_a_models_file_with_a_syntax_error_names_the_line(
    tmp_path: Path, text: str, line: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"models.toml: .*{line}"):
        load_models_file(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[models.a]\nprovider = "mock"\nmodel = "m"\n\n'
            '[models.b]\nmodel = "x"\nprovider = "bard"\n',
            r"line 7: models.b.provider: Input should be 'anthropic', 'openai' or 'mock'",
        ),
        (
            '[models.a]\nprovider = "mock"\nmodel = "m"\nfallbacks = ["zzz"]\n',
            r"models.a.fallbacks: 'zzz' is not a defined model",
        ),
        (
            '[models.a]\nprovider = "openai"\nmodel = "m"\napi_key = "sk-123"\n',
            r"line 4: models.a.api_key: Extra inputs are not permitted",
        ),
        ('default = "b"\n[models.a]\nprovider = "mock"\nmodel = "m"\n', r"default 'b' is not"),
        ("[models]\n", r"models: Dictionary should have at least 1 item"),
    ],
    ids=["bad provider", "undefined fallback", "key in file", "bad default", "no models"],
)
def test_a_models_file_with_a_wrong_value_names_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_models_file(path)


def test_create_app_refuses_a_bad_models_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text("[models.a\n")
    with pytest.raises(ConfigError, match="line 1"):
        create_app(make_settings(models_file=path))
