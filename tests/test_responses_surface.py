"""The Responses API surface (`POST /v1/responses`) as the real `openai` SDK sees it.

Every test drives chatrelay on a real uvicorn with `openai.AsyncOpenAI` (retries off) and
asserts what a user of the Responses API would notice: the events in order, the assembled
text and function calls, `get_final_response()`, usage, `previous_response_id`, the exceptions
the SDK raises, and what reaches the upstream (the Anthropic or OpenAI loopback fake) after
translation. Resume, Stop, drain and the gauge are in test_surface_behaviour.py's table.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from .conftest import REDIS_URL, make_settings, redis_prefix, serve
from .fakes.anthropic_upstream import FakeAnthropic, Scenario, ToolUse
from .fakes.openai_upstream import FakeOpenAI, OpenAIScenario
from .test_openai_relay import settings_for as openai_settings
from .test_openai_surface import anthropic_settings, openai_client
from .test_surface_behaviour import frames_of

MOCK_REPLY = "Hello! This is a mock AI response to: “Hi there”. The streaming is working!"
CLAUDE = "claude-sonnet-5-5"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}
TIME: Any = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
}


@pytest.fixture
def mock_settings(tmp_path: Path) -> Any:
    return make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db")


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def claude(fake: FakeAnthropic, tmp_path: Path, **values: Any) -> Any:
    return anthropic_settings(fake, database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", **values)


async def events_of(sdk: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await sdk.responses.create(stream=True, **kwargs)
    async with stream:
        return [event async for event in stream]


# --- streaming ---------------------------------------------------------------------------------


async def test_a_streamed_response_comes_as_the_responses_api_events_in_order(
    mock_settings: Any,
) -> None:
    async with openai_client(mock_settings) as sdk:
        events = await events_of(sdk, model="mock", input="Hi there")
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert len(deltas) > 1 and "".join(deltas) == MOCK_REPLY
    assert [e.sequence_number for e in events] == list(range(len(events)))
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert completed.id == created.id and completed.id.startswith("resp_")
    assert completed.status == "completed" and completed.model == "mock"
    assert completed.output_text == MOCK_REPLY
    [item] = completed.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert events[2].item.id == item.id  # the item added is the item completed
    assert events[-2].item.content[0].text == MOCK_REPLY
    assert completed.usage is not None
    assert completed.usage.output_tokens == len(deltas)
    assert completed.usage.total_tokens == completed.usage.input_tokens + len(deltas)


async def test_heartbeats_between_events_do_not_break_the_sdk(tmp_path: Path) -> None:
    settings = make_settings(
        provider="mock", heartbeat_s=0.03, database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db"
    )
    mock = {"delay_s": 0.1, "words": 4}  # pauses of 3 heartbeats between the deltas
    async with (
        openai_client(settings) as sdk,
        sdk.responses.stream(
            model="mock", input="Hi", extra_body={"metadata": {"mock": mock}}
        ) as stream,
    ):
        deltas = [e async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert len(deltas) == 4 and final.status == "completed"


async def test_the_stream_helper_gives_text_deltas_and_the_final_response(
    mock_settings: Any,
) -> None:
    async with (
        openai_client(mock_settings) as sdk,
        sdk.responses.stream(model="mock", input="Hi there", instructions="Be brief") as stream,
    ):
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == MOCK_REPLY and len(texts) > 1
    assert final.output_text == MOCK_REPLY
    assert final.instructions == "Be brief"


async def test_function_call_arguments_stream_as_the_model_writes_them(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    pieces = ['{"ci', 'ty": "Pa', 'ris"}']
    fake.enqueue(
        Scenario(
            deltas=["Let me check."],
            tool_calls=[
                ToolUse("toolu_1", "get_weather", pieces),
                ToolUse("toolu_2", "get_time", ['{"zone"', ': "CET"}']),
            ],
            stop_reason="tool_use",
            cache_read_input_tokens=4,
        )
    )
    async with (
        openai_client(claude(fake, tmp_path)) as sdk,
        sdk.responses.stream(model=CLAUDE, input="Weather?", tools=[WEATHER, TIME]) as stream,
    ):
        events = [e async for e in stream]
        final = await stream.get_final_response()
    arguments = [
        (e.output_index, e.delta)
        for e in events
        if e.type == "response.function_call_arguments.delta"
    ]
    # Each piece is its own event, never buffered into one burst.
    assert arguments == [(1, p) for p in pieces] + [(2, '{"zone"'), (2, ': "CET"}')]
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(d.output_index, d.arguments) for d in done] == [
        (1, '{"city": "Paris"}'),
        (2, '{"zone": "CET"}'),
    ]
    # The text item is done before the first call's item is added.
    kinds = [(e.type, getattr(e, "output_index", None)) for e in events]
    assert kinds.index(("response.output_item.done", 0)) < kinds.index(
        ("response.output_item.added", 1)
    )
    message, weather, when = final.output
    assert message.type == "message" and final.output_text == "Let me check."
    assert weather.type == "function_call" and when.type == "function_call"
    assert (weather.call_id, weather.name, json.loads(weather.arguments)) == (
        "toolu_1",
        "get_weather",
        {"city": "Paris"},
    )
    assert (when.call_id, when.name) == ("toolu_2", "get_time")
    assert final.status == "completed"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4
    sent = fake.requests[0].body
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    assert sent["tools"][0]["input_schema"] == WEATHER["parameters"]


async def test_a_call_without_arguments_has_an_empty_object(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(
        Scenario(deltas=[], tool_calls=[ToolUse("toolu_1", "get_time", [])], stop_reason="tool_use")
    )
    async with openai_client(claude(fake, tmp_path)) as sdk:
        events = await events_of(sdk, model=CLAUDE, input="Time?", tools=[TIME])
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == "{}"
    [call] = events[-1].response.output
    assert call.arguments == "{}" and call.status == "completed"


async def test_parallel_calls_from_the_mock_through_the_stream_helper(mock_settings: Any) -> None:
    async with (
        openai_client(mock_settings) as sdk,
        sdk.responses.stream(
            model="mock",
            input="Weather and time?",
            tools=[WEATHER, TIME],
            extra_body={"metadata": {"mock": {"tool_calls": 2}}},
        ) as stream,
    ):
        events = [e async for e in stream]
        final = await stream.get_final_response()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "mock"}),
        ("get_time", {"zone": "mock"}),
    ]
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len([d for d in deltas if d.output_index == 0]) > 1  # in pieces
    assert "".join(d.delta for d in deltas if d.output_index == 0) == calls[0].arguments


# --- not streaming -----------------------------------------------------------------------------


async def test_a_response_not_streamed_is_one_response_object(mock_settings: Any) -> None:
    async with openai_client(mock_settings) as sdk:
        response = await sdk.responses.create(model="mock", input="Hi there")
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.model == "mock"
    assert response.output_text == MOCK_REPLY
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.error is None and response.incomplete_details is None


async def test_function_calls_not_streamed_are_function_call_items(mock_settings: Any) -> None:
    async with openai_client(mock_settings) as sdk:
        response = await sdk.responses.create(model="mock", input="Weather?", tools=[WEATHER])
    [call] = response.output
    assert call.type == "function_call" and call.status == "completed"
    assert call.call_id == "toolu_mock_0" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "mock"}
    assert response.output_text == ""


async def test_a_function_round_trip_sends_the_call_and_its_output_upstream(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(
        Scenario(
            deltas=[],
            tool_calls=[ToolUse("toolu_9", "get_weather", ['{"city": "Oslo"}'])],
            stop_reason="tool_use",
        ),
        Scenario(deltas=["It is ", "cold."]),
    )
    async with openai_client(claude(fake, tmp_path)) as sdk:
        first = await sdk.responses.create(
            model=CLAUDE, input="Weather in Oslo?", tools=[WEATHER], store=False
        )
        [call] = first.output
        assert call.type == "function_call"
        answer = await sdk.responses.create(
            model=CLAUDE,
            tools=[WEATHER],
            store=False,
            input=[
                {"role": "user", "content": "Weather in Oslo?"},
                *[item.model_dump(exclude_none=True) for item in first.output],  # type: ignore[misc]
                {"type": "function_call_output", "call_id": call.call_id, "output": "-7 C"},
            ],
        )
    assert answer.output_text == "It is cold."
    assert first.id.count("_") == 1  # not stored: nothing to continue
    messages = fake.requests[1].body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}}
        ],
    }
    assert messages[2]["role"] == "user"
    [result] = messages[2]["content"]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_9"
    assert json.dumps(result["content"]).count("-7 C") == 1


# --- previous_response_id ----------------------------------------------------------------------


async def test_previous_response_id_continues_the_stored_conversation(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(
        Scenario(deltas=["Nice to ", "meet you, Ada."]),
        Scenario(deltas=["Ada."]),
        Scenario(deltas=["Bye."]),
    )
    async with openai_client(claude(fake, tmp_path)) as sdk:
        first = await sdk.responses.create(model=CLAUDE, input="My name is Ada.")
        stream = await sdk.responses.create(
            model=CLAUDE, input="What is my name?", previous_response_id=first.id, stream=True
        )
        async with stream:
            events = [e async for e in stream]
        second = events[-1].response
        # A streamed response's id (known from response.created on) continues it too.
        assert events[0].response.id == second.id
        await sdk.responses.create(model=CLAUDE, input="Bye", previous_response_id=second.id)
    assert len(fake.requests[2].body["messages"]) == 5
    assert second.output_text == "Ada." and second.previous_response_id == first.id
    assert second.id != first.id
    assert fake.requests[1].body["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


async def test_previous_response_id_takes_the_outputs_of_its_function_calls(
    mock_settings: Any,
) -> None:
    async with openai_client(mock_settings) as sdk:
        first = await sdk.responses.create(model="mock", input="Weather?", tools=[WEATHER])
        [call] = first.output
        assert call.type == "function_call"
        second = await sdk.responses.create(
            model="mock",
            tools=[WEATHER],
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
        # and on, from the latest
        third = await sdk.responses.create(
            model="mock", input="Thanks", previous_response_id=second.id
        )
    assert second.output_text == (
        "Hello! This is a mock AI response to: “[toolu_mock_0 returned sunny]”."
        " The streaming is working!"
    )
    assert "“Thanks”" in third.output_text


async def test_a_failed_try_leaves_the_previous_response_the_one_to_continue(
    mock_settings: Any,
) -> None:
    """The SDK retries a 429 with the same `previous_response_id`: the failed try (stored as
    a reply with no output) does not make that response an earlier one."""
    failing = {"metadata": {"mock": {"fail_after": 0, "fail_code": "rate_limited"}}}
    async with openai_client(mock_settings) as sdk:
        first = await sdk.responses.create(model="mock", input="First")
        with pytest.raises(openai.RateLimitError):
            await sdk.responses.create(
                model="mock", input="Second", previous_response_id=first.id, extra_body=failing
            )
        second = await sdk.responses.create(
            model="mock", input="Second", previous_response_id=first.id
        )
    assert "“Second”" in second.output_text


async def test_an_unknown_unstored_or_earlier_previous_response_id_is_refused_naming_it(
    mock_settings: Any,
) -> None:
    async with openai_client(mock_settings) as sdk:
        unstored = await sdk.responses.create(model="mock", input="Hi", store=False)
        first = await sdk.responses.create(model="mock", input="Hi")
        await sdk.responses.create(model="mock", input="Again", previous_response_id=first.id)
        for bad in (
            "resp_nope",
            unstored.id,
            "resp_" + "0" * 32 + first.id[37:],  # its conversation, another reply
        ):
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.responses.create(model="mock", input="Hi", previous_response_id=bad)
            body: Any = caught.value.body
            assert body["param"] == "previous_response_id", body
            assert bad in body["message"]
        # No longer the latest of its conversation: branching is refused, not done wrong.
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(model="mock", input="Hi", previous_response_id=first.id)
        body = refused.value.body
        assert body["param"] == "previous_response_id" and "earlier" in body["message"]


# --- what reaches the upstream -----------------------------------------------------------------


async def test_instructions_and_max_output_tokens_reach_the_upstream(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(Scenario(deltas=["Short"], stop_reason="max_tokens"))
    async with openai_client(claude(fake, tmp_path)) as sdk:
        response = await sdk.responses.create(
            model=CLAUDE,
            instructions="Answer in French.",
            input=[
                {"role": "developer", "content": "Be terse."},
                {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
            ],
            max_output_tokens=7,
        )
    sent = fake.requests[0].body
    system = sent["system"]
    system = system if isinstance(system, str) else "".join(b["text"] for b in system)
    assert system == "Answer in French.\n\nBe terse."
    assert sent["max_tokens"] == 7
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    # Cut at max_output_tokens: incomplete, as OpenAI says it.
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 7


async def test_max_output_tokens_streamed_ends_with_response_incomplete(
    mock_settings: Any,
) -> None:
    async with openai_client(mock_settings) as sdk:
        events = await events_of(sdk, model="mock", input="Hi there", max_output_tokens=3)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) == 3
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "".join(deltas)


async def test_text_format_json_schema_reaches_an_openai_compatible_upstream(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.enqueue(OpenAIScenario(deltas=['{"answer": ', "42}"]))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    async with openai_client(openai_settings(fake_openai)) as sdk:
        response = await sdk.responses.create(
            model="llama3.2",
            input="The answer?",
            text={"format": {"type": "json_schema", "name": "answer", "schema": schema}},
        )
    assert json.loads(response.output_text) == {"answer": 42}
    assert fake_openai.requests[0].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }


async def test_parse_with_a_text_format_gives_the_parsed_object(mock_settings: Any) -> None:
    class Answer(pydantic.BaseModel):
        answer: int

    async with openai_client(mock_settings) as sdk:
        parsed = await sdk.responses.parse(
            model="mock",
            input="The answer?",
            text_format=Answer,
            extra_body={"metadata": {"mock": {"reply": '{"answer": 42}'}}},
        )
    assert parsed.output_parsed == Answer(answer=42)
    assert parsed.text is not None and parsed.text.format.type == "json_schema"


async def test_function_calls_from_an_openai_compatible_upstream(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue(
        OpenAIScenario(
            deltas=[],
            tool_calls=[ToolUse("call_1", "get_weather", ['{"city"', ': "Rome"}'])],
            finish_reason="tool_calls",
        )
    )
    async with openai_client(openai_settings(fake_openai)) as sdk:
        events = await events_of(sdk, model="llama3.2", input="Rome?", tools=[WEATHER])
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert deltas == ['{"city"', ': "Rome"}']
    [call] = events[-1].response.output
    assert (call.call_id, call.arguments) == ("call_1", '{"city": "Rome"}')
    assert fake_openai.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


# --- errors ------------------------------------------------------------------------------------


async def test_a_mid_stream_upstream_error_is_response_failed(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.enqueue(Scenario(deltas=["one ", "two ", "three"], error_event_after=2))
    async with (
        openai_client(claude(fake, tmp_path)) as sdk,
        sdk.responses.stream(model=CLAUDE, input="Count") as stream,
    ):
        # The SDK raises nothing while the events come: the last one says it failed.
        events = [e async for e in stream]
        with pytest.raises(RuntimeError, match=r"`response\.completed`"):
            await stream.get_final_response()
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["one ", "two "]
    failed = events[-1]
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error.code == "overloaded"
    assert failed.response.error.message.startswith("The AI provider is overloaded")
    [item] = failed.response.output  # what it got to, as far as it got
    assert item.status == "incomplete" and item.content[0].text == "one two "
    assert len(fake.requests) == 1  # nothing is retried once text went out


async def test_a_failure_after_a_committed_200_still_starts_with_response_created(
    tmp_path: Path,
) -> None:
    # No token within one heartbeat: the 200 stream is committed, then the (mock) upstream
    # fails before any output; the SDK still sees a response begin, then fail.
    settings = make_settings(
        provider="mock",
        heartbeat_s=0.03,
        max_retries=0,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db",
    )
    mock = {"first_token_delay_s": 0.15, "fail_after": 0, "fail_code": "overloaded"}
    async with openai_client(settings) as sdk:
        events = await events_of(
            sdk, model="mock", input="Hi", extra_body={"metadata": {"mock": mock}}
        )
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.failed",
    ]
    assert events[-1].response.error.code == "overloaded"
    assert events[-1].response.output == []


async def test_an_upstream_429_before_any_token_is_a_rate_limit_error(
    fake: FakeAnthropic, tmp_path: Path
) -> None:
    fake.default = Scenario(status=429, retry_after="7")
    async with openai_client(claude(fake, tmp_path, max_retries=0)) as sdk:
        for stream in (True, False):
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.responses.create(model=CLAUDE, input="Hi", stream=stream)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "7"
            assert caught.value.code == "rate_limited"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        (
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"},
                    {"role": "user", "content": "Hi"},
                ]
            },
            "input[0].arguments",
        ),
        ({"input": [{"role": "user", "content": ""}]}, "input[0].content"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": 10**9}, "max_output_tokens"),
    ],
)
async def test_what_is_not_served_is_refused_naming_the_clients_field(
    mock_settings: Any, body: dict[str, Any], param: str
) -> None:
    request = {"model": "mock", "input": "Hi", **body}
    async with serve(mock_settings) as url, httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/responses", json=request)
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"


# --- resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("log", ["memory", "redis"])
async def test_a_resume_after_an_event_of_several_frames_repeats_none_of_them(
    tmp_path: Path, log: str
) -> None:
    """The first text delta is three frames (item added, part added, delta) sharing one id:
    a resume after it starts with the next delta, and the sequence numbers run on (with the
    event log in memory, and in Redis, whose stored stream meta carries the request's echo)."""
    async with AsyncExitStack() as stack:
        extra: dict[str, Any] = {}
        if log == "redis":
            prefix = await stack.enter_async_context(redis_prefix())
            extra = {"redis_url": REDIS_URL, "redis_prefix": prefix}
        settings = make_settings(
            provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", **extra
        )
        url = await stack.enter_async_context(serve(settings))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        body = {
            "model": "mock",
            "input": "Hi there",
            "instructions": "Be brief",
            "stream": True,
            "metadata": {"mock": {"delay_s": 0.05}},
        }
        before: list[Any] = []
        async with http.stream(
            "POST", f"{url}/v1/responses", json=body, headers={"x-resume-grace": "10"}
        ) as response:
            stream_id = response.headers["x-stream-id"]
            async for frame in frames_of(response):
                before.append(frame)
                if frame.event == "response.output_text.delta":
                    break
        assert [f.event for f in before][-3:] == [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
        ]
        assert len({f.id for f in before[-3:]}) == 1  # one event: one id
        async with http.stream(
            "GET", f"{url}/ai/stream/{stream_id}", headers={"last-event-id": before[-1].id}
        ) as resumed:
            after = [frame async for frame in frames_of(resumed)]
    numbers = [f.json()["sequence_number"] for f in before + after]
    assert numbers == list(range(len(numbers)))
    assert after[0].event == "response.output_text.delta"
    assert after[-1].event == "response.completed"
    text = "".join(
        f.json()["delta"] for f in before + after if f.event == "response.output_text.delta"
    )
    final = after[-1].json()["response"]
    assert text == MOCK_REPLY == final["output"][0]["content"][0]["text"]
    assert final["instructions"] == "Be brief"
