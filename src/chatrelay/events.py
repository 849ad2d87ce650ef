"""The project's own stream events: what every provider yields, whatever its wire format."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class TextDelta:
    """A piece of the reply's text, in the order the model produced it."""

    text: str


@dataclass(slots=True, frozen=True)
class ThinkingDelta:
    """A piece of the model's visible reasoning (extended thinking), relayed only when asked."""

    text: str


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts so far; a later Usage replaces an earlier one (counts are cumulative)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False  # counted by chatrelay from the text, not by the upstream


@dataclass(slots=True, frozen=True)
class Stop:
    """The upstream's end marker: the reply is complete. `reason` is its stop reason."""

    reason: str | None


ProviderEvent = TextDelta | ThinkingDelta | Usage | Stop
