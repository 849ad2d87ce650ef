"""Per-stream event logs: the events of each generation, readable from any offset.

A generation appends its events (`events.StreamEvent`, numbered 1, 2, 3, …) and finally marks
its log finished; readers replay the events after an offset and then follow live ones. A log
holds the project's own events, never a surface's frames: each reader's surface encodes them.
The memory backend serves one instance; the Redis backend (Redis Streams for the events, keys and
pub/sub for the control) lets any instance read, resume and stop any stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..events import StreamEvent, StreamMeta

# Events read at once: the number of the first one, then the events in order.
Batch = tuple[int, Sequence[StreamEvent]]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What is known of a stream, wherever it runs."""

    meta: StreamMeta
    owner: str
    instance: str  # the instance running (or that ran) its generation
    finished: bool
    last_seq: int = 0  # the number of its last event so far

    @property
    def stream_id(self) -> str:
        return self.meta.stream_id


class EventLog(Protocol):
    """Storage and signalling for the streams of one or more instances."""

    async def create(self, meta: StreamMeta, owner: str) -> None:
        """Register a new stream, running on this instance."""
        ...

    async def append(self, stream_id: str, seq: int, event: StreamEvent) -> None:
        """Add event `seq` (1, 2, 3, … without gaps)."""
        ...

    async def finish(self, stream_id: str) -> None:
        """No more events; the log now expires after the TTL."""
        ...

    async def info(self, stream_id: str) -> StreamInfo | None:
        """None for an unknown or expired stream."""
        ...

    def read(self, stream_id: str, after: int) -> AsyncGenerator[Batch, None]:
        """Every event after `after`, then live ones (several at once when they pile up),
        until the log is finished."""
        ...

    async def claim(self, owner: str, key: str, stream_id: str) -> str:
        """Bind an idempotency key to `stream_id` unless already bound; return the bound id."""
        ...

    async def forget_claim(self, owner: str, key: str) -> None: ...

    async def attach(self, stream_id: str) -> None:
        """A reader on this instance starts following a stream that may run elsewhere."""
        ...

    async def detach(self, stream_id: str) -> None: ...

    async def remote_readers(self, stream_id: str) -> int:
        """Readers following this stream from other instances."""
        ...

    async def request_stop(self, info: StreamInfo, wait_s: float) -> str | None:
        """Ask the instance running `info` to stop it (the local case is the hub's): its
        answer (`stopped`, or `finished` if the reply had already ended), or None if it did not
        confirm within `wait_s` seconds."""
        ...

    async def start(self, on_control: Callable[[str, str], Awaitable[str | None]]) -> None:
        """Begin delivering control messages (`stop`, `readers`) for this instance's streams.

        `on_control(kind, stream_id)` returns the answer to send back to the instance that
        asked (for `stop`: `stopped` or `finished` once the generation has ended), or None."""
        ...

    async def close(self) -> None: ...
