"""The Redis event log: several instances behind one load balancer act as one service.

Keys (all under the configured prefix):

    {p}:s:{id}           hash: owner, instance, finished  (expires with the stream)
    {p}:s:{id}:log       Redis Stream of frames; entry id `0-<seq>`, so a resume after frame N
                         is one XREAD from `0-N`
    {p}:s:{id}:readers   readers following the stream from other instances
    {p}:i:{instance}     the instance's lease, renewed every second: gone = instance lost
    {p}:c:{instance}     pub/sub channel: `stop <id>`, `readers <id>` for the owning instance
    {p}:idem:{owner}:{key}   idempotency key -> stream id

Frames are appended to an in-memory mirror first, so readers on the generating instance (the
POST's own response, and most resumes) never wait on Redis; the mirror is copied to Redis by
one flushing task per stream, many frames per round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..sse import DONE_SUFFIX, cancelled_frames
from . import StreamInfo
from .memory import MemoryEventLog

log = logging.getLogger("chatrelay.eventlogs.redis")

LEASE_MS = 3000
RENEW_S = 1.0
# A running stream's keys outlive any reply; finished ones expire after the configured TTL.
RUNNING_TTL_S = 6 * 3600
READ_BLOCK_MS = 1000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisEventLog:
    """Event logs in Redis, shared by every instance that uses the same Redis and prefix."""

    def __init__(self, redis: Redis, *, instance: str, prefix: str, ttl_s: float) -> None:
        self.instance = instance
        self._redis = redis
        self._prefix = prefix
        self._ttl = max(1, int(ttl_s))
        self._local = MemoryEventLog(instance, ttl_s)
        self._pending: dict[str, list[tuple[int, bytes]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- keys --------------------------------------------------------------------------------
    def _meta(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}"

    def _log(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}:log"

    def _readers(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}:readers"

    def _lease(self, instance: str) -> str:
        return f"{self._prefix}:i:{instance}"

    def _channel(self, instance: str) -> str:
        return f"{self._prefix}:c:{instance}"

    # -- writing -----------------------------------------------------------------------------
    async def create(self, stream_id: str, owner: str) -> None:
        await self._local.create(stream_id, owner)
        meta = self._meta(stream_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"owner": owner, "instance": self.instance, "finished": "0"})
            pipe.expire(meta, RUNNING_TTL_S)
            await pipe.execute()

    async def append(self, stream_id: str, seq: int, frame: bytes) -> None:
        await self._local.append(stream_id, seq, frame)
        self._pending.setdefault(stream_id, []).append((seq, frame))
        if stream_id not in self._flushers:
            self._flushers[stream_id] = asyncio.get_running_loop().create_task(
                self._flush(stream_id)
            )

    async def _flush(self, stream_id: str) -> None:
        key = self._log(stream_id)
        try:
            while batch := self._pending.get(stream_id):
                self._pending[stream_id] = []
                async with self._redis.pipeline(transaction=False) as pipe:
                    for seq, frame in batch:
                        pipe.xadd(key, {"f": frame}, id=f"0-{seq}")
                    pipe.expire(key, RUNNING_TTL_S)
                    await pipe.execute()
        except RedisError:
            log.exception("could not copy stream %s to Redis", stream_id)
        finally:
            self._flushers.pop(stream_id, None)

    async def finish(self, stream_id: str) -> None:
        await self._local.finish(stream_id)
        while (flusher := self._flushers.get(stream_id)) is not None:
            await flusher
        self._pending.pop(stream_id, None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._meta(stream_id), "finished", "1")
            for key in (self._meta(stream_id), self._log(stream_id), self._readers(stream_id)):
                pipe.expire(key, self._ttl)
            await pipe.execute()

    # -- reading -----------------------------------------------------------------------------
    async def info(self, stream_id: str) -> StreamInfo | None:
        local = await self._local.info(stream_id)
        if local is not None:
            return local
        meta = await self._redis.hgetall(self._meta(stream_id))
        if not meta:
            return None
        return StreamInfo(
            stream_id,
            _text(meta[b"owner"]),
            _text(meta[b"instance"]),
            meta.get(b"finished") == b"1",
        )

    async def read(self, stream_id: str, after: int) -> AsyncGenerator[bytes, None]:
        if self._local.has(stream_id):
            async with contextlib.aclosing(self._local.read(stream_id, after)) as frames:
                async for chunk in frames:
                    yield chunk
            return
        async with contextlib.aclosing(self._read_remote(stream_id, after)) as frames:
            async for chunk in frames:
                yield chunk

    async def _read_remote(self, stream_id: str, after: int) -> AsyncGenerator[bytes, None]:
        key = self._log(stream_id)
        last = after
        while True:
            reply: Any = await self._redis.xread({key: f"0-{last}"}, count=512, block=READ_BLOCK_MS)
            if reply:
                entries = reply[0][1]
                frames = [fields[b"f"] for _, fields in entries]
                last = int(entries[-1][0].split(b"-")[1])
                yield b"".join(frames)
                if frames[-1].endswith(DONE_SUFFIX):
                    return
                continue
            meta = await self._redis.hgetall(self._meta(stream_id))
            if not meta:
                return  # expired while we waited
            if meta.get(b"finished") == b"1":
                continue  # one more read collects the last frames
            if not await self._redis.exists(self._lease(_text(meta[b"instance"]))):
                # The generating instance died: tell the readers instead of hanging them.
                frames = cancelled_frames("instance_lost", last + 1)
                await self._record_loss(stream_id, last + 1, frames)
                yield b"".join(frames)
                return

    async def _record_loss(self, stream_id: str, seq: int, frames: list[bytes]) -> None:
        """Write the instance_lost end once, so later resumes see it too."""
        key = self._log(stream_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for offset, frame in enumerate(frames):
                    pipe.xadd(key, {"f": frame}, id=f"0-{seq + offset}")
                pipe.hset(self._meta(stream_id), "finished", "1")
                pipe.expire(self._meta(stream_id), self._ttl)
                pipe.expire(key, self._ttl)
                await pipe.execute()
        except ResponseError:
            pass  # another reader recorded it first

    # -- idempotency -------------------------------------------------------------------------
    async def claim(self, owner: str, key: str, stream_id: str) -> str:
        name = f"{self._prefix}:idem:{owner}:{key}"
        if await self._redis.set(name, stream_id, nx=True, ex=self._ttl):
            return stream_id
        bound = await self._redis.get(name)
        return _text(bound) if bound else stream_id

    async def forget_claim(self, owner: str, key: str) -> None:
        await self._redis.delete(f"{self._prefix}:idem:{owner}:{key}")

    # -- readers and control -----------------------------------------------------------------
    async def attach(self, stream_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._readers(stream_id))
            pipe.expire(self._readers(stream_id), RUNNING_TTL_S)
            await pipe.execute()

    async def detach(self, stream_id: str) -> None:
        left = await self._redis.decr(self._readers(stream_id))
        if left <= 0:
            info = await self.info(stream_id)
            if info is not None and not info.finished:
                await self._redis.publish(self._channel(info.instance), f"readers {stream_id}")

    async def remote_readers(self, stream_id: str) -> int:
        value = await self._redis.get(self._readers(stream_id))
        return max(0, int(value)) if value else 0

    async def request_stop(self, info: StreamInfo) -> None:
        await self._redis.publish(self._channel(info.instance), f"stop {info.stream_id}")

    async def start(self, on_control: Callable[[str, str], Awaitable[None]]) -> None:
        await self._redis.set(self._lease(self.instance), b"1", px=LEASE_MS)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel(self.instance))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._renew_lease(), name="chatrelay-lease"),
            loop.create_task(self._listen(pubsub, on_control), name="chatrelay-control"),
        ]

    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                await self._redis.set(self._lease(self.instance), b"1", px=LEASE_MS)
            except RedisError:
                log.exception("could not renew this instance's lease")

    async def _listen(self, pubsub: Any, on_control: Callable[[str, str], Awaitable[None]]) -> None:
        try:
            async for message in pubsub.listen():
                kind, _, stream_id = message["data"].decode().partition(" ")
                try:
                    await on_control(kind, stream_id)
                except Exception:
                    log.exception("control message %r failed", message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError):
            await self._redis.delete(self._lease(self.instance))
        await self._local.close()
