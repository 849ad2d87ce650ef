"""The project's own vocabulary of a reply, whatever the wire it came from or goes to.

    provider ──> TextDelta, ThinkingDelta, ToolCallStart, ToolCallDelta, Usage, Stop
                                                              (providers/, any upstream)
    relay    ──> Answering, the provider's deltas, End        (relay.py: retries, fallbacks)
    hub      ──> ... and Cut, when a generation ends early    (streams.py: Stop, drain)
    store    <── Reply                                        (how the turn went, stored)

A stream's event log holds `StreamEvent`s, numbered 1, 2, 3, … in order; each surface's
encoder (surfaces/) turns them into its own frames for each reader. Nothing here knows a wire
format.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .errors import ChatRelayError, InstanceLost, ServerRestarting, StreamIncomplete

if TYPE_CHECKING:
    from .models import ModelSpec


# -- what a provider yields ------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class TextDelta:
    """A piece of the reply's text, in the order the model produced it."""

    text: str


@dataclass(slots=True, frozen=True)
class ThinkingDelta:
    """A piece of the model's visible reasoning (extended thinking), relayed only when asked."""

    text: str


@dataclass(slots=True, frozen=True)
class ThinkingSignature:
    """The signature that ends a thinking block (Claude's): what lets the thinking be sent
    back in a later turn, as Claude requires when it thinks and calls tools."""

    signature: str


@dataclass(slots=True, frozen=True)
class ToolCallStart:
    """The model calls a tool: `index` numbers the reply's tool calls 0, 1, … (several may be
    made in one reply); its arguments follow as `ToolCallDelta` pieces of one JSON object."""

    index: int
    id: str
    name: str


@dataclass(slots=True, frozen=True)
class ToolCallDelta:
    """A piece of tool call `index`'s arguments (JSON text), as the model produced it."""

    index: int
    arguments: str


@dataclass(slots=True, frozen=True)
class Usage:
    """Token counts so far; a later Usage replaces an earlier one (counts are cumulative).

    `input_tokens` counts every input token, cached or not; `cache_read_tokens` and
    `cache_write_tokens` say how many of them were read from or written to the prompt cache,
    `reasoning_tokens` how many of `output_tokens` the model spent thinking."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    estimated: bool = False  # counted by chatrelay from the text, not by the upstream
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    # What the reply cost in US dollars (prices.py), set by the chat service when the reply
    # ends; None: not known (not yet, or the model has no price).
    cost_usd: float | None = None


@dataclass(slots=True, frozen=True)
class Stop:
    """The upstream's end marker: the reply is complete. `reason` is its stop reason."""

    reason: str | None


ProviderEvent = (
    TextDelta | ThinkingDelta | ThinkingSignature | ToolCallStart | ToolCallDelta | Usage | Stop
)
# What a reader is shown as the reply grows (the first of them ends the retries).
Output = TextDelta | ThinkingDelta | ThinkingSignature | ToolCallStart | ToolCallDelta


# -- what the relay adds ---------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Answering:
    """The model that answers (its alias's spec); `fallback_from` lists the aliases that
    failed before it."""

    spec: ModelSpec
    fallback_from: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class End:
    """How a reply ended: `error` is None for a complete reply."""

    stop_reason: str | None
    usage: Usage | None
    error: ChatRelayError | None = None
    attempts: int = 1


RelayEvent = (
    Answering | TextDelta | ThinkingDelta | ThinkingSignature | ToolCallStart | ToolCallDelta | End
)


# -- what the hub adds -----------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class Cut:
    """A generation that did not reach its own end: `stopped` (a Stop), `disconnected` (its
    readers left), `server_restarting` (the drain), or, for readers elsewhere, `instance_lost`
    (its instance went away) and `stream_incomplete` (frames nobody can deliver)."""

    reason: str

    def error(self) -> ChatRelayError | None:
        """The error its readers are told of; None for an end they asked for (a Stop, or
        readers that left)."""
        if self.reason == "server_restarting":
            return ServerRestarting(
                "The server is restarting; resume this stream or send the message again."
            )
        if self.reason == "instance_lost":
            return InstanceLost()
        if self.reason == "stream_incomplete":
            return StreamIncomplete()
        return None


StreamEvent = (
    Answering
    | TextDelta
    | ThinkingDelta
    | ThinkingSignature
    | ToolCallStart
    | ToolCallDelta
    | End
    | Cut
)
# The last event of every stream: nothing follows it.
TERMINAL = (End, Cut)


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What a stream's readers need beside its events, known before its first event: who
    started it, through which surface (whose encoder renders it), and that surface's options."""

    stream_id: str
    surface: str
    created: int  # Unix time
    requested_model: str
    conversation_id: str | None = None
    history_omitted: int = 0
    warnings: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # of the request that started it: what its errors quote


# -- what is stored --------------------------------------------------------------------------
@dataclass(slots=True)
class Reply:
    """How an assistant turn went, recorded when its stream ends."""

    content: str
    model: str | None
    stream_id: str
    end_reason: str
    stop_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None  # the error frame's message, safe to show a user
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None  # of input_tokens
    cache_write_tokens: int | None = None  # of input_tokens
    usage_estimated: bool = False
    cost_usd: float | None = None  # from its usage at its model's price; None: no price
    ttft_ms: int | None = None
    duration_ms: int | None = None
    thinking: str | None = None
    thinking_signature: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def content_blocks(self) -> str | list[dict[str, Any]]:
        """The reply as a message's content: its text, or with tool calls or signed thinking,
        Messages API blocks (the thinking, its text, then a `tool_use` block per call)."""
        if not self.tool_calls and not self.thinking_signature:
            return self.content
        blocks: list[dict[str, Any]] = []
        if self.thinking_signature:  # signed: it can go back to Claude with the history
            signed = {"thinking": self.thinking or "", "signature": self.thinking_signature}
            blocks.append({"type": "thinking", **signed})
        if self.content:
            blocks.append({"type": "text", "text": self.content})
        return blocks + [call.block() for call in self.tool_calls]


@dataclass(slots=True, frozen=True)
class ToolCall:
    """One whole tool call of a reply; `arguments` is the JSON text the model produced."""

    id: str
    name: str
    arguments: str

    def input(self) -> dict[str, Any]:
        """The arguments as an object; `{}` for none, or for a call cut before they were
        whole (a history must hold an object, and such a call is never run)."""
        try:
            value = orjson.loads(self.arguments or "{}")
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}

    def block(self) -> dict[str, Any]:
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input()}


class ToolCalls:
    """Assembles a reply's tool calls from their events, in the order they were made."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, tuple[str, str, list[str]]] = {}

    def add(self, event: ToolCallStart | ToolCallDelta) -> None:
        if isinstance(event, ToolCallStart):
            self._calls[event.index] = (event.id, event.name, [])
        elif (call := self._calls.get(event.index)) is not None:
            call[2].append(event.arguments)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id, name, "".join(pieces))
            for _, (id, name, pieces) in sorted(self._calls.items())
        )

    def chars(self) -> int:
        return sum(len(name) + sum(map(len, pieces)) for _, name, pieces in self._calls.values())
