"""The provider interface: one async generator that yields the project's own stream events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import ProviderEvent


@dataclass(slots=True, frozen=True)
class ChatParams:
    """What a provider needs to produce one reply, independent of any wire format.

    Sampling parameters are already resolved for the model: None means "do not send".
    Messages and content blocks are in the Messages API shape.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    # Text, or Messages API text blocks (when the client placed cache breakpoints in it).
    system: str | list[dict[str, Any]] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    thinking: dict[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Messages API shapes: [{name, description, input_schema}], {type, name,
    # disable_parallel_tool_use}, and {type: json_schema | json_object, schema, name, strict}.
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None
    # Automatic prompt caching where the provider has it: the breakpoints' TTL ("5m", "1h"),
    # None for off; `continues`: the prompt has a next turn (a stored conversation).
    prompt_cache: str | None = None
    continues: bool = False


class Provider(Protocol):
    """A model provider. `stream` must close its upstream request when it is closed early."""

    name: str

    def stream(self, params: ChatParams) -> AsyncGenerator[ProviderEvent, None]:
        """Yield the reply's events; end with a `Stop`, or raise an `UpstreamError`."""
        ...

    def check(self, params: ChatParams) -> None:
        """Raise a `RequestError` for a request this provider cannot serve, before streaming."""
        ...

    def check_temperature(self, temperature: float, alias: str) -> None:
        """Raise `InvalidField` (naming `temperature`) for a temperature the client asked of
        `alias` that this provider's models do not take, whether or not it would be sent."""
        ...

    def adapt(self, params: ChatParams) -> ChatParams:
        """`params` brought into the ranges this provider's models take (a fallback gets what
        the client asked of another model, e.g. a temperature above Claude's 1)."""
        ...

    def warnings(self, params: ChatParams) -> list[str]:
        """Notes for the client about its request (e.g. a deprecated model)."""
        ...

    async def count_tokens(self, params: ChatParams) -> int | None:
        """The input tokens of `params` as the upstream counts them (its system prompt,
        messages and tools); None where the upstream has no such count (then chatrelay
        estimates). Raises an `UpstreamError` if the upstream fails to count."""
        ...

    async def aclose(self) -> None:
        """Release clients and connection pools."""
        ...
