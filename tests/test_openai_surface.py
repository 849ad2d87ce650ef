"""The OpenAI-compatible surface (`/v1/...`) as the real `openai` SDK sees it.

Every test drives chatrelay served on a real uvicorn with `openai.AsyncOpenAI` (retries off),
and asserts what a user of an OpenAI-compatible gateway would notice: the assembled text,
chunk ids and finish reasons, usage, the exception classes and statuses the SDK raises, and
what reaches the Anthropic upstream (a loopback fake) after translation.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionChunk

from chatrelay.settings import Settings

from .conftest import error_of, make_settings, serve
from .fakes.anthropic_upstream import FakeAnthropic, Scenario

HI: list[Any] = [{"role": "user", "content": "Hi there"}]
MOCK_REPLY = "Hello! This is a mock AI response to: “Hi there”. The streaming is working!"
TRICKY = ["Hé", "llo, ", '"wörld" ', "</script>", "\n\nline\\two ", "🙂✓", "\t'end'"]
# A 1x1 transparent PNG.
PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR4nGNgYAAA"
    "AAMAASsJTYQAAAAASUVORK5CYII="
)


@asynccontextmanager
async def openai_client(settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    async with (
        serve(settings) as url,
        openai.AsyncOpenAI(
            api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=10
        ) as sdk,
    ):
        yield sdk


# Tests that only read from a plain mock server share one (a server costs 0.2 s to stop).
SHARED = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    database = tmp_path_factory.mktemp("shared-mock") / "chatrelay.db"
    settings = make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{database}")
    async with serve(settings) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def sdk(mock_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK, retries off, on the shared mock server."""
    async with openai.AsyncOpenAI(
        api_key="unused", base_url=f"{mock_url}/v1", max_retries=0, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as upstream:
        yield upstream


def anthropic_settings(fake: FakeAnthropic, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "provider": "anthropic",
        "anthropic_api_key": "sk-test",
        "anthropic_base_url": fake.base_url,
        "retry_base_s": 0.01,
    }
    base.update(values)
    return make_settings(**base)


async def stream_chunks(sdk: openai.AsyncOpenAI, **kwargs: Any) -> list[ChatCompletionChunk]:
    kwargs.setdefault("model", "mock")
    kwargs.setdefault("messages", HI)
    stream = await sdk.chat.completions.create(stream=True, **kwargs)
    async with stream:
        return [chunk async for chunk in stream]


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def text_deltas(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The non-empty `delta.content` of each chunk, one entry per chunk."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


# --- streaming and non-streaming against the mock -------------------------------------------


@SHARED
async def test_streaming_from_the_mock_assembles_its_reply_with_one_id_and_model(
    sdk: openai.AsyncOpenAI,
) -> None:
    chunks = await stream_chunks(sdk)
    assert content_of(chunks) == MOCK_REPLY
    assert len(text_deltas(chunks)) > 1  # streamed in pieces, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    [chunk_id] = {c.id for c in chunks}
    assert chunk_id.startswith("chatcmpl-") and len(chunk_id) > len("chatcmpl-")
    assert {c.model for c in chunks} == {"mock"}
    assert len({c.created for c in chunks}) == 1


@SHARED
async def test_the_mock_quotes_the_last_user_message_of_a_conversation(
    sdk: openai.AsyncOpenAI,
) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": [{"type": "text", "text": "Second question"}]},
    ]
    chunks = await stream_chunks(sdk, messages=messages)
    assert content_of(chunks) == (
        "Hello! This is a mock AI response to: “Second question”. The streaming is working!"
    )


@SHARED
async def test_include_usage_adds_one_final_usage_chunk_without_choices(
    sdk: openai.AsyncOpenAI,
) -> None:
    chunks = await stream_chunks(sdk, stream_options={"include_usage": True})
    *rest, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == len(text_deltas(chunks))
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None and c.choices for c in rest)
    assert last.id == rest[0].id and last.model == "mock"
    assert content_of(chunks) == MOCK_REPLY


@SHARED
@pytest.mark.parametrize("options", [None, {"include_usage": False}], ids=["absent", "false"])
async def test_without_include_usage_no_chunk_carries_usage(
    options: dict[str, Any] | None,
    sdk: openai.AsyncOpenAI,
) -> None:
    kwargs: dict[str, Any] = {} if options is None else {"stream_options": options}
    chunks = await stream_chunks(sdk, **kwargs)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert content_of(chunks) == MOCK_REPLY


@SHARED
async def test_non_streaming_returns_a_chat_completion(sdk: openai.AsyncOpenAI) -> None:
    completion = await sdk.chat.completions.create(model="mock", messages=HI)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "mock"
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content == MOCK_REPLY
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@SHARED
async def test_the_chunk_id_carries_the_stream_id_header(sdk: openai.AsyncOpenAI) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model="mock", messages=HI, stream=True
    )
    async with raw.parse() as stream:
        chunks = [chunk async for chunk in stream]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert {c.id for c in chunks} == {f"chatcmpl-{raw.headers['x-stream-id']}"}


@SHARED
async def test_parameters_clients_send_at_their_defaults_are_accepted(
    sdk: openai.AsyncOpenAI,
) -> None:
    # LangChain and friends send these on every request; refusing them would break them.
    defaults: dict[str, Any] = {
        "n": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "logprobs": False,
        "response_format": {"type": "text"},
        "tool_choice": "none",
        "tools": [],
        "parallel_tool_calls": False,
        "modalities": ["text"],
        "seed": 7,
        "user": "someone",
        "temperature": 1,
        "top_p": 1,
    }
    chunks = await stream_chunks(sdk, **defaults)
    completion = await sdk.chat.completions.create(model="mock", messages=HI, **defaults)
    assert content_of(chunks) == MOCK_REPLY
    assert completion.choices[0].message.content == MOCK_REPLY


async def test_the_model_may_be_left_to_the_server_default(client: httpx.AsyncClient) -> None:
    # The SDK always sends `model`; other OpenAI-compatible clients may not.
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(f"{url}/v1/chat/completions", json={"messages": HI})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "mock"
    assert body["choices"][0]["message"]["content"] == MOCK_REPLY


async def test_heartbeats_between_chunks_do_not_break_the_sdk() -> None:
    """After a chunk with an `id:`, the SDK's decoder dispatches an event at every blank line
    (it keeps the last event id): a `: ping` with a blank line after it would read as a chunk
    of empty data, which it fails to parse. So /v1 pings are a comment line alone."""
    metadata: Any = {"mock": {"delay_s": 0.1, "words": 4}}  # pauses of 3 heartbeats
    async with openai_client(make_settings(provider="mock", heartbeat_s=0.03)) as sdk:
        chunks = await stream_chunks(sdk, metadata=metadata)
    assert len(text_deltas(chunks)) == 4


async def test_a_slow_first_token_streams_behind_heartbeats_the_sdk_ignores(
    client: httpx.AsyncClient,
) -> None:
    metadata: Any = {"mock": {"first_token_delay_s": 0.15}}
    body = {"model": "mock", "messages": HI, "stream": True, "metadata": metadata}
    async with serve(make_settings(provider="mock", heartbeat_s=0.03)) as url:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines()]
        sdk = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        async with sdk:
            chunks = await stream_chunks(sdk, metadata=metadata)
    assert lines.index(": ping") < next(i for i, x in enumerate(lines) if x.startswith("data:"))
    assert lines[-2:] == ["data: [DONE]", ""]
    assert content_of(chunks) == MOCK_REPLY
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"


# --- translation of an Anthropic upstream ----------------------------------------------------


async def test_each_anthropic_delta_becomes_one_chunk_with_exactly_its_text(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(Scenario(deltas=TRICKY, input_tokens=21))
    async with openai_client(anthropic_settings(fake)) as sdk:
        chunks = await stream_chunks(
            sdk, model="claude-sonnet-5-5", stream_options={"include_usage": True}
        )
    assert text_deltas(chunks) == TRICKY
    assert content_of(chunks) == "".join(TRICKY)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {"claude-sonnet-5-5"}
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (21, len(TRICKY))
    assert usage.total_tokens == 21 + len(TRICKY)


async def test_closing_a_stream_closes_the_upstream_at_once_without_a_resume_grace(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(Scenario(deltas=["x "] * 500, interval=0.01))
    # The resume grace is for /ai/stream/chat readers: chunks carry no ids, nobody resumes.
    async with openai_client(anthropic_settings(fake, resume_grace_s=10)) as sdk:
        stream = await sdk.chat.completions.create(
            model="claude-sonnet-5-5", messages=HI, stream=True
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                break
        await stream.close()
        closed_at = time.monotonic()
        [request] = fake.requests
        assert await request.wait_closed(2)
    assert request.outcome == "client_gone"
    assert request.disconnected_at is not None
    assert request.disconnected_at - closed_at < 0.1


async def test_a_stream_is_stopped_through_its_stream_id_with_a_stop_finish(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    fake.enqueue(Scenario(deltas=["x "] * 500, interval=0.01))
    settings = anthropic_settings(fake)
    async with serve(settings) as url:
        sdk = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        async with sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="claude-sonnet-5-5", messages=HI, stream=True
            )
            stream_id = raw.headers["x-stream-id"]
            chunks: list[ChatCompletionChunk] = []
            async with raw.parse() as stream:
                async for chunk in stream:
                    chunks.append(chunk)
                    if len(chunks) == 3:
                        stopped = await client.post(f"{url}/ai/stream/{stream_id}/stop")
        [request] = fake.requests
        assert await request.wait_closed(2)
    assert stopped.json() == {"stream_id": stream_id, "status": "stopped"}
    assert request.outcome == "client_gone"
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "stop"
    assert len(content_of(chunks)) < 1000


async def test_a_non_streamed_anthropic_reply_is_the_deltas_joined(fake: FakeAnthropic) -> None:
    fake.enqueue(Scenario(deltas=TRICKY, input_tokens=5))
    async with openai_client(anthropic_settings(fake)) as sdk:
        completion = await sdk.chat.completions.create(model="claude-sonnet-5-5", messages=HI)
    assert completion.choices[0].message.content == "".join(TRICKY)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 7)


# (create() arguments, what the Messages API request gets besides model/messages/stream)
PARAMETERS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"max_tokens": 123, "temperature": 0.2, "top_p": 0.9, "stop": "END"},
        {"max_tokens": 123, "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["END"]},
    ),
    (
        {"max_completion_tokens": 77, "stop": ["\n\n", "Human:"]},
        {"max_tokens": 77, "temperature": 0.7, "stop_sequences": ["\n\n", "Human:"]},
    ),
    ({"max_tokens": 500, "max_completion_tokens": 40}, {"max_tokens": 40, "temperature": 0.7}),
    ({"top_p": 0.5}, {"max_tokens": 2048, "top_p": 0.5}),  # no default temperature then
    ({"temperature": 0}, {"max_tokens": 2048, "temperature": 0}),
]


async def test_parameters_reach_the_upstream_in_the_messages_api_shape(
    fake: FakeAnthropic,
) -> None:
    settings = anthropic_settings(fake, model="claude-sonnet-4-6")
    async with openai_client(settings) as sdk:
        for kwargs, _ in PARAMETERS:
            await stream_chunks(sdk, model="claude-sonnet-4-6", **kwargs)
    assert len(fake.requests) == len(PARAMETERS)
    for request, (kwargs, expected) in zip(fake.requests, PARAMETERS, strict=True):
        assert request.path == "/v1/messages"
        assert request.body == {
            "model": "claude-sonnet-4-6",
            "messages": HI,
            "stream": True,
            **expected,
        }, kwargs


async def test_system_and_developer_messages_become_the_system_string(
    fake: FakeAnthropic,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {"role": "user", "content": [{"type": "text", "text": "Tell me more"}]},
    ]
    async with openai_client(anthropic_settings(fake)) as sdk:
        await stream_chunks(sdk, model="claude-sonnet-5-5", messages=messages)
    body = fake.requests[0].body
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me more"}]},
    ]


async def test_an_image_part_becomes_a_messages_api_image_block(fake: FakeAnthropic) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    async with openai_client(anthropic_settings(fake)) as sdk:
        await stream_chunks(
            sdk, model="claude-sonnet-5-5", messages=[{"role": "user", "content": content}]
        )
    [_, image] = fake.requests[0].body["messages"][0]["content"]
    assert image == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",", 1)[1]},
    }


async def test_a_max_tokens_stop_becomes_finish_reason_length(fake: FakeAnthropic) -> None:
    fake.default = Scenario(deltas=["cut ", "sho"], stop_reason="max_tokens")
    async with openai_client(anthropic_settings(fake)) as sdk:
        chunks = await stream_chunks(sdk, model="claude-sonnet-5-5", max_tokens=2)
        completion = await sdk.chat.completions.create(
            model="claude-sonnet-5-5", messages=HI, max_tokens=2
        )
    assert content_of(chunks) == "cut sho"
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "cut sho"
    assert completion.choices[0].finish_reason == "length"


async def test_stop_reasons_become_openai_finish_reasons(fake: FakeAnthropic) -> None:
    expected = {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "refusal": "content_filter",
    }
    fake.enqueue(*(Scenario(deltas=["x"], stop_reason=reason) for reason in expected))
    fake.enqueue(Scenario(deltas=[]))  # an empty reply still ends properly
    finishes: list[str | None] = []
    async with openai_client(anthropic_settings(fake)) as sdk:
        for _ in expected:
            chunks = await stream_chunks(sdk, model="claude-sonnet-5-5")
            finishes.append([c for c in chunks if c.choices][-1].choices[0].finish_reason)
        empty = await stream_chunks(sdk, model="claude-sonnet-5-5")
    assert finishes == list(expected.values())
    assert content_of(empty) == ""
    assert empty[0].choices[0].delta.role == "assistant"
    assert empty[-1].choices[0].finish_reason == "stop"


# --- upstream errors -------------------------------------------------------------------------


async def test_an_upstream_error_event_mid_stream_raises_api_error_after_the_deltas(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(Scenario(deltas=["one ", "two ", "three"], error_event_after=2))
    received: list[ChatCompletionChunk] = []
    async with openai_client(anthropic_settings(fake)) as sdk:
        stream = await sdk.chat.completions.create(
            model="claude-sonnet-5-5", messages=HI, stream=True
        )
        with pytest.raises(openai.APIError) as caught:
            async with stream:
                async for chunk in stream:
                    received.append(chunk)
    assert not isinstance(caught.value, openai.APIStatusError)  # the 200 had gone out
    assert text_deltas(received) == ["one ", "two "]
    assert caught.value.message == "The AI provider is overloaded right now. Please retry shortly."
    assert caught.value.body == {
        "message": "The AI provider is overloaded right now. Please retry shortly.",
        "type": "api_error",
        "param": None,
        "code": "overloaded",
    }
    assert caught.value.code == "overloaded"
    assert len(fake.requests) == 1  # nothing is retried once text went out


async def test_a_failure_after_a_committed_200_is_an_error_chunk_not_a_status() -> None:
    # The first token is later than one heartbeat: the 200 stream is committed before the
    # (mock) provider fails, so the SDK sees an error chunk.
    settings = make_settings(provider="mock", heartbeat_s=0.03, max_retries=0)
    mock: Any = {"first_token_delay_s": 0.15, "fail_after": 0, "fail_code": "overloaded"}
    async with openai_client(settings) as sdk:
        with pytest.raises(openai.APIError) as caught:
            await stream_chunks(sdk, metadata={"mock": mock})
    assert not isinstance(caught.value, openai.APIStatusError)
    assert caught.value.code == "overloaded"


async def test_an_upstream_429_before_any_token_is_a_rate_limit_error_with_retry_after(
    fake: FakeAnthropic,
) -> None:
    fake.default = Scenario(status=429, retry_after="7")
    errors: list[openai.RateLimitError] = []
    async with openai_client(anthropic_settings(fake, max_retries=0)) as sdk:
        for stream in (True, False):
            with pytest.raises(openai.RateLimitError) as caught:
                await sdk.chat.completions.create(
                    model="claude-sonnet-5-5", messages=HI, stream=stream
                )
            errors.append(caught.value)
    for error in errors:  # streamed, then not
        assert error.status_code == 429
        assert error.response.headers["retry-after"] == "7"
        assert error.type == "rate_limit_error"
        assert error.code == "rate_limited"
        assert error.body == {
            "message": "The AI provider is rate limiting requests. Please wait a moment and retry.",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limited",
        }
    assert len(fake.requests) == 2  # one each: max_retries=0


async def test_an_upstream_401_is_a_502_in_openai_error_shape(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    fake.default = Scenario(status=401, error_message="invalid x-api-key sk-test")
    errors: list[openai.InternalServerError] = []
    raws: list[httpx.Response] = []
    async with serve(anthropic_settings(fake)) as url:
        sdk = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        async with sdk:
            for stream in (True, False):
                with pytest.raises(openai.InternalServerError) as caught:
                    await sdk.chat.completions.create(
                        model="claude-sonnet-5-5", messages=HI, stream=stream
                    )
                errors.append(caught.value)
                raws.append(
                    await client.post(
                        f"{url}/v1/chat/completions",
                        json={"model": "claude-sonnet-5-5", "messages": HI, "stream": stream},
                    )
                )
    message = "The server's AI provider credentials were rejected. Contact the operator."
    for error, raw in zip(errors, raws, strict=True):  # streamed, then not
        assert error.status_code == 502
        assert error.code == "upstream_auth"
        assert raw.status_code == 502
        assert raw.headers["content-type"].startswith("application/json")
        assert raw.json() == {
            "error": {
                "message": message,
                "type": "api_error",
                "param": None,
                "code": "upstream_auth",
            }
        }
        assert "sk-test" not in raw.text


async def test_a_rejected_upstream_key_is_not_retried_by_the_sdk(fake: FakeAnthropic) -> None:
    # The SDK retries any 5xx unless told otherwise (`x-should-retry: false`); retrying a
    # rejected server key only repeats the upstream 401 and delays the error.
    fake.default = Scenario(status=401)
    async with serve(anthropic_settings(fake)) as url:
        sdk = openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=1)
        async with sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(model="claude-sonnet-5-5", messages=HI)
    assert caught.value.code == "upstream_auth"
    assert len(fake.requests) == 1
    assert caught.value.response.headers.get("x-should-retry") == "false"


# --- requests chatrelay refuses --------------------------------------------------------------

BAD_REQUESTS = [
    # (id, create() arguments, param, words of the message)
    ("functions", {"functions": [{"name": "f", "parameters": {}}]}, "functions", "send `tools`"),
    ("n", {"n": 2}, "n", "not supported"),
    (
        "custom tool",
        {"tools": [{"type": "custom", "custom": {"name": "f"}}]},
        "tools[0]",
        "only 'function'",
    ),
    ("logprobs", {"logprobs": True}, "logprobs", "not supported"),
    ("top_logprobs", {"logprobs": True, "top_logprobs": 3}, "logprobs", "not supported"),
    ("presence_penalty", {"presence_penalty": 0.5}, "presence_penalty", "not supported"),
    (
        "audio part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
                    ],
                }
            ]
        },
        "messages[0].content[0]",
        "input_audio",
    ),
]


@SHARED
@pytest.mark.parametrize(
    ("kwargs", "param", "words"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
async def test_an_unsupported_feature_is_a_400_naming_it(
    kwargs: dict[str, Any], param: str, words: str, sdk: openai.AsyncOpenAI
) -> None:
    arguments: dict[str, Any] = {"model": "mock", "messages": HI, **kwargs}
    errors: list[openai.BadRequestError] = []
    for stream in (True, False):
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(stream=stream, **arguments)
        errors.append(caught.value)
    for error in errors:  # streamed, then not
        assert error.status_code == 400
        assert error.type == "invalid_request_error"
        assert error.code == "unsupported"
        assert error.param == param
        assert isinstance(error.body, dict)
        assert set(error.body) == {"message", "type", "param", "code"}
        assert param in error.body["message"] and words in error.body["message"]


INVALID_TOOL_REQUESTS = [
    (
        "tool_choice naming a function not offered",
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
        "not one of `tools`",
    ),
    ("tool_choice required with no tools", {"tool_choice": "required"}, "tool_choice", "needs"),
    (
        "tool result without its call's id",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "tool", "content": "42"},
            ]
        },
        "messages[1].tool_call_id",
        "tool call",
    ),
    (
        "tool call arguments that are not JSON",
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
            ]
        },
        "messages[1].tool_calls[0].function.arguments",
        "JSON object",
    ),
    (
        "a schema-less json_schema",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format",
        "json_schema",
    ),
]


@SHARED
@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [b[1:] for b in INVALID_TOOL_REQUESTS],
    ids=[b[0] for b in INVALID_TOOL_REQUESTS],
)
async def test_a_malformed_tool_or_format_field_is_a_422_naming_it(
    kwargs: dict[str, Any], param: str, words: str, sdk: openai.AsyncOpenAI
) -> None:
    arguments: dict[str, Any] = {"model": "mock", "messages": HI, **kwargs}
    for stream in (True, False):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await sdk.chat.completions.create(stream=stream, **arguments)
        assert caught.value.code == "invalid_request"
        assert caught.value.param == param
        assert words in caught.value.message


@SHARED
async def test_an_unknown_model_is_a_400_listing_the_known_models(sdk: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    error = caught.value
    assert error.status_code == 400
    assert error.code == "unknown_model"
    assert error.param == "model"
    assert error.body == {
        "message": "Unknown model 'gpt-4o'; known models: mock",
        "type": "invalid_request_error",
        "param": "model",
        "code": "unknown_model",
    }


@SHARED
async def test_an_empty_message_names_the_clients_own_message_index(
    sdk: openai.AsyncOpenAI,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  "},
    ]
    errors: list[openai.UnprocessableEntityError] = []
    for stream in (True, False):
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await sdk.chat.completions.create(model="mock", messages=messages, stream=stream)
        errors.append(caught.value)
    for error in errors:  # streamed, then not
        assert error.status_code == 422
        assert error.type == "invalid_request_error"
        assert error.code == "invalid_request"
        assert error.param == "messages[1].content"
        assert error.body == {
            "message": "messages[1].content: must not be empty",
            "type": "invalid_request_error",
            "param": "messages[1].content",
            "code": "invalid_request",
        }


@SHARED
async def test_an_empty_message_after_skipped_system_turns_keeps_its_index(
    sdk: openai.AsyncOpenAI,
) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "developer", "content": "Be kind."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Again"},
    ]
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await sdk.chat.completions.create(model="mock", messages=messages)
    assert caught.value.param == "messages[3].content"


@SHARED
async def test_too_many_completion_tokens_names_the_field_the_client_sent(
    sdk: openai.AsyncOpenAI,
) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await sdk.chat.completions.create(
            model="mock", messages=HI, max_completion_tokens=1_000_000
        )
    assert caught.value.param == "max_completion_tokens"
    assert isinstance(caught.value.body, dict)
    assert "must be at most" in caught.value.body["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"messages": [{"role": "system", "content": "Only a system prompt"}]}, 422, "messages"),
        ({"temperature": 1.5, "model": "claude-sonnet-4-6"}, 422, "temperature"),
        ({"stop": [""]}, 422, "stop[0]"),
    ],
    ids=["system only", "temperature above 1 for claude", "empty stop sequence"],
)
async def test_invalid_values_are_422_naming_the_openai_field(
    fake: FakeAnthropic, kwargs: dict[str, Any], status: int, param: str
) -> None:
    arguments: dict[str, Any] = {"model": "mock", "messages": HI, **kwargs}
    settings = anthropic_settings(fake, model="claude-sonnet-4-6")
    async with openai_client(settings) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(**arguments)
    assert caught.value.status_code == status
    assert caught.value.param == param
    assert fake.requests == []


# --- several aliases: a models file ----------------------------------------------------------

MODELS_TOML = """\
default = "claude"

[models.claude]
provider = "anthropic"
model = "claude-sonnet-4-6"
base_url = "{base_url}"

[models.local]
provider = "openai"
model = "llama3.2"
base_url = "http://127.0.0.1:9/v1"
"""


def models_file_settings(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    path = Path("models.toml").absolute()  # the tests run in their own tmp_path
    path.write_text(MODELS_TOML.format(base_url=fake.base_url), encoding="utf-8")
    return make_settings(models_file=path, retry_base_s=0.01)


@SHARED
async def test_models_list_returns_the_mock_alias_with_the_mock_provider(
    sdk: openai.AsyncOpenAI,
) -> None:
    page = await sdk.models.list()
    assert [model.id for model in page.data] == ["mock"]
    assert page.data[0].object == "model"
    assert page.data[0].owned_by == "mock"


async def test_models_list_returns_every_configured_alias(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with openai_client(models_file_settings(fake, monkeypatch)) as sdk:
        page = await sdk.models.list()
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="gpt-4o", messages=HI)
    assert [(m.id, m.owned_by) for m in page.data] == [
        ("claude", "anthropic"),
        ("local", "openai"),
        ("mock", "mock"),
    ]
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == (
        "Unknown model 'gpt-4o'; known models: claude, local, mock"
    )


async def test_an_image_to_a_model_without_vision_is_refused_and_accepted_elsewhere(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    content: list[Any] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": PNG}},
    ]
    messages: list[Any] = [{"role": "user", "content": content}]
    async with openai_client(models_file_settings(fake, monkeypatch)) as sdk:
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.chat.completions.create(model="local", messages=messages, stream=True)
        claude = await stream_chunks(sdk, model="claude", messages=messages)
        mock = await stream_chunks(sdk, model="mock", messages=messages)
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported"
    assert caught.value.param == "messages"
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "messages: model 'local' does not accept images"
    assert content_of(claude) == "Hello, world!"
    assert {c.model for c in claude} == {"claude"}
    assert content_of(mock) == (
        "Hello! This is a mock AI response to: “What is this?”. The streaming is working!"
    )
    assert len(fake.requests) == 1  # only the claude request went upstream


# --- error shapes before the stream: /v1 speaks OpenAI's, /ai ours ----------------------------


async def test_malformed_json_answers_in_openai_shape_on_v1_and_ours_on_ai(
    client: httpx.AsyncClient,
) -> None:
    broken = b'{"model": "mock", "messages": ['
    headers = {"content-type": "application/json"}
    async with serve(make_settings(provider="mock")) as url:
        v1 = await client.post(f"{url}/v1/chat/completions", content=broken, headers=headers)
        ours = await client.post(f"{url}/ai/stream/chat", content=broken, headers=headers)
    assert v1.status_code == 400 and ours.status_code == 400
    v1_error = v1.json()["error"]
    assert set(v1.json()) == {"error"}
    assert set(v1_error) == {"message", "type", "param", "code"}
    assert v1_error["type"] == "invalid_request_error"
    assert v1_error["code"] == "invalid_json"
    assert v1_error["param"] is None
    assert v1_error["message"].startswith("The request body is not valid JSON")
    assert set(ours.json()) == {"error"}
    assert set(ours.json()["error"]) == {"code", "message", "request_id"}
    assert ours.json()["error"]["request_id"] == ours.headers["x-request-id"]
    assert ours.json()["error"]["code"] == "invalid_json"


async def test_an_invalid_field_answers_in_openai_shape_on_v1_and_ours_on_ai(
    client: httpx.AsyncClient,
) -> None:
    body = {"messages": [{"role": "user", "content": ""}]}
    async with serve(make_settings(provider="mock")) as url:
        v1 = await client.post(f"{url}/v1/chat/completions", json={**body, "stream": True})
        ours = await client.post(f"{url}/ai/stream/chat", json=body)
    assert v1.status_code == 422 and ours.status_code == 422
    assert v1.json() == {
        "error": {
            "message": "messages[0].content: must not be empty",
            "type": "invalid_request_error",
            "param": "messages[0].content",
            "code": "invalid_request",
        }
    }
    assert set(ours.json()) == {"error"}
    assert error_of(ours) == {
        "code": "invalid_request",
        "message": "messages[0].content: must not be empty",
        "fields": [{"field": "messages[0].content", "message": "must not be empty"}],
    }


async def test_an_unknown_v1_route_answers_in_openai_shape(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(f"{url}/v1/embeddings", json={"input": "x"})
        async with openai.AsyncOpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0) as sdk:
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.embeddings.create(model="mock", input="x")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "not_found_error"
    assert caught.value.status_code == 404


async def test_a_non_object_body_is_refused_in_openai_shape(client: httpx.AsyncClient) -> None:
    async with serve(make_settings(provider="mock")) as url:
        response = await client.post(f"{url}/v1/chat/completions", json=[1, 2])
    assert response.status_code == 422
    assert json.loads(response.text)["error"]["param"] == "body"
