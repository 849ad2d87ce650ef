"""The in-process event log: for one instance (the default when no REDIS_URL is set).

Per stream it keeps the list of its events, its meta, an owner, a finished flag and one waiter:
a few hundred bytes beyond the events themselves.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable

from ..events import StreamEvent, StreamMeta, TextDelta
from . import Batch, StreamInfo


class MirroredStream:
    """One stream's events (event `seq` is `events[seq - 1]`), owner and finished flag.

    A text delta, nearly every event, is held as its bare `str`: a log keeps every event of
    every stream until it expires, and strings are not tracked by the garbage collector,
    whose collections would otherwise walk them all (docs/BENCHMARKS.md). The last event
    appended is also kept as it came (`last`), so that a reader that keeps up, as nearly every
    reader does, gets it without a new `TextDelta` per read.
    """

    __slots__ = ("events", "finished", "last", "loop", "meta", "owner", "waiters")

    def __init__(self, meta: StreamMeta, owner: str, loop: asyncio.AbstractEventLoop) -> None:
        self.meta = meta
        self.owner = owner
        # Kept: asyncio.get_running_loop() is a getpid() system call each time, and readers
        # wait once per event.
        self.loop = loop
        self.events: list[StreamEvent | str] = []
        self.last: StreamEvent | None = None  # events[-1] as appended (one per stream)
        self.finished = False
        # One future per waiting reader (nearly always one): a reader that leaves cancels
        # only its own, with no `asyncio.shield` per event.
        self.waiters: list[asyncio.Future[None]] = []

    def slice(self, start: int, stop: int | None = None) -> list[StreamEvent]:
        """Events `start + 1` to `stop` (all from there when None), as events."""
        return [TextDelta(e) if isinstance(e, str) else e for e in self.events[start:stop]]

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def changed(self) -> None:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self.waiters:  # this reader left (cancelled): forget its future
                self.waiters.remove(waiter)
            raise


class MemoryEventLog:
    """Events in memory; finished streams expire `ttl_s` after their end."""

    def __init__(self, instance: str, ttl_s: float) -> None:
        self.instance = instance
        self._ttl = ttl_s
        self._streams: dict[str, MirroredStream] = {}
        self._expiry: deque[tuple[float, str]] = deque()
        self._claims: dict[tuple[str, str], tuple[str, float]] = {}

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._expiry and self._expiry[0][0] <= now:
            _, stream_id = self._expiry.popleft()
            self._streams.pop(stream_id, None)
        for claim, (_, expires) in list(self._claims.items()):
            if expires <= now:
                del self._claims[claim]

    async def create(self, meta: StreamMeta, owner: str) -> None:
        self._sweep()
        self._streams[meta.stream_id] = MirroredStream(meta, owner, asyncio.get_running_loop())

    async def append(self, stream_id: str, seq: int, event: StreamEvent) -> None:
        stream = self._streams[stream_id]
        stream.events.append(event.text if type(event) is TextDelta else event)
        stream.last = event
        stream.wake()

    async def finish(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        stream.finished = True
        stream.wake()
        self._expiry.append((time.monotonic() + self._ttl, stream_id))

    def has(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def stream(self, stream_id: str) -> MirroredStream | None:
        """The stream itself (for the Redis backend, which copies it), until it expires."""
        return self._streams.get(stream_id)

    def stream_ids(self) -> list[str]:
        """Every stream held (running ones, and finished ones until they expire)."""
        self._sweep()
        return list(self._streams)

    async def info(self, stream_id: str) -> StreamInfo | None:
        self._sweep()
        stream = self._streams.get(stream_id)
        if stream is None:
            return None
        return StreamInfo(
            stream.meta, stream.owner, self.instance, stream.finished, len(stream.events)
        )

    async def read(self, stream_id: str, after: int) -> AsyncGenerator[Batch, None]:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        index = after
        events = stream.events
        while True:
            count = len(events)
            if index < count:
                if index == count - 1:
                    # Just the newest event (the reader keeps up): the one appended, as it came.
                    held, last = events[index], stream.last
                    if last is not None and (
                        last is held or (type(last) is TextDelta and last.text is held)
                    ):
                        index = count
                        yield count, (last,)
                        continue
                # Everything that piled up goes out together (in one write, once encoded).
                batch = stream.slice(index)
                yield index + 1, batch
                index += len(batch)
            elif stream.finished:
                return
            else:
                await stream.changed()

    async def claim(self, owner: str, key: str, stream_id: str) -> str:
        self._sweep()
        bound, _ = self._claims.setdefault((owner, key), (stream_id, time.monotonic() + self._ttl))
        return bound

    async def forget_claim(self, owner: str, key: str) -> None:
        self._claims.pop((owner, key), None)

    async def attach(self, stream_id: str) -> None:
        return None

    async def detach(self, stream_id: str) -> None:
        return None

    async def remote_readers(self, stream_id: str) -> int:
        return 0

    async def request_stop(self, info: StreamInfo, wait_s: float) -> str | None:
        # One instance: the hub stops its own generations; one it no longer runs has ended.
        return "finished"

    async def start(self, on_control: Callable[[str, str], Awaitable[str | None]]) -> None:
        return None

    async def close(self) -> None:
        for stream in self._streams.values():
            stream.wake()
