"""One table: every surface × every provider kind × {text, a tool call with streamed
arguments, parallel tool calls, a mid-stream error}, asserting what the client receives.

Each surface is read by the client its users run: the seed's SSE frames with httpx, the
official `openai` SDK (Chat Completions, and the Responses API's events) and the official
`anthropic` SDK. Each provider kind is behind chatrelay as it is in production: the
Anthropic API and an OpenAI-compatible server as loopback fakes speaking their wire formats,
and the mock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai
import pytest

from chatrelay.settings import Settings

from .conftest import make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic, Scenario, ToolUse
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
TIME_SCHEMA = {"type": "object", "properties": {"zone": {"type": "string"}}}
TOOLS = [("get_weather", WEATHER_SCHEMA), ("get_time", TIME_SCHEMA)]
PARIS = ToolUse("call_paris", "get_weather", ['{"city"', ': "Par', 'is"}'])
CLOCK = ToolUse("call_clock", "get_time", ['{"zone": ', '"CET"}'])
TEXT = ["The ", "weather ", "is ", "fine."]
QUESTION = "Weather and time in Paris?"


@dataclass
class Seen:
    """What a client received: the text, the tool calls (id, name, arguments) and whether the
    reply failed (as that client reports a failure)."""

    text: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    failed: bool = False
    # Pieces of arguments received per call (a burst of one would hide buffering).
    pieces: list[int] = field(default_factory=list)


@dataclass
class Case:
    scenario: str  # text | tool | parallel | error
    tools: int  # how many of TOOLS are offered
    metadata: dict[str, Any]


Client = Callable[[str, str, Case], Awaitable[Seen]]


# -- the clients -----------------------------------------------------------------------------


async def seed_client(url: str, model: str, case: Case) -> Seen:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": QUESTION}],
        "model": model,
        "metadata": case.metadata,
    }
    if case.tools:
        body["tools"] = [{"name": n, "input_schema": s} for n, s in TOOLS[: case.tools]]
    async with httpx.AsyncClient(timeout=20) as client:
        result = await stream_chat(client, url, body)
    seen = Seen(text=result.text, failed=bool(result.errors))
    calls: dict[int, list[Any]] = {}
    for event in result.events:
        if event.event == "tool_call":
            data = json.loads(event.data)
            calls[data["index"]] = [data["id"], data["name"], "", 0]
        elif event.event == "tool_call_delta":
            data = json.loads(event.data)
            calls[data["index"]][2] += data["arguments"]
            calls[data["index"]][3] += 1
    _collect(seen, calls)
    return seen


async def openai_client(url: str, model: str, case: Case) -> Seen:
    seen = Seen()
    calls: dict[int, list[Any]] = {}
    tools = [
        {"type": "function", "function": {"name": n, "parameters": s}}
        for n, s in TOOLS[: case.tools]
    ]
    async with openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as sdk:
        try:
            stream = await sdk.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": QUESTION}],
                stream=True,
                extra_body={"metadata": case.metadata},
                **({"tools": tools} if tools else {}),  # type: ignore[arg-type]
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    seen.text += choice.delta.content or ""
                    for call in choice.delta.tool_calls or ():
                        entry = calls.setdefault(call.index, ["", "", "", 0])
                        function = call.function
                        entry[0] = call.id or entry[0]
                        entry[1] = (function.name if function else None) or entry[1]
                        if function and function.arguments:
                            entry[2] += function.arguments
                            entry[3] += 1
        except openai.APIError:
            seen.failed = True
    _collect(seen, calls)
    return seen


async def anthropic_client(url: str, model: str, case: Case) -> Seen:
    seen = Seen()
    calls: dict[int, list[Any]] = {}
    tools = [{"name": n, "input_schema": s} for n, s in TOOLS[: case.tools]]
    async with anthropic.AsyncAnthropic(api_key="k", base_url=url, max_retries=0) as sdk:
        try:
            async with sdk.messages.stream(
                model=model,
                max_tokens=500,
                messages=[{"role": "user", "content": QUESTION}],
                extra_body={"metadata": case.metadata},
                **({"tools": tools} if tools else {}),  # type: ignore[arg-type]
            ) as stream:
                async for event in stream:
                    if (
                        event.type == "content_block_start"
                        and event.content_block.type == "tool_use"
                    ):
                        block = event.content_block
                        calls[event.index] = [block.id, block.name, "", 0]
                    elif event.type == "content_block_delta":
                        if event.delta.type == "text_delta":
                            seen.text += event.delta.text
                        elif event.delta.type == "input_json_delta" and event.delta.partial_json:
                            calls[event.index][2] += event.delta.partial_json
                            calls[event.index][3] += 1
        except anthropic.APIError:
            seen.failed = True
    _collect(seen, calls)
    return seen


async def responses_client(url: str, model: str, case: Case) -> Seen:
    seen = Seen()
    calls: dict[int, list[Any]] = {}
    tools = [
        {"type": "function", "name": n, "parameters": s, "strict": False}
        for n, s in TOOLS[: case.tools]
    ]
    async with openai.AsyncOpenAI(api_key="k", base_url=f"{url}/v1", max_retries=0) as sdk:
        stream = await sdk.responses.create(
            model=model,
            input=QUESTION,
            stream=True,
            extra_body={"metadata": case.metadata},
            **({"tools": tools} if tools else {}),  # type: ignore[arg-type]
        )
        async for event in stream:
            if event.type == "response.output_text.delta":
                seen.text += event.delta
            elif event.type == "response.output_item.added" and event.item.type == "function_call":
                calls[event.output_index] = [event.item.call_id, event.item.name, "", 0]
            elif event.type == "response.function_call_arguments.delta":
                calls[event.output_index][2] += event.delta
                calls[event.output_index][3] += 1
            elif event.type == "response.failed":
                seen.failed = True
    _collect(seen, calls)
    return seen


def _collect(seen: Seen, calls: dict[int, list[Any]]) -> None:
    for _, (call_id, name, arguments, pieces) in sorted(calls.items()):
        seen.calls.append((call_id, name, json.loads(arguments) if not seen.failed else {}))
        seen.pieces.append(pieces)


CLIENTS: dict[str, Client] = {
    "seed": seed_client,
    "openai": openai_client,
    "anthropic": anthropic_client,
    "responses": responses_client,
}


# -- the providers ---------------------------------------------------------------------------


@dataclass
class Provider:
    settings: Settings
    model: str
    script: Callable[[Case], None]
    expect: Callable[[Case], Seen]


MOCK_TEXT = (
    "Hello! This is a mock AI response to: “Weather and time in Paris?”. The streaming is working!"
)


@asynccontextmanager
async def provider(kind: str) -> AsyncIterator[Provider]:
    def scripted(case: Case) -> Seen:
        if case.scenario == "text":
            return Seen(text="".join(TEXT))
        if case.scenario == "error":
            return Seen(text="".join(TEXT[:2]), failed=True)
        calls = [PARIS, CLOCK][: case.tools]
        return Seen(calls=[(c.id, c.name, json.loads("".join(c.pieces))) for c in calls])

    if kind == "mock":

        def mock_expect(case: Case) -> Seen:
            if case.scenario == "text":
                return Seen(text=MOCK_TEXT)
            if case.scenario == "error":
                return Seen(text="Hello! This ", failed=True)
            samples = [("get_weather", {"city": "mock"}), ("get_time", {"zone": "mock"})]
            return Seen(
                calls=[(f"toolu_mock_{i}", n, a) for i, (n, a) in enumerate(samples[: case.tools])]
            )

        yield Provider(make_settings(provider="mock"), "mock", lambda case: None, mock_expect)
        return
    if kind == "anthropic":
        async with FakeAnthropic() as fake:

            def script(case: Case) -> None:
                calls = (
                    [PARIS, CLOCK][: case.tools] if case.scenario in ("tool", "parallel") else []
                )
                fake.enqueue(
                    Scenario(
                        deltas=[] if calls else TEXT,
                        tool_calls=calls,
                        stop_reason="tool_use" if calls else "end_turn",
                        error_event_after=2 if case.scenario == "error" else None,
                        interval=0.002,
                    )
                )

            settings = make_settings(
                provider="anthropic",
                anthropic_api_key="sk-test",
                anthropic_base_url=fake.base_url,
                retry_base_s=0.01,
            )
            yield Provider(settings, "claude-sonnet-5-5", script, scripted)
        return
    async with FakeOpenAI() as fake_openai:

        def script_openai(case: Case) -> None:
            calls = [PARIS, CLOCK][: case.tools] if case.scenario in ("tool", "parallel") else []
            fake_openai.enqueue(
                OpenAIScenario(
                    deltas=[] if calls else TEXT,
                    tool_calls=calls,
                    finish_reason="tool_calls" if calls else "stop",
                    error_frame_after=2 if case.scenario == "error" else None,
                    interval=0.002,
                )
            )

        settings = make_settings(
            provider="openai",
            openai_base_url=fake_openai.base_url,
            model="gpt-4o",
            retry_base_s=0.01,
        )
        yield Provider(settings, "gpt-4o", script_openai, scripted)


CASES = {
    "text": Case("text", 0, {}),
    "tool call": Case("tool", 1, {"mock": {"tool_calls": 1}}),
    "parallel tool calls": Case("parallel", 2, {"mock": {"tool_calls": 2}}),
    "mid-stream error": Case("error", 0, {"mock": {"fail_after": 2}}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
@pytest.mark.parametrize("kind", ["mock", "anthropic", "openai"])
@pytest.mark.parametrize("surface", list(CLIENTS))
async def test_every_surface_relays_every_provider_kind(surface: str, kind: str, case: str) -> None:
    scenario = CASES[case]
    async with provider(kind) as upstream, serve(upstream.settings) as url:
        upstream.script(scenario)
        seen = await CLIENTS[surface](url, upstream.model, scenario)
    expected = upstream.expect(scenario)
    assert (seen.text, seen.calls, seen.failed) == (expected.text, expected.calls, expected.failed)
    if scenario.scenario in ("tool", "parallel"):
        # The arguments came in pieces as the model wrote them (the mock: 8 characters each).
        assert all(count > 1 for count in seen.pieces), seen.pieces
