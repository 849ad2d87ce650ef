"""Tool calls and structured output through chatrelay, as clients and upstreams see them.

One table: the OpenAI surface (the official `openai` SDK) and the seed surface (its SSE
frames) × every provider kind (the Anthropic API and OpenAI-compatible servers, as loopback
fakes speaking their wire formats, and the mock) × {a tool call with streamed arguments,
parallel tool calls, an error mid-call}. Then what reaches each upstream when a client sends
the results back, what a stored conversation keeps, structured output, and cache counts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from chatrelay.settings import Settings

from .conftest import make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario, ToolUse
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "Weather and time in Paris?"}]
# What the fakes send: arguments in several pieces, as models write them.
PARIS = ToolUse("call_paris", "get_weather", ['{"city"', ': "Par', 'is", "days": 2}'])
CLOCK = ToolUse("call_clock", "get_time", ['{"zone": ', '"CET"}'])


@dataclass
class Upstream:
    """A provider kind behind chatrelay: how to serve it and to script one reply."""

    name: str
    settings: Callable[[], Settings]
    script: Callable[[list[ToolUse], str, int | None], None]
    # The calls' ids and arguments as the client should see them.
    expect: Callable[[list[ToolUse]], list[tuple[str, str, dict[str, Any]]]]
    pieces_arrive_apart: bool = True
    fake: Any = None  # the loopback fake, whose recorded requests show what was sent


@asynccontextmanager
async def upstream(kind: str) -> AsyncIterator[Upstream]:
    def as_sent(calls: list[ToolUse]) -> list[tuple[str, str, dict[str, Any]]]:
        return [(c.id, c.name, json.loads("".join(c.pieces))) for c in calls]

    if kind == "mock":

        def mock_expect(calls: list[ToolUse]) -> list[tuple[str, str, dict[str, Any]]]:
            # The mock fills each offered tool's schema with sample values.
            samples = {"get_weather": {"city": "mock", "days": 1}, "get_time": {"zone": "mock"}}
            return [(f"toolu_mock_{n}", c.name, samples[c.name]) for n, c in enumerate(calls)]

        yield Upstream(
            "mock",
            lambda: make_settings(provider="mock"),
            lambda calls, text, fail_after: None,
            mock_expect,
        )
        return
    if kind == "anthropic":
        async with FakeAnthropic() as fake:

            def script(calls: list[ToolUse], text: str, fail_after: int | None) -> None:
                deltas = [text] if text else []
                fake.enqueue(
                    Scenario(
                        deltas=deltas,
                        tool_calls=calls,
                        stop_reason="tool_use",
                        error_event_after=fail_after,
                        interval=0.005,
                    )
                )

            yield Upstream(
                "anthropic",
                lambda: make_settings(
                    provider="anthropic",
                    anthropic_api_key="sk-test",
                    anthropic_base_url=fake.base_url,
                    retry_base_s=0.01,
                ),
                script,
                as_sent,
                fake=fake,
            )
        return
    async with FakeOpenAI() as fake_openai:
        style = kind.removeprefix("openai-")

        def script_openai(calls: list[ToolUse], text: str, fail_after: int | None) -> None:
            fake_openai.enqueue(
                OpenAIScenario(
                    deltas=[text] if text else [],
                    tool_calls=calls,
                    finish_reason="tool_calls",
                    style=style,
                    error_frame_after=fail_after,
                    interval=0.005,
                )
            )

        yield Upstream(
            kind,
            lambda: make_settings(
                provider="openai",
                openai_base_url=fake_openai.base_url,
                model="gpt-4o",
                retry_base_s=0.01,
            ),
            script_openai,
            as_sent,
            # Ollama sends each call whole, in one delta.
            pieces_arrive_apart=style != "ollama",
            fake=fake_openai,
        )


KINDS = ["mock", "anthropic", "openai-openai", "openai-ollama"]


def sdk_for(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=10)


def mock_steer(kind: str, calls: int) -> dict[str, Any]:
    return {"metadata": {"mock": {"tool_calls": calls}}} if kind == "mock" else {}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("parallel", [False, True], ids=["one call", "parallel calls"])
async def test_openai_clients_get_tool_calls_streamed_from_every_provider(
    kind: str, parallel: bool
) -> None:
    calls = [PARIS, CLOCK] if parallel else [PARIS]
    async with upstream(kind) as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script(calls, "Let me look.", None)
        stream = await sdk.chat.completions.create(
            model="gpt-4o" if kind.startswith("openai") else _model(kind),
            messages=ASK,
            tools=[WEATHER, TIME] if parallel else [WEATHER],
            stream=True,
            extra_body=mock_steer(kind, len(calls)),
        )
        chunks = [chunk async for chunk in stream]
    assembled: dict[int, dict[str, Any]] = {}
    pieces: dict[int, int] = {}
    finish = None
    for chunk in chunks:
        choice = chunk.choices[0] if chunk.choices else None
        if choice is None:
            continue
        finish = choice.finish_reason or finish
        for call in choice.delta.tool_calls or ():
            entry = assembled.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            if call.id:
                entry["id"] = call.id
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
                pieces[call.index] = pieces.get(call.index, 0) + 1
    got = [(e["id"], e["name"], json.loads(e["arguments"])) for _, e in sorted(assembled.items())]
    assert got == up.expect(calls)
    assert finish == "tool_calls"
    if up.pieces_arrive_apart:  # relayed as they come, never merged into one burst
        assert all(count > 1 for count in pieces.values()), pieces


def _model(kind: str) -> str:
    return "mock" if kind == "mock" else "claude-sonnet-5-5"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_seed_route_carries_tool_calls_as_named_frames_content_readers_skip(
    kind: str, client: httpx.AsyncClient
) -> None:
    async with upstream(kind) as up, serve(up.settings()) as url:
        up.script([PARIS], "", None)
        tools = [{"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}]
        result = await stream_chat(
            client, url, {"messages": ASK, "tools": tools, **mock_steer(kind, 1)}
        )
    assert result.status == 200
    [start] = [json.loads(e.data) for e in result.events if e.event == "tool_call"]
    arguments = "".join(
        json.loads(e.data)["arguments"] for e in result.events if e.event == "tool_call_delta"
    )
    [(call_id, name, expected)] = up.expect([PARIS])
    assert start == {"index": 0, "id": call_id, "name": name}
    assert json.loads(arguments) == expected
    # A frontend written against the seed guide reads only `content`: it sees no tool frame.
    assert all("content" not in json.loads(e.data) for e in result.events if e.event != "message")
    assert result.named("end")["stop_reason"] == "tool_use"
    assert result.events[-1].data == "[DONE]"


@pytest.mark.parametrize("kind", ["anthropic", "openai-openai"])
async def test_an_error_in_the_middle_of_a_tool_call_raises_in_the_openai_sdk(kind: str) -> None:
    async with upstream(kind) as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script([PARIS], "", 2)  # fails after two pieces of the arguments
        stream = await sdk.chat.completions.create(
            model="gpt-4o" if kind.startswith("openai") else _model(kind),
            messages=ASK,
            tools=[WEATHER],
            stream=True,
        )
        seen = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                for call in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
                    seen += (call.function.arguments or "") if call.function else ""
    assert seen and not _is_json(seen)  # what arrived is shown, and it is not taken as whole


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


ROUND_TRIP = [
    *ASK,
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {
                "id": "call_paris",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_clock",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"zone": "CET"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "call_paris", "content": "Sunny, 21 C"},
    {"role": "tool", "tool_call_id": "call_clock", "content": "14:05"},
]


async def test_tool_results_reach_claude_as_tool_result_blocks_after_its_tool_use() -> None:
    async with upstream("anthropic") as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script([], "Sunny and 14:05.", None)
        reply = await sdk.chat.completions.create(
            model="claude-sonnet-5-5",
            messages=ROUND_TRIP,
            tools=[WEATHER, TIME],
            tool_choice="auto",
            parallel_tool_calls=False,
        )
    fake = up.fake
    assert reply.choices[0].message.content == "Sunny and 14:05."
    sent = fake.requests[-1].body
    assert sent["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_paris",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "call_clock",
                    "name": "get_time",
                    "input": {"zone": "CET"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_paris", "content": "Sunny, 21 C"},
                {"type": "tool_result", "tool_use_id": "call_clock", "content": "14:05"},
            ],
        },
    ]
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["input_schema"] == WEATHER["function"]["parameters"]
    assert sent["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_tool_results_reach_an_openai_compatible_server_as_tool_messages() -> None:
    async with upstream("openai-openai") as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script([], "Sunny and 14:05.", None)
        await sdk.chat.completions.create(
            model="gpt-4o",
            messages=ROUND_TRIP,
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    fake = up.fake
    sent = fake.requests[-1].body
    assert sent["messages"] == [
        {"role": "user", "content": "Weather and time in Paris?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_paris",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "call_clock",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"zone":"CET"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_paris", "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_clock", "content": "14:05"},
    ]
    assert sent["tools"] == [WEATHER, TIME]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}


async def test_a_non_streaming_completion_answers_with_its_tool_calls() -> None:
    async with upstream("anthropic") as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script([PARIS, CLOCK], "", None)
        reply = await sdk.chat.completions.create(
            model="claude-sonnet-5-5",
            messages=ASK,
            tools=[WEATHER, TIME],
        )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None
    assert [
        (c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or ()
    ] == [
        ("call_paris", "get_weather", {"city": "Paris", "days": 2}),
        ("call_clock", "get_time", {"zone": "CET"}),
    ]


async def test_a_stored_conversation_keeps_the_tool_calls_and_sends_them_back(
    client: httpx.AsyncClient,
) -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    async with upstream("anthropic") as up, serve(up.settings()) as url:
        fake = up.fake
        up.script([PARIS], "Checking.", None)
        first = await stream_chat(
            client, url, {"messages": ASK, "tools": tools, "conversation_id": "trip"}
        )
        assert first.named("end")["stop_reason"] == "tool_use"
        result = [{"type": "tool_result", "tool_use_id": "call_paris", "content": "Sunny"}]
        up.script([], "It is sunny.", None)
        second = await stream_chat(
            client,
            url,
            {
                "messages": [{"role": "user", "content": result}],
                "tools": tools,
                "conversation_id": "trip",
            },
        )
        stored = (await client.get(f"{url}/conversations/trip")).json()
    assert second.text == "It is sunny."
    # The model is sent the whole history: its own call, then the result.
    assert fake.requests[-1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "call_paris",
                    "name": "get_weather",
                    "input": {"city": "Paris", "days": 2},
                },
            ],
        },
        {"role": "user", "content": result},
    ]
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][1]["content"][1]["type"] == "tool_use"
    assert stored["messages"][3]["content"] == "It is sunny."


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
}


async def test_a_json_schema_reaches_claude_as_its_output_format() -> None:
    async with upstream("anthropic") as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        up.script([], '{"answer": "yes"}', None)
        reply = await sdk.chat.completions.create(
            model="claude-sonnet-5-5",
            messages=ASK,
            response_format=JSON_SCHEMA_FORMAT,
        )
    fake = up.fake
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "yes"}
    assert fake.requests[-1].body["output_config"] == {
        "format": {"type": "json_schema", "schema": SCHEMA}
    }


async def test_a_response_format_reaches_an_openai_compatible_server_as_sent() -> None:
    async with upstream("openai-vllm") as up, serve(up.settings()) as url, sdk_for(url) as sdk:
        for response_format in (JSON_SCHEMA_FORMAT, {"type": "json_object"}):
            up.script([], '{"answer": "yes"}', None)
            await sdk.chat.completions.create(
                model="gpt-4o",
                messages=ASK,
                response_format=response_format,
            )
            assert up.fake.requests[-1].body["response_format"] == response_format


@pytest.mark.parametrize(
    ("model", "response_format", "words"),
    [
        ("claude-sonnet-5-5", {"type": "json_object"}, "takes no json_object mode"),
        ("claude-3-7-sonnet-latest", JSON_SCHEMA_FORMAT, "does not take a JSON schema"),
    ],
)
async def test_structured_output_a_model_cannot_give_is_a_400_naming_the_model(
    model: str, response_format: dict[str, Any], words: str
) -> None:
    async with FakeAnthropic() as fake:
        settings = make_settings(
            provider="anthropic",
            anthropic_api_key="sk-test",
            anthropic_base_url=fake.base_url,
            model=model,
        )
        async with serve(settings) as url, sdk_for(url) as sdk:
            with pytest.raises(openai.BadRequestError) as caught:
                await sdk.chat.completions.create(
                    model=model,
                    messages=ASK,
                    response_format=response_format,
                )
        assert not fake.requests  # refused before anything is sent upstream
    assert caught.value.param == "response_format"
    assert model in caught.value.message and words in caught.value.message


async def test_cache_reads_reported_by_claude_are_counted_in_every_usage(
    client: httpx.AsyncClient,
) -> None:
    async with FakeAnthropic() as fake:
        settings = make_settings(
            provider="anthropic", anthropic_api_key="sk-test", anthropic_base_url=fake.base_url
        )
        async with serve(settings) as url, sdk_for(url) as sdk:
            scenario = Scenario(
                deltas=["Hi"], input_tokens=10, cache_read_input_tokens=900, output_tokens=3
            )
            fake.enqueue(scenario)
            reply = await sdk.chat.completions.create(
                model="claude-sonnet-5-5",
                messages=ASK,
            )
            fake.enqueue(scenario)
            seed = await stream_chat(client, url, {"messages": ASK})
            conversation = seed.named("start")["conversation_id"]
            stored = (await client.get(f"{url}/conversations/{conversation}")).json()
            usage = (await client.get(f"{url}/usage")).json()
    # Anthropic counts cache reads apart from input_tokens; OpenAI's prompt_tokens include them.
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 910
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 900
    assert seed.named("end")["usage"] == {
        "input_tokens": 910,
        "output_tokens": 3,
        "cache_read_tokens": 900,
    }
    # Stored with the reply, and summed: counted once, as part of the input.
    assert stored["messages"][-1]["usage"]["cache_read_tokens"] == 900
    assert stored["messages"][-1]["usage"]["input_tokens"] == 910
    assert usage["total"]["cache_read_tokens"] == 900
    assert usage["total"]["input_tokens"] == 910


async def test_cached_tokens_reported_by_an_openai_compatible_server_are_counted() -> None:
    async with FakeOpenAI() as fake:
        settings = make_settings(provider="openai", openai_base_url=fake.base_url, model="gpt-4o")
        async with serve(settings) as url, sdk_for(url) as sdk:
            fake.enqueue(OpenAIScenario(deltas=["Hi"], prompt_tokens=500, cached_tokens=384))
            reply = await sdk.chat.completions.create(
                model="gpt-4o",
                messages=ASK,
            )
    assert reply.usage is not None and reply.usage.prompt_tokens == 500
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 384


async def test_the_mock_answers_structured_output_with_a_value_of_the_schema() -> None:
    async with serve(make_settings(provider="mock")) as url, sdk_for(url) as sdk:
        schema_reply = await sdk.chat.completions.create(
            model="mock", messages=ASK, response_format=JSON_SCHEMA_FORMAT
        )
        object_reply = await sdk.chat.completions.create(
            model="mock", messages=ASK, response_format={"type": "json_object"}
        )
    assert json.loads(schema_reply.choices[0].message.content or "") == {"answer": "mock"}
    assert json.loads(object_reply.choices[0].message.content or "")["reply"].startswith("Hello!")
