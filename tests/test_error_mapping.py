"""Every error of the tree, on both surfaces: its status, code and headers, the project's body
and OpenAI's, as HTTP responses and as stream error frames."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from chatrelay import errors as E
from chatrelay.error_bodies import openai_body, project_body, seed_frame_payload
from chatrelay.events import Cut, StreamMeta
from chatrelay.routes.errors import error_response_for, framework_error
from chatrelay.surfaces.openai import error_chunk
from chatrelay.surfaces.seed import SeedEncoder

RETRY_NO = {"x-should-retry": "false"}
FIELD = [E.FieldProblem("messages[0].role", "must be 'user' or 'assistant'")]


@dataclass(frozen=True)
class Row:
    make: Callable[[], E.ChatRelayError]
    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    openai_type: str = "api_error"
    fields: list[dict[str, str]] | None = None  # in the project's body; the first is `param`
    retry_after: float | None = None  # in the seed's stream error frame


ROWS: dict[type[E.ChatRelayError], Row] = {
    E.ChatRelayError: Row(lambda: E.ChatRelayError("boom"), 500, "internal", "boom", RETRY_NO),
    E.ConfigError: Row(lambda: E.ConfigError("set X"), 500, "config", "set X", RETRY_NO),
    E.InternalError: Row(
        E.InternalError,
        500,
        "internal",
        "Something went wrong on the server. Please try again.",
        RETRY_NO,
    ),
    E.RequestError: Row(
        lambda: E.RequestError("bad"), 422, "invalid_request", "bad", {}, "invalid_request_error"
    ),
    E.MalformedJSON: Row(
        lambda: E.MalformedJSON("not JSON"),
        400,
        "invalid_json",
        "not JSON",
        {},
        "invalid_request_error",
    ),
    E.UnsupportedMediaType: Row(
        lambda: E.UnsupportedMediaType("send JSON"),
        415,
        "unsupported_media_type",
        "send JSON",
        {},
        "invalid_request_error",
    ),
    E.BodyTooLarge: Row(
        lambda: E.BodyTooLarge("too big"),
        413,
        "body_too_large",
        "too big",
        {},
        "invalid_request_error",
    ),
    E.RequestTimeout: Row(
        E.RequestTimeout,
        408,
        "request_timeout",
        "The request did not arrive in time (CHATRELAY_REQUEST_TIMEOUT_S)",
    ),
    E.InvalidField: Row(
        lambda: E.InvalidField(FIELD),
        422,
        "invalid_request",
        "messages[0].role: must be 'user' or 'assistant'",
        {},
        "invalid_request_error",
        [{"field": "messages[0].role", "message": "must be 'user' or 'assistant'"}],
    ),
    E.OverLimit: Row(
        lambda: E.OverLimit("tokens_per_day", 100, 250),
        422,
        "request_over_limit",
        "This request needs about 250 tokens (its input plus max_tokens), more than your"
        " tokens_per_day limit of 100: lower max_tokens or send less",
        {},
        "invalid_request_error",
        [{"field": "max_tokens", "message": "tokens_per_day is 100; this request needs ~250"}],
    ),
    E.OverBudget: Row(
        lambda: E.OverBudget("daily_usd", 1.0, 1.5),
        422,
        "request_over_limit",
        "This request may cost up to $1.5000 (its input plus max_tokens at the model's prices),"
        " more than your daily_usd budget of $1.00: lower max_tokens or send less",
        {},
        "invalid_request_error",
        [{"field": "max_tokens", "message": "daily_usd is $1.00; this request may cost $1.5000"}],
    ),
    E.ModelUnpriced: Row(
        lambda: E.ModelUnpriced("local", "llama3"),
        403,
        "model_unpriced",
        "Model 'local' (llama3) has no known price, and your limits include a budget in"
        " dollars: its cost could not be counted. Choose a priced model, or ask the operator"
        " to give [models.local] a price in the models file",
        {},
        "permission_error",
        [
            {
                "field": "model",
                "message": "Model 'local' (llama3) has no known price, and your limits include"
                " a budget in dollars: its cost could not be counted. Choose a priced model, or"
                " ask the operator to give [models.local] a price in the models file",
            }
        ],
    ),
    E.UnknownModel: Row(
        lambda: E.UnknownModel("gpt-9", ["a", "b"]),
        400,
        "unknown_model",
        "Unknown model 'gpt-9'; known models: a, b",
        {},
        "invalid_request_error",
        [{"field": "model", "message": "Unknown model 'gpt-9'; known models: a, b"}],
    ),
    E.ModelUnavailable: Row(
        lambda: E.ModelUnavailable("claude", "no key"),
        503,
        "model_unavailable",
        "Model 'claude' is not available: no key",
        RETRY_NO,
    ),
    E.Unsupported: Row(
        lambda: E.Unsupported("tools", "not offered"),
        400,
        "unsupported",
        "tools: not offered",
        {},
        "invalid_request_error",
        [{"field": "tools", "message": "not offered"}],
    ),
    E.NotFound: Row(
        lambda: E.NotFound("no such stream"),
        404,
        "not_found",
        "no such stream",
        {},
        "not_found_error",
    ),
    E.MethodNotAllowed: Row(
        lambda: E.MethodNotAllowed("use POST", ["POST", "OPTIONS"]),
        405,
        "method_not_allowed",
        "use POST",
        {"allow": "POST, OPTIONS"},
    ),
    E.FrameworkError: Row(
        lambda: E.FrameworkError(400, "Bad", {"X-Thing": "1"}),
        400,
        "http_error",
        "Bad",
        {"x-thing": "1"},
        "invalid_request_error",
    ),
    E.Unauthorized: Row(
        lambda: E.Unauthorized("send a key"),
        401,
        "unauthorized",
        "send a key",
        {"www-authenticate": "Bearer"},
        "authentication_error",
    ),
    E.Forbidden: Row(
        lambda: E.Forbidden("operator only"),
        403,
        "forbidden",
        "operator only",
        {},
        "permission_error",
    ),
    E.LimitExceeded: Row(
        lambda: E.LimitExceeded("requests_per_minute", 60, 12.4),
        429,
        "limit_exceeded",
        "Limit reached: requests_per_minute is 60; try again in 12 s",
        {
            "retry-after": "12",
            "x-ratelimit-limit": "60",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": "12",
            "x-ratelimit-scope": "requests_per_minute",
        },
        "rate_limit_error",
        retry_after=12.4,
    ),
    E.BudgetExceeded: Row(
        lambda: E.BudgetExceeded("daily_usd", 5.0, 4.9876, 3600.4),
        429,
        "limit_exceeded",
        "Budget reached: your daily_usd budget is $5.00 and $4.9876 of it is spent or reserved"
        " by replies running now, too little left for this request's worst case; it resets in"
        " 3600 s",
        {
            "retry-after": "3600",
            "x-ratelimit-limit": "5.0",
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": "3600",
            "x-ratelimit-scope": "daily_usd",
        },
        "rate_limit_error",
        retry_after=3600.4,
    ),
    E.ConversationBusy: Row(
        lambda: E.ConversationBusy("c1"),
        409,
        "conversation_busy",
        "Conversation 'c1' is already answering a message; wait for that reply to end, or stop"
        " it, then send again",
    ),
    E.StreamEnded: Row(
        lambda: E.StreamEnded("s1", 9),
        416,
        "stream_ended",
        "Stream 's1' has ended and has no frame after 9: Last-Event-ID is past its end (resume"
        " from the last id you received)",
    ),
    E.StorageUnavailable: Row(
        lambda: E.StorageUnavailable("Redis cannot be reached"),
        503,
        "storage_unavailable",
        "Redis cannot be reached",
        {"retry-after": "5", "x-should-retry": "true"},
    ),
    E.ServerRestarting: Row(
        E.ServerRestarting,
        503,
        "server_restarting",
        "The server is restarting; send the request again in a moment",
        RETRY_NO,
    ),
    E.StopUnconfirmed: Row(
        lambda: E.StopUnconfirmed("s1", 5),
        503,
        "stop_unconfirmed",
        "The server generating stream 's1' did not confirm the stop within 5 s; the reply may"
        " still be running: send the stop again",
        RETRY_NO,
    ),
    E.StreamCut: Row(lambda: E.StreamCut("cut"), 503, "stream_cut", "cut", RETRY_NO),
    E.InstanceLost: Row(
        E.InstanceLost,
        503,
        "instance_lost",
        "The server generating this reply went away; send the message again.",
        RETRY_NO,
    ),
    E.StreamIncomplete: Row(
        E.StreamIncomplete,
        503,
        "stream_incomplete",
        "Part of this reply was lost; send the message again.",
        RETRY_NO,
    ),
    E.UpstreamError: Row(
        E.UpstreamError,
        502,
        "upstream_error",
        "The AI provider failed to answer. Please try again.",
        RETRY_NO,
    ),
    E.UpstreamRateLimited: Row(
        lambda: E.UpstreamRateLimited("429 from upstream", retry_after=2.5),
        429,
        "rate_limited",
        "The AI provider is rate limiting requests. Please wait a moment and retry.",
        {"retry-after": "2", "x-should-retry": "true"},
        "rate_limit_error",
        retry_after=2.5,
    ),
    E.UpstreamOverloaded: Row(
        lambda: E.UpstreamOverloaded("529"),
        503,
        "overloaded",
        "The AI provider is overloaded right now. Please retry shortly.",
        {"x-should-retry": "true"},
    ),
    E.UpstreamAuthError: Row(
        lambda: E.UpstreamAuthError("401: key sk-secret rejected"),
        502,
        "upstream_auth",
        "The server's AI provider credentials were rejected. Contact the operator.",
        RETRY_NO,
    ),
    E.UpstreamRejected: Row(
        lambda: E.UpstreamRejected("prompt is too long"),
        400,
        "invalid_request",
        "The AI provider rejected the request: prompt is too long",
        {"x-should-retry": "false"},
        "invalid_request_error",
    ),
    E.UpstreamTimeout: Row(
        lambda: E.UpstreamTimeout("read timeout"),
        504,
        "upstream_timeout",
        "The AI provider took too long to answer. Please try again.",
        RETRY_NO,
    ),
    E.UpstreamFailed: Row(
        lambda: E.UpstreamFailed("500", retryable=True),
        502,
        "upstream_error",
        "The AI provider failed to answer. Please try again.",
        {"x-should-retry": "true"},
    ),
}


def test_the_table_covers_every_error_class_of_the_tree() -> None:
    tree = {
        cls
        for _, cls in inspect.getmembers(E, inspect.isclass)
        if issubclass(cls, E.ChatRelayError) and cls.__module__ == E.__name__
    }
    assert tree == set(ROWS)


@pytest.mark.parametrize("cls", list(ROWS), ids=lambda cls: cls.__name__)
def test_an_error_maps_to_the_same_status_code_and_headers_on_both_surfaces(
    cls: type[E.ChatRelayError],
) -> None:
    row = ROWS[cls]
    exc = row.make()
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message) == (row.status, row.code, row.message)
    assert exc.headers() == row.headers

    # The project's shape: the HTTP body, and the seed's stream error frame.
    project: dict[str, Any] = {"code": row.code, "message": row.message}
    if row.fields:
        project["fields"] = row.fields
    assert project_body(exc, request_id=None) == {"error": project}
    assert project_body(exc, request_id="r1", partial_content=None) == {
        "error": {**project, "request_id": "r1"}
    }
    frame: dict[str, Any] = {"error": row.message, "code": row.code, "request_id": "r1"}
    if row.retry_after is not None:
        frame["retry_after"] = row.retry_after
    assert seed_frame_payload(exc, request_id="r1") == frame

    # OpenAI's shape: the HTTP body, and the same body as a stream's error chunk.
    param = row.fields[0]["field"] if row.fields else None
    openai = {
        "error": {"message": row.message, "type": row.openai_type, "param": param, "code": row.code}
    }
    assert openai_body(exc) == openai
    assert error_chunk(3, exc) == b"id: 3\ndata: " + json.dumps(
        openai, separators=(",", ":")
    ).encode() + (b"\n\n")

    # As HTTP responses: the same status and headers under either surface's path.
    for path, body in (("/ai/stream/chat", {"error": project}), ("/v1/chat/completions", openai)):
        response = error_response_for(path, exc)
        assert response.status_code == row.status
        assert json.loads(response.body) == body
        sent = {k: v for k, v in response.headers.items() if k not in ("content-length",)}
        assert sent == {"content-type": "application/json", **row.headers}

    # Mapping it changed nothing on the error.
    assert (exc.status, exc.code, exc.message) == (row.status, row.code, row.message)


@pytest.mark.parametrize(
    ("starlette", "cls", "status", "code", "headers"),
    [
        (HTTPException(404), E.NotFound, 404, "not_found", {}),
        (
            HTTPException(405, headers={"Allow": "GET, HEAD"}),
            E.MethodNotAllowed,
            405,
            "method_not_allowed",
            {"allow": "GET, HEAD"},
        ),
        (HTTPException(400, "Bad"), E.FrameworkError, 400, "http_error", {}),
        (HTTPException(503), E.FrameworkError, 503, "http_error", RETRY_NO),
    ],
    ids=["404", "405", "400", "503"],
)
def test_starlettes_own_http_errors_become_errors_of_the_tree(
    starlette: HTTPException, cls: type, status: int, code: str, headers: dict[str, str]
) -> None:
    exc = framework_error(starlette)
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message, exc.headers()) == (
        status,
        code,
        starlette.detail,
        headers,
    )


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        (
            "server_restarting",
            E.ServerRestarting(
                "The server is restarting; resume this stream or send the message again."
            ),
        ),
        ("instance_lost", E.InstanceLost()),
        ("stream_incomplete", E.StreamIncomplete()),
    ],
)
def test_a_cut_streams_error_frame_is_the_seeds_error_frame(
    reason: str, error: E.ChatRelayError
) -> None:
    encoder = SeedEncoder(StreamMeta("s1", "seed", 0, "mock"))
    first = encoder.encode(7, Cut(reason)).split(b"\n\n")[0] + b"\n\n"
    assert first.startswith(b"id: 7\ndata: ")
    payload = json.loads(first.removeprefix(b"id: 7\ndata: ").rstrip(b"\n"))
    assert (
        payload
        == seed_frame_payload(error, request_id=None)
        == {
            "error": error.message,
            "code": reason,
        }
    )
