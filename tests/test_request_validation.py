"""Bad input gets a clear HTTP error that names the field, before any stream starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import error_of, make_settings, serve

HI = {"role": "user", "content": "Hi"}


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with serve(make_settings(provider="mock", max_body_bytes=4096)) as url:
        yield url


CASES: list[tuple[str, Any, int, str, str]] = [
    # (name, body, status, code, text the message must contain)
    ("no messages field", {}, 422, "invalid_request", "messages: is required"),
    ("empty messages", {"messages": []}, 422, "invalid_request", "messages: must not be empty"),
    ("messages not a list", {"messages": "hi"}, 422, "invalid_request", "messages: must be a list"),
    ("body not an object", [HI], 422, "invalid_request", "body: must be a JSON object"),
    (
        "unknown role",
        {"messages": [{"role": "bot", "content": "x"}]},
        422,
        "invalid_request",
        "messages[0].role: must be 'user' or 'assistant', not 'bot'",
    ),
    (
        "system role in messages",
        {"messages": [{"role": "system", "content": "x"}, HI]},
        422,
        "invalid_request",
        "messages[0].role: 'system' is not a message role here",
    ),
    (
        "missing role",
        {"messages": [{"content": "x"}]},
        422,
        "invalid_request",
        "messages[0].role: is required",
    ),
    (
        "empty content",
        {"messages": [HI, {"role": "user", "content": "   "}]},
        422,
        "invalid_request",
        "messages[1].content: must not be empty",
    ),
    (
        "content of the wrong type",
        {"messages": [{"role": "user", "content": 42}]},
        422,
        "invalid_request",
        "messages[0].content: must be a string or a list",
    ),
    (
        "unsupported block",
        {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
        422,
        "invalid_request",
        "content blocks must be of type 'text', 'image', 'tool_use', 'tool_result',"
        " 'thinking', got 'document'",
    ),
    (
        "empty text block",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        422,
        "invalid_request",
        "messages[0].content: block 0: `text` must be a non-empty",
    ),
    (
        "max_tokens zero",
        {"messages": [HI], "max_tokens": 0},
        422,
        "invalid_request",
        "max_tokens: must be at least 1",
    ),
    (
        "max_tokens as a string",
        {"messages": [HI], "max_tokens": "100"},
        422,
        "invalid_request",
        "max_tokens: must be a whole number",
    ),
    (
        "max_tokens over the server's cap",
        {"messages": [HI], "max_tokens": 10_000_000},
        422,
        "invalid_request",
        "max_tokens: must be at most 64000 for 'mock' (CHATRELAY_MAX_TOKENS_LIMIT)",
    ),
    (
        "temperature too high",
        {"messages": [HI], "temperature": 2.5},
        422,
        "invalid_request",
        "temperature: must be at most 2",
    ),
    (
        "temperature negative",
        {"messages": [HI], "temperature": -0.1},
        422,
        "invalid_request",
        "temperature: must be at least 0",
    ),
    (
        "temperature as a string",
        {"messages": [HI], "temperature": "hot"},
        422,
        "invalid_request",
        "temperature: must be a number",
    ),
    (
        "model of the wrong type",
        {"messages": [HI], "model": 5},
        422,
        "invalid_request",
        "model: must be a string",
    ),
    (
        "system of the wrong type",
        {"messages": [HI], "system": 5},
        422,
        "invalid_request",
        "system: must be a string, or a list",
    ),
    (
        "conversation_id of the wrong type",
        {"messages": [HI], "conversation_id": {"id": 1}},
        422,
        "invalid_request",
        "conversation_id: must be a string",
    ),
    (
        "metadata of the wrong type",
        {"messages": [HI], "metadata": [1]},
        422,
        "invalid_request",
        "metadata: must be an object",
    ),
    (
        "bad mock option",
        {"messages": [HI], "metadata": {"mock": {"fail_after": -1}}},
        422,
        "invalid_request",
        "metadata.mock.fail_after: must be at least 0",
    ),
    (
        "unknown mock failure code",
        {"messages": [HI], "metadata": {"mock": {"fail_after": 1, "fail_code": "nope"}}},
        422,
        "invalid_request",
        "metadata.mock.fail_code: must be one of",
    ),
    (
        "unknown mock option",
        {"messages": [HI], "metadata": {"mock": {"body": "x"}}},
        422,
        "invalid_request",
        "metadata.mock.body: is not a mock option (they are: delay_s, first_token_delay_s,",
    ),
    (
        "mock options not an object",
        {"messages": [HI], "metadata": {"mock": 5}},
        422,
        "invalid_request",
        "metadata.mock: must be an object",
    ),
    (
        "empty model",
        {"messages": [HI], "model": ""},
        422,
        "invalid_request",
        "model: must not be empty",
    ),
    (
        "too many stop sequences",
        {"messages": [HI], "stop_sequences": ["a"] * 9},
        422,
        "invalid_request",
        "stop_sequences: must have at most 8 items, not 9",
    ),
    (
        "unknown thinking type",
        {"messages": [HI], "thinking": {"type": "deep"}},
        422,
        "invalid_request",
        "thinking.type: must be 'enabled' or 'adaptive', not 'deep'",
    ),
    (
        "unknown thinking field",
        {"messages": [HI], "thinking": {"type": "enabled", "budget_tokens": 2048, "depth": 1}},
        422,
        "invalid_request",
        "thinking.depth: is not a known field",
    ),
    (
        "bad image source type",
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "ftp"}}]}]},
        422,
        "invalid_request",
        "messages[0].content[0].source.type: must be 'base64' or 'url', not 'ftp'",
    ),
    (
        "image url not http",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "ftp://x"}}],
                }
            ]
        },
        422,
        "invalid_request",
        "messages[0].content[0].source.url: must be an http:// or https:// URL",
    ),
]

# pydantic's own wording: none of it may reach a client.
PYDANTIC_PHRASES = (
    "after validation",
    "Input should",
    "input should",
    "Field required",
    "Extra inputs",
    "should have",
    "Value error",
    "tagged-union",
    "list[",
)


def assert_in_our_words(message: str) -> None:
    for phrase in PYDANTIC_PHRASES:
        assert phrase not in message, message


@pytest.mark.parametrize(
    ("name", "body", "status", "code", "text"), CASES, ids=[c[0] for c in CASES]
)
async def test_bad_field_gets_its_status_and_a_message_naming_it(
    client: httpx.AsyncClient,
    base_url: str,
    name: str,
    body: Any,
    status: int,
    code: str,
    text: str,
) -> None:
    response = await client.post(f"{base_url}/ai/stream/chat", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert text in error["message"], error["message"]
    assert error["fields"] and all(f["field"] in error["message"] for f in error["fields"])
    assert_in_our_words(error["message"])
    for problem in error["fields"]:
        assert_in_our_words(problem["message"])


async def test_malformed_json_is_a_400(client: httpx.AsyncClient, base_url: str) -> None:
    response = await client.post(
        f"{base_url}/ai/stream/chat",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"]


async def test_body_over_the_limit_is_a_413_naming_the_limit(
    client: httpx.AsyncClient, base_url: str
) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    response = await client.post(f"{base_url}/ai/stream/chat", json=big)
    assert response.status_code == 413
    assert error_of(response) == {
        "code": "body_too_large",
        "message": "The request body is larger than the limit of 4096 bytes"
        " (CHATRELAY_MAX_BODY_BYTES)",
    }
    v1 = await client.post(f"{base_url}/v1/chat/completions", json={"model": "mock", **big})
    assert v1.status_code == 413
    assert v1.json()["error"]["code"] == "body_too_large"
    assert "(CHATRELAY_MAX_BODY_BYTES)" in v1.json()["error"]["message"]


async def test_body_over_the_limit_without_content_length_is_a_413_too(
    client: httpx.AsyncClient, base_url: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = await client.post(f"{base_url}/ai/stream/chat", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert "CHATRELAY_MAX_BODY_BYTES" in response.json()["error"]["message"]


async def test_unknown_extra_fields_are_ignored(client: httpx.AsyncClient, base_url: str) -> None:
    body = {"messages": [HI], "stream": True, "client_version": "1.2.3"}
    response = await client.post(f"{base_url}/ai/stream/chat", json=body)
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")


async def test_unknown_route_and_wrong_method_answer_in_the_same_error_shape(
    client: httpx.AsyncClient, base_url: str
) -> None:
    missing = await client.get(f"{base_url}/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await client.get(f"{base_url}/ai/chat")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_get_of_the_stream_endpoint_is_a_405_allowing_post_not_a_missing_stream(
    client: httpx.AsyncClient, base_url: str
) -> None:
    """`GET /ai/stream/{stream_id}` resumes a stream: "chat" is not taken for a stream id."""
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"{base_url}/ai/stream/chat")
        assert response.status_code == 405, response.text
        assert response.headers["allow"] == "POST"
    response = await client.get(f"{base_url}/ai/stream/chat")
    assert response.headers["content-type"] == "application/json"
    assert error_of(response) == {
        "code": "method_not_allowed",
        "message": "GET is not allowed on /ai/stream/chat: send the chat request with POST"
        " (to resume a stream: GET /ai/stream/{stream_id})",
    }


V1_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (name, body, param, message): the OpenAI shape, our words
    ("no messages field", {"model": "mock"}, "messages", "messages: is required"),
    ("empty messages", {"messages": []}, "messages", "messages: must not be empty"),
    (
        "max_tokens zero",
        {"messages": [HI], "max_tokens": 0},
        "max_tokens",
        "max_tokens: must be at least 1",
    ),
    (
        "temperature as a string",
        {"messages": [HI], "temperature": "hot"},
        "temperature",
        "temperature: must be a number",
    ),
    (
        "stream not a boolean",
        {"messages": [HI], "stream": "sometimes"},
        "stream",
        "stream: must be true or false",
    ),
    (
        "stop of the wrong type",
        {"messages": [HI], "stop": 5},
        "stop",
        "stop: must be a string, or a list",
    ),
    (
        "unknown mock option",
        {"messages": [HI], "metadata": {"mock": {"body": "x"}}},
        "metadata.mock.body",
        "metadata.mock.body: is not a mock option",
    ),
]


@pytest.mark.parametrize(("name", "body", "param", "text"), V1_CASES, ids=[c[0] for c in V1_CASES])
async def test_v1_bad_field_is_named_in_openai_shape_and_our_words(
    client: httpx.AsyncClient, base_url: str, name: str, body: dict[str, Any], param: str, text: str
) -> None:
    response = await client.post(f"{base_url}/v1/chat/completions", json={"model": "mock", **body})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    assert error["param"] == param
    assert error["message"].startswith(text), error["message"]
    assert_in_our_words(error["message"])


async def test_bad_query_parameters_are_named_in_our_words(
    client: httpx.AsyncClient, base_url: str
) -> None:
    resume = await client.get(f"{base_url}/ai/stream/0123abcd?after=-1")
    listing = await client.get(f"{base_url}/conversations?limit=many")
    assert resume.status_code == listing.status_code == 422
    assert error_of(resume) == {
        "code": "invalid_request",
        "message": "query.after: must be at least 0",
        "fields": [{"field": "query.after", "message": "must be at least 0"}],
    }
    assert error_of(listing)["message"] == "query.limit: must be a whole number"


ONLY_ASSISTANT = [{"role": "assistant", "content": "I am the model"}] * 2


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/ai/stream/chat", {}),
        ("/ai/chat", {}),
        ("/v1/chat/completions", {"model": "mock", "stream": True}),
        ("/v1/chat/completions", {"model": "mock", "metadata": {"conversation_id": "oa-1"}}),
    ],
    ids=["stream", "ai-chat", "v1-stream", "v1-stored"],
)
async def test_assistant_messages_alone_are_refused_and_nothing_is_stored(
    client: httpx.AsyncClient, base_url: str, path: str, extra: dict[str, Any]
) -> None:
    response = await client.post(f"{base_url}{path}", json={"messages": ONLY_ASSISTANT, **extra})
    conversations = (await client.get(f"{base_url}/conversations")).json()
    usage = (await client.get(f"{base_url}/usage", params={"group_by": "model"})).json()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["message"] == "messages: must contain at least one user message"
    if path.startswith("/v1/"):
        assert error["param"] == "messages"
    else:
        assert error["fields"] == [
            {"field": "messages", "message": "must contain at least one user message"}
        ]
    assert conversations["data"] == []
    assert usage["data"] == [] and usage["total"]["messages"] == 0


CAPPED_MODELS = """\
[models.small]
provider = "mock"
model = "mock"
max_tokens_cap = 100

[models.roomy]
provider = "mock"
model = "mock"
max_tokens_cap = 1000000
"""


@pytest.mark.parametrize(
    ("model", "asked", "message"),
    [
        ("small", 101, "must be at most 100 for 'small' (max_tokens_cap of [models.small])"),
        ("roomy", 64_001, "must be at most 64000 for 'roomy' (CHATRELAY_MAX_TOKENS_LIMIT)"),
    ],
    ids=["the alias cap", "the server limit"],
)
async def test_a_max_tokens_refusal_names_the_limit_that_applied(
    client: httpx.AsyncClient, tmp_path: Path, model: str, asked: int, message: str
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(CAPPED_MODELS)
    body = {"messages": [HI], "model": model, "max_tokens": asked}
    async with serve(make_settings(models_file=models)) as url:
        refused = await client.post(f"{url}/ai/stream/chat", json=body)
        v1 = await client.post(f"{url}/v1/chat/completions", json=body)
        fits = await client.post(f"{url}/ai/chat", json={**body, "max_tokens": asked - 1})
    assert refused.status_code == 422
    assert refused.json()["error"]["fields"] == [{"field": "max_tokens", "message": message}]
    assert v1.status_code == 422
    assert v1.json()["error"]["message"] == f"max_tokens: {message}"
    assert fits.status_code == 200, fits.text
