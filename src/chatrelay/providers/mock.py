"""The embedded default provider: a deterministic reply at a steady pace, with no network.

Frontend developers steer it per request through `metadata.mock` (see the README) to see their
error paths: a slow first token, a long reply, a failure after N pieces of text, a stall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

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
from ..events import ProviderEvent, Stop, TextDelta, ThinkingDelta, Usage
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
            last_user = "".join(block.get("text", "") for block in last_user)
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

    async def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        options = mock_options(params.metadata)
        delay = self._delay_s if options.delay_s is None else options.delay_s
        pieces = reply_words(params, options)
        stop_reason = "end_turn"
        if len(pieces) > params.max_tokens:  # one piece stands for one token
            pieces, stop_reason = pieces[: params.max_tokens], "max_tokens"
        if options.first_token_delay_s:
            await asyncio.sleep(options.first_token_delay_s)
        yield Usage(input_tokens=estimate_tokens(params), output_tokens=0)
        if params.thinking is not None:
            for piece in ("Let me think ", "about that. "):
                yield ThinkingDelta(piece)
        for sent, piece in enumerate(pieces):
            if sent == options.fail_after:
                raise FAILURES[options.fail_code](f"mock failure after {sent} pieces")
            if sent == options.stall_after:
                await asyncio.Event().wait()  # until the stream is cancelled
            if sent and delay:
                await asyncio.sleep(delay)
            yield TextDelta(piece)
        if options.fail_after is not None and options.fail_after >= len(pieces):
            raise FAILURES[options.fail_code](f"mock failure after {len(pieces)} pieces")
        yield Usage(input_tokens=estimate_tokens(params), output_tokens=len(pieces))
        yield Stop(stop_reason)

    async def aclose(self) -> None:
        return None
