"""Generations decoupled from HTTP responses: resume, Stop, grace, idempotency, shutdown.

Each accepted streaming request, whatever its surface, becomes one *generation*: a task that
runs the reply and appends its events (`events.StreamEvent`) to the stream's event log. HTTP
responses are *readers* of that log: the POST's own response, and any `GET /ai/stream/{id}`
resuming after a dropped connection, on this instance or (with Redis) another one. Each
reader's surface (surfaces/) encodes the events as its frames; the hub never sees a frame.

    POST ──> hub.open(job) ──> task: job.events() ──append──> event log
                  │                                              │
                  └──> Reader ──────────── read() ───────────────┘ <── GET /ai/stream/{id}
                         │ (its surface encodes the events, and skips those the client has)

- When the last reader of a running generation goes away, it runs on for its resume grace,
  waiting for a resume; then it is cancelled (which closes the upstream request). A grace of 0
  cancels at once, as a plain relay would. The grace is the server's (`resume_grace_s`) unless
  the request asked for less (`X-Resume-Grace`; surfaces whose clients never resume ask 0).
- Stop cancels the generation wherever it runs; its readers get a `Cut("stopped")`. It
  answers `stopped` only once the generation has ended (on another instance: once that
  instance says so), else `stop_unconfirmed` after `stop_wait_s`.
- On shutdown new streams are refused, running ones get `shutdown_grace_s` to finish, and the
  rest end with `Cut("server_restarting")`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING

from .errors import ChatRelayError, NotFound, ServerRestarting, StopUnconfirmed
from .eventlogs import Batch, EventLog, StreamInfo
from .events import Answering, Cut, End, StreamMeta

if TYPE_CHECKING:
    from .chat import ChatJob

log = logging.getLogger("chatrelay.streams")

# How long a Stop waits for the generation to end (or its instance to say it has).
STOP_WAIT_S = 5.0
# Streams a Stop ended, remembered (the most recent ones) so that a Stop repeated after the
# generation ended (its first answer lost with a Redis restart) still answers `stopped`.
STOPPED_REMEMBERED = 10_000


class Generation:
    """A reply being generated on this instance."""

    __slots__ = ("cut", "ended", "grace", "grace_s", "job", "readers", "task")

    def __init__(self, job: ChatJob, grace_s: float) -> None:
        self.job = job
        self.grace_s = grace_s
        self.ended = False  # its last event is out; only bookkeeping remains
        self.cut: str | None = None  # why it was cancelled, when it was
        self.readers = 0
        self.grace: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None


class Reader:
    """One reader of a stream: its meta, then its events in batches, from event 1.

    `opening()` looks ahead at how the reply opens, for surfaces that answer a failure before
    any output with an HTTP status; what it read is still delivered by the iteration.

    Once it has started reading, its hub learns that it has gone (`left`, once) when it is closed,
    as every surface's `frames()` does, or (once it has looked ahead) when it is collected
    unclosed. Iterated directly, it is the event log's own generator: no layer per batch.
    """

    def __init__(
        self,
        info: StreamInfo,
        batches: AsyncGenerator[Batch, None],
        left: Callable[[], Awaitable[None]],
    ) -> None:
        self.info = info
        self._batches = batches
        self._left: Callable[[], Awaitable[None]] | None = left
        self._started = False
        self._ahead: list[Batch] = []
        self._next: asyncio.Future[Batch] | None = None

    @property
    def meta(self) -> StreamMeta:
        return self.info.meta

    def __aiter__(self) -> AsyncIterator[Batch]:
        self._started = True
        if not self._ahead and self._next is None:
            return self._batches  # nothing read ahead: no layer of its own per batch
        return self._replay()

    async def _replay(self) -> AsyncIterator[Batch]:
        while self._ahead:
            yield self._ahead.pop(0)
        if self._next is not None:
            pending, self._next = self._next, None
            try:
                yield await pending
            except StopAsyncIteration:
                return
        async for batch in self._batches:
            yield batch

    async def opening(self, wait_s: float) -> ChatRelayError | None:
        """The error the reply failed with before any output, if it did; None once it has
        output, or when it has given no sign within `wait_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        if not self._started:
            # Read ahead in a task: if this reader is then dropped unclosed, the layer's
            # finalizer still tells the hub.
            self._started = True
            self._batches = self._guarded(self._batches)
        while True:
            if self._next is None:
                self._next = asyncio.ensure_future(anext(self._batches))
            done, _ = await asyncio.wait({self._next}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                return None
            pending, self._next = self._next, None
            try:
                batch = pending.result()
            except StopAsyncIteration:
                return None
            self._ahead.append(batch)
            for event in batch[1]:
                if type(event) is Answering:
                    continue
                if type(event) is End:
                    return event.error
                if type(event) is Cut and event.reason == "server_restarting":
                    return ServerRestarting()
                return None

    async def _guarded(self, batches: AsyncGenerator[Batch, None]) -> AsyncGenerator[Batch, None]:
        try:
            async with aclosing(batches):
                async for batch in batches:
                    yield batch
        finally:
            await self._gone()

    async def _gone(self) -> None:
        left, self._left = self._left, None
        if left is not None:
            await left()

    async def aclose(self) -> None:
        if self._next is not None:
            self._next.cancel()
        try:
            await self._batches.aclose()
        finally:
            if self._started:  # (a reader that never read was never counted as gone)
                await self._gone()


class StreamHub:
    """Runs this instance's generations and serves readers of any stream."""

    def __init__(
        self, events: EventLog, *, grace_s: float, instance: str, stop_wait_s: float = STOP_WAIT_S
    ) -> None:
        self.events = events
        self.instance = instance
        self._grace_s = grace_s
        self.stop_wait_s = stop_wait_s
        self._running: dict[str, Generation] = {}
        self._stopped: dict[str, None] = {}  # ended by a Stop, oldest first
        self.draining = False

    async def start(self) -> None:
        await self.events.start(self._on_control)

    async def close(self) -> None:
        await self.events.close()

    @property
    def running(self) -> int:
        return len(self._running)

    # -- generations -------------------------------------------------------------------------
    async def open(
        self, job: ChatJob, owner: str, meta: StreamMeta, grace_s: float | None = None
    ) -> Reader:
        """Start generating `job`; return its first reader (already counted). `grace_s`: how
        long it runs on without readers (at most the server's resume grace)."""
        if self.draining:
            raise ServerRestarting()
        await self.events.create(meta, owner)
        grace = self._grace_s if grace_s is None else max(0.0, min(grace_s, self._grace_s))
        generation = Generation(job, grace)
        generation.readers = 1  # the POST's own response, before it starts reading
        self._running[job.stream_id] = generation
        generation.task = asyncio.get_running_loop().create_task(
            self._generate(generation), name=f"generation-{job.stream_id}"
        )
        info = StreamInfo(meta, owner, self.instance, finished=False)
        return self._reader(info, generation)

    async def _generate(self, generation: Generation) -> None:
        stream_id = generation.job.stream_id
        seq = 0
        try:
            try:
                events = generation.job.events(lambda: generation.cut)
                async with aclosing(events) as replies:
                    async for event in replies:
                        seq += 1
                        if type(event) is End:
                            generation.ended = True
                        await self.events.append(stream_id, seq, event)
            except asyncio.CancelledError:
                # Stopped, abandoned by its readers, or the server is going away: the readers
                # (and later resumes) learn which from the last event.
                await self.events.append(
                    stream_id, seq + 1, Cut(generation.cut or "server_restarting")
                )
        except Exception:
            log.exception("generation %s failed", stream_id)
        finally:
            self._running.pop(stream_id, None)
            if generation.cut == "stopped" and not generation.ended:
                self._stopped[stream_id] = None
                if len(self._stopped) > STOPPED_REMEMBERED:
                    del self._stopped[next(iter(self._stopped))]
            if generation.grace is not None:
                generation.grace.cancel()
            try:
                await self.events.finish(stream_id)
            except Exception:
                log.exception("could not finish the log of stream %s", stream_id)

    def _cancel(self, generation: Generation, reason: str) -> None:
        task = generation.task
        if generation.ended:
            return  # the reply is complete; cancelling now would only lose its bookkeeping
        if task is not None and not task.done() and generation.cut is None:
            generation.cut = reason
            task.cancel()

    # -- readers -----------------------------------------------------------------------------
    async def follow(self, stream_id: str, owner: str | None) -> Reader:
        """A reader of an existing stream, from its first event (404 if unknown or not
        `owner`'s; `owner=None` is an admin, who may read every stream). Its surface skips
        what the client already has."""
        info = await self.events.info(stream_id)
        if info is None or (owner is not None and info.owner != owner):
            raise NotFound(f"Stream {stream_id!r} not found (unknown, or expired)")
        generation = self._running.get(stream_id)
        if generation is not None:
            generation.readers += 1
            if generation.grace is not None:
                generation.grace.cancel()
                generation.grace = None
        else:
            await self.events.attach(stream_id)
        return self._reader(info, generation)

    def _reader(self, info: StreamInfo, generation: Generation | None) -> Reader:
        """A reader of the log from its first event. It reads the log's own generator (no
        layer of the hub's per batch, on the path of every delta) and tells the hub when it
        has gone (`_left`)."""
        stream_id = info.stream_id
        return Reader(
            info,
            self.events.read(stream_id, 0),
            functools.partial(self._left, stream_id, generation),
        )

    async def _left(self, stream_id: str, generation: Generation | None) -> None:
        """A reader has gone: the last one of a running generation arms its grace."""
        if generation is not None:
            generation.readers -= 1
            if generation.readers == 0:
                self._arm_grace(generation)
        else:
            await self.events.detach(stream_id)

    def _arm_grace(self, generation: Generation) -> None:
        if generation.task is None or generation.task.done():
            return
        if generation.grace_s <= 0:
            self._cancel(generation, "disconnected")
            return
        if generation.grace is None:
            loop = asyncio.get_running_loop()
            generation.grace = loop.call_later(
                generation.grace_s, lambda: loop.create_task(self._grace_expired(generation))
            )

    async def _grace_expired(self, generation: Generation) -> None:
        generation.grace = None
        if generation.readers > 0:
            return
        if await self.events.remote_readers(generation.job.stream_id) > 0:
            return  # someone follows it from another instance
        log.info(
            "stream %s has had no reader for %g s: cancelling",
            generation.job.stream_id,
            generation.grace_s,
        )
        self._cancel(generation, "disconnected")

    # -- stop --------------------------------------------------------------------------------
    async def stop(self, stream_id: str, owner: str | None) -> str:
        """Stop a stream wherever it runs; 'stopped', or 'finished' if it had already ended.

        Raises StopUnconfirmed when the generation did not end within `stop_wait_s` (here), or
        its instance did not say it had (elsewhere: it may be cut off from Redis)."""
        info = await self.events.info(stream_id)
        if info is None or (owner is not None and info.owner != owner):
            raise NotFound(f"Stream {stream_id!r} not found (unknown, or expired)")
        if info.finished:
            return "finished"
        generation = self._running.get(stream_id)
        if generation is not None:
            answer = await self._stop_here(generation)
        elif info.instance == self.instance:
            answer = self._ended_answer(stream_id)  # ours, no longer running: its log closes
        else:
            answer = await self.events.request_stop(info, self.stop_wait_s)
        if answer is None:
            raise StopUnconfirmed(stream_id, self.stop_wait_s)
        return answer

    async def _stop_here(self, generation: Generation) -> str | None:
        """Cancel a generation of this instance and wait for it to end: `stopped`, `finished`
        if it had ended (or was ending for another reason), None if it is still running."""
        if generation.ended:
            return "finished"
        self._cancel(generation, "stopped")
        task = generation.task
        if task is not None:
            await asyncio.wait({task}, timeout=self.stop_wait_s)
            if not task.done():
                return None
        return "stopped" if generation.cut == "stopped" and not generation.ended else "finished"

    def _ended_answer(self, stream_id: str) -> str:
        """A Stop's answer for a stream of this instance that no longer runs: `stopped` if a
        Stop ended it (this one, sent again, or one just before), else `finished`."""
        return "stopped" if stream_id in self._stopped else "finished"

    async def _on_control(self, kind: str, stream_id: str) -> str | None:
        """A message from another instance about one of this instance's streams, and the
        answer to send back (a Stop's outcome)."""
        generation = self._running.get(stream_id)
        if kind == "stop":
            if generation is None:
                return self._ended_answer(stream_id)
            return await self._stop_here(generation)
        if kind == "readers" and generation is not None and generation.readers == 0:
            self._arm_grace(generation)
        return None

    # -- shutdown ----------------------------------------------------------------------------
    async def drain(self, grace_s: float) -> None:
        """Refuse new streams, let running ones finish for `grace_s`, then end the rest."""
        self.draining = True
        tasks = {g.task for g in self._running.values() if g.task is not None}
        if tasks:
            log.info("waiting up to %g s for %d streams to finish", grace_s, len(tasks))
            await asyncio.wait(tasks, timeout=grace_s)
        for generation in list(self._running.values()):
            self._cancel(generation, "server_restarting")
        tasks = {g.task for g in self._running.values() if g.task is not None}
        if tasks:
            await asyncio.wait(tasks, timeout=5)
