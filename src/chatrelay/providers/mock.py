"""The embedded default provider: a deterministic reply at a steady pace, with no network.

Frontend developers steer it per request through `metadata.mock` (see the README) to see their
error paths: a slow first token, a long reply, a failure after N pieces of text, a stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import (
    FieldProblem,
    InvalidField,
    UpstreamAuthError,
    UpstreamError,
    UpstreamFailed,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from ..events import (
    ProviderEvent,
    Stop,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..tokens import input_tokens
from ..validation import problems_from
from .base import ChatParams

FAILURES: dict[str, type[UpstreamError]] = {
    error.code: error
    for error in (
        UpstreamRateLimited,
        UpstreamOverloaded,
        UpstreamAuthError,
        UpstreamRejected,
        UpstreamTimeout,
        UpstreamFailed,
    )
}
FILLER = (
    "Each word of this reply arrives as its own piece of the stream, so a frontend can show "
    "it as it is typed. "
)


class MockOptions(BaseModel):
    """What a request may ask of the mock through `metadata.mock`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_s: float | None = Field(None, ge=0, le=10)
    first_token_delay_s: float = Field(0.0, ge=0, le=600)
    words: int | None = Field(None, ge=1, le=100_000)
    reply: str | None = Field(None, min_length=1, max_length=100_000)
    fail_after: int | None = Field(None, ge=0)
    fail_code: str = "overloaded"
    stall_after: int | None = Field(None, ge=0)
    # With tools offered: how many of them to call in one reply (then stop for their results).
    tool_calls: int = Field(1, ge=0, le=128)


OPTIONS = tuple(MockOptions.model_fields)


def mock_options(metadata: Mapping[str, Any]) -> MockOptions:
    """Read `metadata.mock`, naming the bad field if it is wrong."""
    raw = metadata.get("mock")
    if raw is None:
        raw = {}
    if isinstance(raw, dict) and (unknown := [key for key in raw if key not in OPTIONS]):
        known = ", ".join(OPTIONS)
        raise InvalidField(
            [
                FieldProblem(f"metadata.mock.{key}", f"is not a mock option (they are: {known})")
                for key in unknown
            ]
        )
    try:
        options = MockOptions.model_validate(raw)
    except ValidationError as exc:
        raise InvalidField(
            [
                FieldProblem(
                    "metadata.mock" if p.field == "body" else f"metadata.mock.{p.field}", p.message
                )
                for p in problems_from(exc.errors(include_url=False))
            ]
        ) from None
    if options.fail_after is not None and options.fail_code not in FAILURES:
        known = ", ".join(sorted(FAILURES))
        raise InvalidField([FieldProblem("metadata.mock.fail_code", f"must be one of {known}")])
    return options


def reply_words(params: ChatParams, options: MockOptions) -> list[str]:
    """The deterministic reply, split into the pieces the stream sends (a word each)."""
    if options.reply is not None:
        text = options.reply
    else:
        last_user = next(
            (m["content"] for m in reversed(params.messages) if m["role"] == "user"), ""
        )
        if not isinstance(last_user, str):
            last_user = "".join(_block_text(block) for block in last_user)
        quoted = " ".join(last_user.split())
        quoted = quoted if len(quoted) <= 200 else quoted[:199] + "…"
        text = f"Hello! This is a mock AI response to: “{quoted}”. The streaming is working!"
    words = text.split(" ")
    pieces = [word + " " for word in words[:-1]] + [words[-1]]
    if options.words is not None:
        filler = FILLER.split(" ")
        while len(pieces) < options.words:
            pieces[-1] += " " if not pieces[-1].endswith(" ") else ""
            pieces.extend(word + " " for word in filler[:-1])
        pieces = pieces[: options.words]
        pieces[-1] = pieces[-1].rstrip(" ")
    return [piece for piece in pieces if piece]


def _block_text(block: dict[str, Any]) -> str:
    if block.get("type") != "tool_result":
        return str(block.get("text", ""))
    content = block.get("content", "")
    if not isinstance(content, str):
        content = "".join(str(b.get("text", "")) for b in content)
    return f"[{block['tool_use_id']} returned {content}]"


def tool_calls(params: ChatParams, options: MockOptions) -> list[tuple[str, str]]:
    """(name, arguments) of the calls the mock makes: the tools offered, in order (the chosen
    one only), unless the last turn brings tool results, which it answers in text."""
    choice = params.tool_choice or {}
    if not params.tools or choice.get("type") == "none":
        return []
    last = params.messages[-1]["content"]
    if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
        return []
    tools = params.tools
    if choice.get("type") == "tool":
        tools = [t for t in tools if t["name"] == choice["name"]]
    count = 1 if choice.get("disable_parallel_tool_use") else options.tool_calls
    return [(t["name"], orjson.dumps(_sample(t["input_schema"])).decode()) for t in tools[:count]]


def _sample(schema: Any) -> Any:
    """A value of a JSON schema's shape (the first of an enum; every property of an object)."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        return {name: _sample(sub) for name, sub in (schema.get("properties") or {}).items()}
    samples = {"string": "mock", "integer": 1, "number": 1.5, "boolean": True, "array": []}
    return samples.get(str(kind))


def structured_reply(output: dict[str, Any], words: list[str]) -> str:
    """The mock's structured reply: a sample of the schema, or its text in an object."""
    if output["type"] == "json_schema":
        return orjson.dumps(_sample(output["schema"])).decode()
    return orjson.dumps({"reply": "".join(words)}).decode()


def estimate_tokens(params: ChatParams) -> int:
    return max(1, input_tokens(params.system, params.messages))


class MockProvider:
    """Streams a deterministic reply; no key, no network."""

    name = "mock"

    def __init__(self, delay_s: float) -> None:
        self._delay_s = delay_s

    def warnings(self, params: ChatParams) -> list[str]:
        return []

    def check(self, params: ChatParams) -> None:
        """Reject bad `metadata.mock` before the stream starts."""
        mock_options(params.metadata)

    def check_temperature(self, temperature: float, alias: str) -> None:
        return None  # any the request schema allows

    def adapt(self, params: ChatParams) -> ChatParams:
        return params

    async def count_tokens(self, params: ChatParams) -> int | None:
        return None  # the mock's counts are the estimate

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        options = mock_options(params.metadata)
        delay = self._delay_s if options.delay_s is None else options.delay_s
        calls = tool_calls(params, options)
        # One piece (a word of text, 8 characters of a call's arguments) stands for one token.
        pieces: list[ProviderEvent] = []
        if calls:
            stop_reason = "tool_use"
            for number, (name, arguments) in enumerate(calls):
                pieces.append(ToolCallStart(number, f"toolu_mock_{number}", name))
                # In pieces, as a model writes them: a client must not need them in one.
                pieces += [
                    ToolCallDelta(number, arguments[i : i + 8]) for i in range(0, len(arguments), 8)
                ]
        elif params.output_format is not None and options.reply is None:
            # Structured output: a value of the schema (or an object), in pieces.
            stop_reason = "end_turn"
            text = structured_reply(params.output_format, reply_words(params, options))
            pieces = [TextDelta(text[i : i + 8]) for i in range(0, len(text), 8)]
        else:
            stop_reason = "end_turn"
            pieces = [TextDelta(word) for word in reply_words(params, options)]
            if len(pieces) > params.max_tokens:
                pieces, stop_reason = pieces[: params.max_tokens], "max_tokens"
        if options.first_token_delay_s:
            await asyncio.sleep(options.first_token_delay_s)
        yield Usage(input_tokens=estimate_tokens(params), output_tokens=0)
        if params.thinking is not None:
            for thought in ("Let me think ", "about that. "):
                yield ThinkingDelta(thought)
        sent = 0
        for piece in pieces:
            if isinstance(piece, ToolCallStart):
                yield piece
                continue
            if sent == options.fail_after:
                raise FAILURES[options.fail_code](f"mock failure after {sent} pieces")
            if sent == options.stall_after:
                await asyncio.Event().wait()  # until the stream is cancelled
            if sent and delay:
                await asyncio.sleep(delay)
            yield piece
            sent += 1
        if options.fail_after is not None and options.fail_after >= sent:
            raise FAILURES[options.fail_code](f"mock failure after {sent} pieces")
        yield Usage(input_tokens=estimate_tokens(params), output_tokens=sent)
        yield Stop(stop_reason)

    async def aclose(self) -> None:
        return None
