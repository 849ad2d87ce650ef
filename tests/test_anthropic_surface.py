"""The Anthropic Messages API surface (`/v1/messages`) as the real `anthropic` SDK sees it.

Every test drives chatrelay served on a real uvicorn with `anthropic.AsyncAnthropic`
(retries off, `base_url` = chatrelay), and asserts what a user of the SDK would notice: the
text stream, the final message (text, thinking, tool_use blocks with their parsed input,
stop reason, usage with the cache's shares counted once), the raw events in order, the
exception classes the SDK raises, and what reached the upstream. Behind chatrelay: the mock
provider, the Anthropic loopback fake, and the OpenAI-compatible fake (an OpenAI-compatible
model's tool calls through the Anthropic SDK's tools).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from chatrelay.settings import Settings

from .conftest import make_settings, serve, serve_app
from .fakes.anthropic_upstream import FakeAnthropic, Scenario, ToolUse
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario
from .test_openai_surface import anthropic_settings

HI: list[Any] = [{"role": "user", "content": "Hi there"}]
MOCK_REPLY = "Hello! This is a mock AI response to: “Hi there”. The streaming is working!"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "The time in a zone",
    "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


@asynccontextmanager
async def sdk_for(settings: Settings, **options: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    options.setdefault("api_key", "unused")
    async with (
        serve(settings) as url,
        anthropic.AsyncAnthropic(base_url=url, max_retries=0, timeout=10, **options) as sdk,
    ):
        yield sdk


def mock_settings(tmp_path: Path, **values: Any) -> Settings:
    return make_settings(
        provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/chat.db", **values
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


# --- the mock behind it -----------------------------------------------------------------------


async def test_a_stream_from_the_mock_reads_as_anthropics(tmp_path: Path) -> None:
    async with (
        sdk_for(mock_settings(tmp_path)) as sdk,
        sdk.messages.stream(model="mock", max_tokens=200, messages=HI) as stream,
    ):
        pieces = [text async for text in stream.text_stream]
        message = await stream.get_final_message()
    assert "".join(pieces) == MOCK_REPLY
    assert len(pieces) > 1  # streamed in pieces, not one blob
    assert message.id.startswith("msg_")
    assert message.model == "mock"
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == MOCK_REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens == len(pieces)


async def test_mock_tool_calls_arrive_as_tool_use_blocks_with_their_input_in_pieces(
    tmp_path: Path,
) -> None:
    async with sdk_for(mock_settings(tmp_path)) as sdk:
        stream = await sdk.messages.create(
            model="mock",
            max_tokens=200,
            messages=HI,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            metadata={"mock": {"tool_calls": 2}},  # type: ignore[typeddict-unknown-key]
            stream=True,
        )
        async with stream:
            events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    starts = [e for e in events if e.type == "content_block_start"]
    assert [(e.index, e.content_block.type) for e in starts] == [(0, "tool_use"), (1, "tool_use")]
    assert [e.content_block.name for e in starts] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    pieces = [
        e.delta.partial_json  # type: ignore[union-attr]
        for e in events
        if e.type == "content_block_delta" and e.index == 0
    ]
    assert len(pieces) > 1  # the arguments as they came, not one burst
    assert json.loads("".join(pieces)) == {"city": "mock", "days": 1}
    # Each block stops before the next one starts.
    assert [(e.type, getattr(e, "index", None)) for e in events if "block" in e.type][-2:] == [
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "tool_use"  # type: ignore[union-attr]


async def test_a_non_streamed_reply_with_tools_is_a_message_with_parsed_input(
    tmp_path: Path,
) -> None:
    async with sdk_for(mock_settings(tmp_path)) as sdk:
        message = await sdk.messages.create(
            model="mock",
            max_tokens=200,
            messages=HI,
            tools=[WEATHER],  # type: ignore[list-item]
        )
        # The tool's result sent back: the mock answers it in text.
        again = await sdk.messages.create(
            model="mock",
            max_tokens=200,
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                *HI,
                {"role": "assistant", "content": message.content},  # type: ignore[typeddict-item]
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": message.content[0].id,
                            "content": "sunny",
                        }  # type: ignore[union-attr]
                    ],
                },
            ],
        )
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use"
    assert (call.id, call.name, call.input) == (
        "toolu_mock_0",
        "get_weather",
        {"city": "mock", "days": 1},
    )
    assert again.stop_reason == "end_turn"
    assert "[toolu_mock_0 returned sunny]" in again.content[0].text  # type: ignore[union-attr]


async def test_a_missing_max_tokens_is_anthropics_400_naming_it(tmp_path: Path) -> None:
    async with sdk_for(mock_settings(tmp_path)) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            # The SDK's typed call insists on max_tokens itself: its raw post does not.
            await sdk.post(
                "/v1/messages",
                body={"model": "mock", "messages": HI},
                cast_to=anthropic.types.Message,
            )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


async def test_unsupported_fields_are_refused_by_name(tmp_path: Path) -> None:
    async with serve(mock_settings(tmp_path)) as url, httpx.AsyncClient() as http:
        base = {"model": "mock", "max_tokens": 10, "messages": HI}
        for extra, named in (
            ({"container": "c1"}, "container"),
            ({"mcp_servers": [{"url": "x"}]}, "mcp_servers"),
            ({"output_config": {"effort": "low"}}, "output_config.effort"),
            ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
            ({"cache_control": {"type": "ephemeral"}}, "cache_control"),
            ({"prefill": "The answer is"}, "prefill"),
        ):
            answer = await http.post(f"{url}/v1/messages", json={**base, **extra})
            assert answer.status_code == 400, answer.text
            error = answer.json()
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
            assert error["error"]["message"].startswith(named), error
        # An unknown route under /v1/messages is a 404 in Anthropic's shape too.
        answer = await http.post(f"{url}/v1/messages/nothing", json=base)
        assert answer.status_code == 404
        assert answer.json()["error"]["type"] == "not_found_error"


async def test_keys_are_taken_as_x_api_key_or_bearer(tmp_path: Path) -> None:
    from chatrelay.app import create_app

    app = create_app(mock_settings(tmp_path, auth="api_key"))
    async with serve_app(app) as url:
        key, _ = await app.state.services.keys.create("sdk")
        async with anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0) as bearer:
            said = await bearer.messages.create(model="mock", max_tokens=50, messages=HI)
        assert said.content[0].text == MOCK_REPLY  # type: ignore[union-attr]
        # An older SDK's (and curl's) way: the x-api-key header, with anthropic-version.
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "anthropic-beta": "x"}
        async with anthropic.AsyncAnthropic(
            base_url=url, default_headers=headers, max_retries=0
        ) as header:
            said = await header.messages.create(model="mock", max_tokens=50, messages=HI)
        assert said.content[0].text == MOCK_REPLY  # type: ignore[union-attr]
        async with anthropic.AsyncAnthropic(
            base_url=url, api_key="crk_000000000000_" + "a" * 43, max_retries=0
        ) as wrong:
            with pytest.raises(anthropic.AuthenticationError) as caught:
                await wrong.messages.create(model="mock", max_tokens=50, messages=HI)
        async with httpx.AsyncClient() as http:
            bare = await http.post(f"{url}/v1/messages", json={"model": "mock"})
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert bare.status_code == 401
    assert "x-api-key" in bare.json()["error"]["message"]


async def test_count_tokens_of_a_model_without_a_counter_is_an_estimate_flagged(
    tmp_path: Path,
) -> None:
    async with sdk_for(mock_settings(tmp_path)) as sdk:
        counted = await sdk.messages.count_tokens(
            model="mock", messages=[{"role": "user", "content": "x" * 400}]
        )
        raw = await sdk.messages.with_raw_response.count_tokens(model="mock", messages=HI)
    assert counted.input_tokens == 100  # 4 characters a token
    assert raw.headers["x-chatrelay-estimated"] == "true"


# --- the Anthropic upstream behind it ---------------------------------------------------------


async def test_thinking_text_and_cache_usage_from_anthropic_counted_once(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(
        Scenario(
            thinking=["Let me ", "think."],
            deltas=["It is ", "sunny."],
            input_tokens=7,
            cache_read_input_tokens=1000,
            cache_creation_input_tokens=20,
        )
    )
    async with (
        sdk_for(anthropic_settings(fake)) as sdk,
        sdk.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=2000,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert text == "It is sunny."
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."  # type: ignore[union-attr]
    usage = message.usage
    # Anthropic's input_tokens leaves the cache out; chatrelay says it as Anthropic did.
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (7, 1000)
    assert usage.cache_creation_input_tokens == 20
    assert usage.output_tokens == 2
    assert fake.requests[0].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}


async def test_text_then_tool_calls_from_anthropic_number_their_blocks_in_order(
    fake: FakeAnthropic,
) -> None:
    calls = [
        ToolUse("toolu_1", "get_weather", ['{"city": ', '"Paris"', ', "days": 2}']),
        ToolUse("toolu_2", "get_time", ['{"zone"', ': "CET"}']),
    ]
    fake.enqueue(Scenario(deltas=["Checking."], tool_calls=calls, stop_reason="tool_use"))
    async with sdk_for(anthropic_settings(fake)) as sdk:
        stream = await sdk.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=200,
            messages=HI,
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            stream=True,
        )
        async with stream:
            events = [event async for event in stream]
    blocks = [
        (e.type, e.index)  # type: ignore[union-attr]
        for e in events
        if e.type in ("content_block_start", "content_block_stop")
    ]
    assert blocks == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_stop", 2),
    ]
    pieces = [
        e.delta.partial_json  # type: ignore[union-attr]
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    # Each piece the upstream sent is a delta of its own, as it came.
    assert pieces == ['{"city": ', '"Paris"', ', "days": 2}', '{"zone"', ': "CET"}']
    assert fake.requests[0].body["tools"][0]["name"] == "get_weather"


async def test_the_final_message_holds_the_tool_calls_parsed(fake: FakeAnthropic) -> None:
    call = ToolUse("toolu_9", "get_weather", ['{"city"', ': "Oslo"}'])
    fake.enqueue(Scenario(deltas=["Let me look."], tool_calls=[call], stop_reason="tool_use"))
    async with (
        sdk_for(anthropic_settings(fake)) as sdk,
        sdk.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=200,
            messages=HI,
            tools=[WEATHER],  # type: ignore[list-item]
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("toolu_9", "get_weather", {"city": "Oslo"})


async def test_an_overloaded_error_mid_stream_raises_in_the_sdk_after_the_text(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(Scenario(deltas=["one ", "two ", "three"], error_event_after=2))
    received: list[str] = []
    async with sdk_for(anthropic_settings(fake)) as sdk:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with sdk.messages.stream(
                model="claude-sonnet-5-5", max_tokens=200, messages=HI
            ) as stream:
                async for piece in stream.text_stream:
                    received.append(piece)
    assert received == ["one ", "two "]
    # The 200 had gone out: the SDK raises the error event with its body.
    assert caught.value.body == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "The AI provider is overloaded right now. Please retry shortly.",
        },
    }
    assert len(fake.requests) == 1


async def test_an_upstream_429_before_any_token_is_a_rate_limit_error(
    fake: FakeAnthropic,
) -> None:
    fake.default = Scenario(status=429, retry_after="7")
    async with sdk_for(anthropic_settings(fake, max_retries=0)) as sdk:
        with pytest.raises(anthropic.RateLimitError) as caught:
            async with sdk.messages.stream(
                model="claude-sonnet-5-5", max_tokens=200, messages=HI
            ) as stream:
                await stream.get_final_message()
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_an_upstream_overloaded_before_any_token_is_the_sdks_overloaded_error(
    fake: FakeAnthropic,
) -> None:
    fake.default = Scenario(status=529)
    async with sdk_for(anthropic_settings(fake, max_retries=0)) as sdk:
        with pytest.raises(anthropic.OverloadedError):
            await sdk.messages.create(model="claude-sonnet-5-5", max_tokens=20, messages=HI)


async def test_count_tokens_of_an_anthropic_model_is_the_upstreams_count(
    fake: FakeAnthropic,
) -> None:
    fake.count_tokens = 1234
    async with sdk_for(anthropic_settings(fake)) as sdk:
        raw = await sdk.messages.with_raw_response.count_tokens(
            model="claude-sonnet-5-5",
            messages=HI,
            system="Be brief.",
            tools=[WEATHER],  # type: ignore[list-item]
        )
    assert (await raw.parse()).input_tokens == 1234
    assert raw.headers["x-chatrelay-estimated"] == "false"
    [request] = fake.requests
    assert request.path == "/v1/messages/count_tokens"
    assert request.body["system"] == "Be brief."
    assert request.body["tools"][0]["name"] == "get_weather"
    assert "max_tokens" not in request.body and "stream" not in request.body


# --- an OpenAI-compatible model behind it -----------------------------------------------------


async def test_an_openai_compatible_models_tool_calls_through_the_anthropic_sdk() -> None:
    calls = [ToolUse("call_1", "get_weather", ['{"city":', ' "Rome"}'])]
    async with FakeOpenAI() as upstream:
        upstream.enqueue(
            OpenAIScenario(deltas=["Looking."], tool_calls=calls, finish_reason="tool_calls")
        )
        settings = make_settings(
            provider="openai",
            openai_base_url=upstream.base_url,
            model="llama3.2",
            retry_base_s=0.01,
        )
        async with (
            sdk_for(settings) as sdk,
            sdk.messages.stream(
                model="llama3.2",
                max_tokens=200,
                messages=HI,
                tools=[WEATHER],  # type: ignore[list-item]
            ) as stream,
        ):
            events = [event async for event in stream]
            message = await stream.get_final_message()
        sent = upstream.requests[0].body
    pieces = [e.partial_json for e in events if e.type == "input_json"]  # type: ignore[union-attr]
    assert pieces == ['{"city":', ' "Rome"}']
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "Looking."
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_1", "get_weather", {"city": "Rome"})
    assert sent["tools"][0]["function"]["name"] == "get_weather"


# --- the encoder alone ------------------------------------------------------------------------


def encoded(events: list[Any]) -> list[tuple[int, str, dict[str, Any]]]:
    """(id, event, data) of every frame the encoder makes of `events`, numbered 1, 2, ..."""
    from chatrelay.events import StreamMeta
    from chatrelay.surfaces.anthropic import MessagesEncoder

    encoder = MessagesEncoder(StreamMeta("s1", "anthropic", 0, "mock"))
    out = []
    for seq, event in enumerate(events, start=1):
        for frame in encoder.encode(seq, event).split(b"\n\n")[:-1]:
            name, number, data = frame.decode().split("\n")
            assert name.startswith("event: ") and number.startswith("id: ")
            payload = json.loads(data.removeprefix("data: "))
            assert payload["type"] == name.removeprefix("event: ")
            out.append((int(number.removeprefix("id: ")), payload["type"], payload))
    return out


def test_blocks_are_numbered_as_they_open_and_the_last_events_frames_on_from_it() -> None:
    from chatrelay.events import (
        Answering,
        End,
        TextDelta,
        ThinkingDelta,
        ToolCallDelta,
        ToolCallStart,
        Usage,
    )
    from chatrelay.models import ModelSpec

    frames = encoded(
        [
            Answering(ModelSpec("fast", "mock", "mock")),
            ThinkingDelta("hmm"),
            TextDelta("Let me "),
            TextDelta("look."),
            ToolCallStart(0, "toolu_1", "get_weather"),
            ToolCallDelta(0, '{"city":'),
            ToolCallDelta(0, '"Oslo"}'),
            TextDelta("Done."),
            End("end_turn", Usage(110, 9, cache_read_tokens=100)),
        ]
    )
    starts = [
        (d["index"], d["content_block"]["type"]) for _, t, d in frames if t == "content_block_start"
    ]
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "text")]
    stops = [d["index"] for _, t, d in frames if t == "content_block_stop"]
    assert stops == [0, 1, 2, 3]
    assert frames[0][2]["message"]["model"] == "fast"
    assert frames[0][2]["message"]["id"] == "msg_s1"
    # The End (event 9) closes the text block, then message_delta and message_stop: 9, 10, 11.
    assert [(n, t) for n, t, _ in frames[-3:]] == [
        (9, "content_block_stop"),
        (10, "message_delta"),
        (11, "message_stop"),
    ]
    usage = frames[-2][2]["usage"]
    assert usage == {
        "input_tokens": 10,
        "output_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
    }
    assert [n for n, _, _ in frames] == sorted(n for n, _, _ in frames)


def test_a_stop_ends_the_reply_and_a_restart_is_an_overloaded_error_event() -> None:
    from chatrelay.events import Cut, TextDelta

    stopped = encoded([TextDelta("a"), Cut("stopped")])
    assert [t for _, t, _ in stopped] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert stopped[-2][2]["delta"]["stop_reason"] == "end_turn"
    restarted = encoded([TextDelta("a"), Cut("server_restarting")])
    assert restarted[-1][1] == "error"
    assert restarted[-1][2]["error"]["type"] == "overloaded_error"


async def test_a_clients_cache_control_on_tools_blocks_and_system_reaches_claude_unmoved(
    fake: FakeAnthropic,
) -> None:
    """The breakpoints a client placed are its own: none dropped, moved or added to."""
    mark = {"type": "ephemeral"}
    tools = [
        {"name": "lookup", "input_schema": {"type": "object"}, "cache_control": mark},
    ]
    system = [{"type": "text", "text": "Be brief.", "cache_control": {**mark, "ttl": "1h"}}]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "A long document. " * 400, "cache_control": mark}],
        },
        {"role": "assistant", "content": "Read."},
        {"role": "user", "content": "Summarise it."},
    ]
    fake.enqueue(Scenario(deltas=["Short."]))
    async with sdk_for(anthropic_settings(fake)) as sdk:
        await sdk.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=100,
            tools=tools,  # type: ignore[arg-type]
            system=system,  # type: ignore[arg-type]
            messages=messages,  # type: ignore[arg-type]
        )
    sent = fake.requests[-1].body
    assert sent["tools"] == tools
    assert sent["system"] == system
    assert sent["messages"] == messages


async def test_claudes_signed_thinking_goes_back_with_its_tool_call(fake: FakeAnthropic) -> None:
    """Claude requires the thinking block (with its signature) of a turn that thought and
    called tools to come back with the tool's result; the SDK sends the final message's
    content as it got it, and chatrelay passes it on."""
    weather = {"name": "get_weather", "input_schema": {"type": "object"}}
    fake.enqueue(
        Scenario(
            deltas=[],
            thinking=["I should ", "look it up."],
            tool_calls=[ToolUse("toolu_1", "get_weather", ['{"city": ', '"Paris"}'])],
            stop_reason="tool_use",
        ),
        Scenario(deltas=["Sunny."]),
    )
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    async with sdk_for(anthropic_settings(fake)) as sdk:
        async with sdk.messages.stream(
            model="claude-sonnet-5-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            tools=[weather],  # type: ignore[list-item]
            messages=ask,  # type: ignore[arg-type]
        ) as stream:
            first = await stream.get_final_message()
        [thinking] = [b for b in first.content if b.type == "thinking"]
        assert thinking.thinking == "I should look it up."
        assert thinking.signature == "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"  # the fake's
        result = [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"}]
        second = await sdk.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            tools=[weather],  # type: ignore[list-item]
            messages=[
                *ask,  # type: ignore[list-item]
                {"role": "assistant", "content": first.content},
                {"role": "user", "content": result},  # type: ignore[typeddict-item]
            ],
        )
    assert [b.type for b in second.content if b.type == "text"] == ["text"]
    sent = fake.requests[-1].body["messages"][1]["content"]
    assert sent[0] == {
        "type": "thinking",
        "thinking": "I should look it up.",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h",
    }
    assert [b["type"] for b in sent] == ["thinking", "tool_use"]
