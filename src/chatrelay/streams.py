"""Generations decoupled from HTTP responses: resume, Stop, grace, idempotency, shutdown.

Each accepted `/ai/stream/chat` request becomes one *generation*: a task that runs the reply
and appends its SSE frames to the stream's event log. HTTP responses are *readers* of that log:
the POST's own response, and any `GET /ai/stream/{id}` resuming after a dropped connection,
on this instance or (with Redis) another one.

    POST ──> hub.open(job) ──> task: seed_frames(job) ──append──> event log
                  │                                                  │
                  └──> reader ──────────── read(after=N) ────────────┘ <── GET /ai/stream/{id}

- When the last reader of a running generation goes away, it runs on for the grace period,
  waiting for a resume; then it is cancelled (which closes the upstream request). A grace of 0
  cancels at once, as a plain relay would.
- Stop cancels the generation wherever it runs; its readers get an `end` frame with reason
  `stopped`, then `[DONE]`. It answers `stopped` only once the generation has ended (on
  another instance: once that instance says so), else `stop_unconfirmed` after `stop_wait_s`.
- On shutdown new streams are refused, running ones get `shutdown_grace_s` to finish, and the
  rest end with a `server_restarting` error frame.

A generation's *wire* says what its frames look like: the seed's SSE frames (`SEED`, for
`/ai/stream/chat`), or OpenAI's chunks (`openai_compat.ChunkStream`, for `/v1/chat/completions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Protocol

from .errors import NotFound, ServerRestarting, StopUnconfirmed, StreamEnded
from .eventlogs import EventLog
from .sse import DONE_SUFFIX, cancelled_frames, seed_frames

if TYPE_CHECKING:
    from .chat import ChatJob

log = logging.getLogger("chatrelay.streams")

# How long a Stop waits for the generation to end (or its instance to say it has).
STOP_WAIT_S = 5.0
# Streams a Stop ended, remembered (the most recent ones) so that a Stop repeated after the
# generation ended (its first answer lost with a Redis restart) still answers `stopped`.
STOPPED_REMEMBERED = 10_000


class Wire(Protocol):
    """The frames of one generation, and how they end when it is cut."""

    # Whether readers can resume it (its frames carry ids): if not, the last reader leaving
    # cancels it at once instead of after the resume grace.
    resumable: bool

    def frames(self, job: ChatJob) -> AsyncGenerator[bytes, None]:
        """The reply's frames; the last one ends with `data: [DONE]`."""
        ...

    def cancelled(self, reason: str, seq: int) -> list[bytes]:
        """The last frames (from `seq` on) of a generation cut for `reason`."""
        ...


class SeedWire:
    """The seed guide's SSE frames (`sse.py`)."""

    resumable = True

    def frames(self, job: ChatJob) -> AsyncGenerator[bytes, None]:
        return seed_frames(job)

    def cancelled(self, reason: str, seq: int) -> list[bytes]:
        return cancelled_frames(reason, seq)


SEED = SeedWire()


class Generation:
    """A reply being generated on this instance."""

    __slots__ = ("ended", "grace", "job", "readers", "task", "wire")

    def __init__(self, job: ChatJob, wire: Wire) -> None:
        self.job = job
        self.wire = wire
        self.ended = False  # its last frame ([DONE]) is out; only bookkeeping remains
        self.readers = 0
        self.grace: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None


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
        self, job: ChatJob, owner: str, wire: Wire = SEED
    ) -> AsyncGenerator[bytes, None]:
        """Start generating `job`; return the first reader (already counted)."""
        if self.draining:
            raise ServerRestarting()
        await self.events.create(job.stream_id, owner)
        generation = Generation(job, wire)
        generation.readers = 1  # the POST's own response, before it starts reading
        self._running[job.stream_id] = generation
        generation.task = asyncio.get_running_loop().create_task(
            self._generate(generation), name=f"generation-{job.stream_id}"
        )
        return self._read(job.stream_id, 0, generation)

    async def _generate(self, generation: Generation) -> None:
        stream_id = generation.job.stream_id
        seq = 0
        try:
            try:
                async with aclosing(generation.wire.frames(generation.job)) as frames:
                    async for frame in frames:
                        seq += 1
                        await self.events.append(stream_id, seq, frame)
                        if frame.endswith(DONE_SUFFIX):
                            generation.ended = True
            except asyncio.CancelledError:
                # Stopped, abandoned by its readers, or the server is going away: the job has
                # recorded why; the readers (and later resumes) get the matching end frames.
                reason = generation.job.cancel_reason or "server_restarting"
                for frame in generation.wire.cancelled(reason, seq + 1):
                    seq += 1
                    await self.events.append(stream_id, seq, frame)
        except Exception:
            log.exception("generation %s failed", stream_id)
        finally:
            self._running.pop(stream_id, None)
            if generation.job.cancel_reason == "stopped":
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
        if task is not None and not task.done() and generation.job.cancel_reason is None:
            generation.job.cancel_reason = reason
            task.cancel()

    # -- readers -----------------------------------------------------------------------------
    async def follow(
        self, stream_id: str, owner: str | None, after: int
    ) -> AsyncGenerator[bytes, None]:
        """A reader of an existing stream from frame `after` on (404 if unknown or not
        `owner`'s; `owner=None` is an admin, who may read every stream)."""
        info = await self.events.info(stream_id)
        if info is None or (owner is not None and info.owner != owner):
            raise NotFound(f"Stream {stream_id!r} not found (unknown, or expired)")
        if info.finished and after >= info.last_seq:
            # Every frame is out: an empty 200 with no end marker would read as a cut.
            raise StreamEnded(stream_id, after)
        generation = self._running.get(stream_id)
        if generation is not None:
            generation.readers += 1
            if generation.grace is not None:
                generation.grace.cancel()
                generation.grace = None
        else:
            await self.events.attach(stream_id)
        return self._read(stream_id, after, generation)

    async def _read(
        self, stream_id: str, after: int, generation: Generation | None
    ) -> AsyncGenerator[bytes, None]:
        try:
            async with aclosing(self.events.read(stream_id, after)) as frames:
                async for chunk in frames:
                    yield chunk
        finally:
            if generation is not None:
                generation.readers -= 1
                if generation.readers == 0:
                    self._arm_grace(generation)
            else:
                await self.events.detach(stream_id)

    def _arm_grace(self, generation: Generation) -> None:
        if generation.task is None or generation.task.done():
            return
        if self._grace_s <= 0 or not generation.wire.resumable:
            self._cancel(generation, "disconnected")
            return
        if generation.grace is None:
            loop = asyncio.get_running_loop()
            generation.grace = loop.call_later(
                self._grace_s, lambda: loop.create_task(self._grace_expired(generation))
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
            self._grace_s,
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
        return "stopped" if generation.job.cancel_reason == "stopped" else "finished"

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
