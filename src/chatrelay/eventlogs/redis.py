"""The Redis event log: several instances behind one load balancer act as one service.

Keys (all under the configured prefix):

    {p}:s:{id}           hash: meta, owner, instance, finished  (expires with the stream)
    {p}:s:{id}:log       Redis Stream of events (codec.py); entry id `0-<seq>`, so a resume
                         after event N is one XREAD from `0-N`
    {p}:s:{id}:readers   readers following the stream from other instances
    {p}:s:{id}:stopped   the generating instance's answer to a Stop (`stopped`, `finished`)
    {p}:i:{instance}     the instance's lease, renewed every second: gone = instance lost
    {p}:c:{instance}     pub/sub channel: `stop <id>`, `readers <id>` for the owning instance
    {p}:idem:{owner}:{key}   idempotency key -> stream id

Events are appended to an in-memory mirror first, so readers on the generating instance (the
POST's own response, and most resumes) never wait on Redis; one copying task per instance
copies the mirror to Redis, every stream that has new events in one round trip. A copy is a
script that writes only the events that follow what the Redis Stream holds, and says when it
holds fewer than expected (Redis restarted without its data): the copier then sends them again
from the mirror. So the Redis Stream never has a gap, and events that could not be copied
during an outage are copied once Redis is back.

Every background loop (the copier, the lease, the control channel, remote readers) survives
Redis going away: it retries with capped backoff, and the instance logs one warning when Redis
goes away and one line when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..errors import StorageUnavailable
from ..events import TERMINAL, Cut, StreamEvent, StreamMeta
from ..outages import storage_outage
from . import Batch, StreamInfo
from .codec import dump, dump_meta, load, load_meta
from .memory import MemoryEventLog

log = logging.getLogger("chatrelay.eventlogs.redis")

LEASE_MS = 3000
RENEW_S = 1.0
# A running stream's keys outlive any reply; finished ones expire after the configured TTL.
RUNNING_TTL_S = 6 * 3600
READ_BLOCK_MS = 1000
# Retries after a failed Redis call: 50 ms, doubling, at most 1 s apart (on top of the
# client's own reconnection attempts).
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
# One copying round trip: at most this many streams, and events per stream.
COPY_STREAMS = 256
COPY_EVENTS = 512
# A remote reader that finds the stream's keys gone from Redis (it restarted without its
# data) waits this long for the generating instance to write them again.
RESTORE_WAIT_S = 2 * LEASE_MS / 1000
# A Stop is published again this often until the generating instance answers.
STOP_REPUBLISH_S = 0.5
STOP_POLL_S = 0.05
# How long a clean shutdown waits for the copier to write the events it still holds.
CLOSE_FLUSH_S = 2.0
# A stream this instance cannot find in a Redis that may just have lost its data (restarted
# less than RECENT_LOSS_S ago, or this instance's own outage ended that recently) is looked for
# again for up to LOOKUP_WAIT_S (its generating instance writes it again from memory) before
# the answer is 404; still within that window, it is 503 storage_unavailable (Retry-After 1 s).
RECENT_LOSS_S = 5.0
LOOKUP_WAIT_S = 2.0
LOOKUP_POLL_S = 0.05
LOOKUP_RETRY_AFTER_S = 1
# How long the generating instance tries to write its answer to a Stop.
ANSWER_WRITE_S = 5.0
# Failures this soon after Redis came back are the end of the same outage: each connection
# the pool still held to the old server fails once (the client does not retry them).
OUTAGE_SETTLE_S = 2.0

# KEYS: meta, log, readers, lease  (an entry whose tag is in codec.TERMINAL_TAGS ends a log)
# ARGV: owner, instance, first seq, final ("1": these events end the stream), running TTL,
#       finished TTL, lease ms, meta, events first, first + 1, ...
# Returns the seq of the last event the log holds, which is below `first - 1` when Redis lost
# events (send again from there), or -1 when someone else ended the log (a reader that found
# this instance's lease gone wrote `instance_lost`): nothing more to copy.
COPY_SCRIPT = """
local meta, stream = KEYS[1], KEYS[2]
if redis.call('EXISTS', meta) == 0 then
  redis.call('HSET', meta, 'owner', ARGV[1], 'instance', ARGV[2], 'finished', '0', 'meta', ARGV[8])
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[7])
end
local top, ended = 0, false
local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
if last then
  top = tonumber(string.match(last[1], '%d+$'))
  ended = string.find('ec', string.sub(last[2][2], 1, 1), 1, true) ~= nil
end
local first = tonumber(ARGV[3])
if top < first - 1 then return top end
local count = #ARGV - 8
if first + count - 1 > top then
  if ended then return -1 end
  for i = top - first + 2, count do
    redis.call('XADD', stream, '0-' .. (first + i - 1), 'f', ARGV[8 + i])
  end
  top = first + count - 1
end
local ttl = ARGV[5]
if ARGV[4] == '1' then
  redis.call('HSET', meta, 'finished', '1')
  ttl = ARGV[6]
  redis.call('EXPIRE', KEYS[3], ttl)
end
redis.call('EXPIRE', meta, ttl)
redis.call('EXPIRE', stream, ttl)
return top
"""
COPY_SHA = hashlib.sha1(COPY_SCRIPT.encode()).hexdigest()

# How long starting waits for Redis before it goes on without it (its loops then reconnect).
START_TIMEOUT_S = 2.0

# What a failed Redis call raises: the client's errors, and the socket's own.
FAILURES = (RedisError, OSError)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _backoff(failures: int) -> float:
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures, 16)))


class _Outage:
    """Whether this instance reaches Redis, as its loops last saw it; each change logged once.

    Many loops notice an outage (the copier, the lease, the control channel, every remote
    reader), each many times: one warning when Redis goes away, one line when it is back.
    A failed call that began before Redis was seen back, or just after, belongs to the outage
    already over.
    """

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.down_since: float | None = None
        self.up_since = -math.inf

    def failed(self, started: float, what: str, exc: BaseException) -> None:
        if self.down_since is not None or started < self.up_since + OUTAGE_SETTLE_S:
            return
        self.down_since = time.monotonic()
        log.warning(
            "Redis is unreachable (%s: %s, %s): streams go on from memory; their events are"
            " copied to Redis once it is back",
            type(exc).__name__,
            exc,
            what,
            extra={"instance": self.instance},
        )

    def ok(self) -> None:
        if self.down_since is None:
            return
        now = time.monotonic()
        log.info(
            "Redis is reachable again after %.1f s; copying the events it missed",
            now - self.down_since,
            extra={"instance": self.instance},
        )
        self.down_since = None
        self.up_since = now


class RedisEventLog:
    """Event logs in Redis, shared by every instance that uses the same Redis and prefix."""

    def __init__(self, redis: Redis, *, instance: str, prefix: str, ttl_s: float) -> None:
        self.instance = instance
        self._redis = redis
        self._prefix = prefix
        self._ttl = max(1, int(ttl_s))
        self._local = MemoryEventLog(instance, ttl_s)
        # Per local stream not yet wholly in Redis: how many of its events Redis holds.
        self._copied: dict[str, int] = {}
        # Streams with something to copy, in order (a dict as an ordered set).
        self._dirty: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set by the copier when nothing is left to copy
        self._outage = _Outage(instance)
        self._stopping: set[str] = set()  # streams whose Stop is being answered
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()

    # -- keys --------------------------------------------------------------------------------
    def _meta(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}"

    def _log(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}:log"

    def _readers(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}:readers"

    def _stopped(self, stream_id: str) -> str:
        return f"{self._prefix}:s:{stream_id}:stopped"

    def _lease(self, instance: str) -> str:
        return f"{self._prefix}:i:{instance}"

    def _channel(self, instance: str) -> str:
        return f"{self._prefix}:c:{instance}"

    # -- writing -----------------------------------------------------------------------------
    async def create(self, meta: StreamMeta, owner: str) -> None:
        stream_id = meta.stream_id
        key = self._meta(stream_id)
        fields = {
            "owner": owner,
            "instance": self.instance,
            "finished": "0",
            "meta": dump_meta(meta),
        }
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(key, RUNNING_TTL_S)
                await pipe.execute()
        except FAILURES as exc:
            # A ChatRelayError, so the route ends the turn it began (unlocks the conversation).
            if (outage := storage_outage(exc)) is None:
                raise
            raise outage from exc
        await self._local.create(meta, owner)
        self._copied[stream_id] = 0

    async def append(self, stream_id: str, seq: int, event: StreamEvent) -> None:
        await self._local.append(stream_id, seq, event)
        self._dirty[stream_id] = None
        self._wake.set()

    async def finish(self, stream_id: str) -> None:
        """Readers here are told at once; the copier marks the stream finished in Redis after
        its last events (whenever Redis can take them)."""
        await self._local.finish(stream_id)
        self._dirty[stream_id] = None
        self._wake.set()

    async def _copy(self) -> None:
        """Copy every local stream's new events to Redis, until the log is closed."""
        failures = 0
        while True:
            if not self._dirty:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.monotonic()
            try:
                refused = await self._copy_round()
            except FAILURES as exc:
                refused = exc
            if refused is None:
                failures = 0
                self._outage.ok()
                continue
            self._outage.failed(started, "copying events", refused)
            await asyncio.sleep(_backoff(failures))
            failures += 1

    async def _copy_round(self) -> Exception | None:
        """One round trip: the next events of up to COPY_STREAMS streams. Returns the error of
        a stream whose copy Redis refused (its events stay, for the next try)."""
        calls = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream_id in list(itertools.islice(self._dirty, COPY_STREAMS)):
                stream = self._local.stream(stream_id)
                if stream is None:  # expired here: nothing left to copy
                    self._dirty.pop(stream_id, None)
                    self._copied.pop(stream_id, None)
                    continue
                done = self._copied.setdefault(stream_id, len(stream.events))
                events = stream.slice(done, done + COPY_EVENTS)
                final = stream.finished and done + len(events) == len(stream.events)
                pipe.evalsha(
                    COPY_SHA,
                    4,
                    self._meta(stream_id),
                    self._log(stream_id),
                    self._readers(stream_id),
                    self._lease(self.instance),
                    stream.owner,
                    self.instance,
                    done + 1,
                    "1" if final else "0",
                    RUNNING_TTL_S,
                    self._ttl,
                    LEASE_MS,
                    dump_meta(stream.meta),
                    *[dump(event) for event in events],
                )
                calls.append((stream_id, stream, final))
            if not calls:
                return None
            results = await pipe.execute(raise_on_error=False)
        refused: Exception | None = None
        for (stream_id, stream, final), result in zip(calls, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted: the script comes next
                continue
            if isinstance(result, Exception):
                refused = result
                continue
            top = int(result)
            if top < 0:  # ended in Redis by a reader that thought us lost: copy no more
                self._dirty.pop(stream_id, None)
                self._copied.pop(stream_id, None)
                continue
            self._copied[stream_id] = top = min(top, len(stream.events))
            self._dirty.pop(stream_id, None)
            if top < len(stream.events) or final != stream.finished:
                self._dirty[stream_id] = None  # more to copy: after the others
            elif final:
                del self._copied[stream_id]  # wholly in Redis
        if any(isinstance(result, NoScriptError) for result in results):
            await self._redis.script_load(COPY_SCRIPT)
        return refused

    def _resync(self) -> None:
        """Check that Redis holds every stream of the mirror (after Redis may have lost data)."""
        streams = [(s, self._local.stream(s)) for s in self._local.stream_ids()]
        for stream_id, stream in sorted(
            streams, key=lambda item: bool(item[1] and item[1].finished)
        ):
            if stream is not None:
                self._copied.setdefault(stream_id, len(stream.events))
                self._dirty[stream_id] = None
        self._wake.set()

    # -- reading -----------------------------------------------------------------------------
    async def info(self, stream_id: str) -> StreamInfo | None:
        """A stream that is not in Redis right after Redis lost its data may be one whose
        generating instance has not written it again yet: looked for again for a moment, then
        StorageUnavailable while that cannot be told from an unknown stream."""
        found = await self._info_now(stream_id)
        if found is not None or not await self._may_have_lost_data():
            return found
        deadline = time.monotonic() + LOOKUP_WAIT_S
        while time.monotonic() < deadline:
            await asyncio.sleep(LOOKUP_POLL_S)
            found = await self._info_now(stream_id)
            if found is not None:
                return found
        if await self._may_have_lost_data():
            raise StorageUnavailable(
                f"Stream {stream_id!r} is not in Redis, which has just lost its data: if the"
                " stream is running, its server writes it again within moments; try again",
                retry_after_s=LOOKUP_RETRY_AFTER_S,
            )
        return None

    async def _may_have_lost_data(self) -> bool:
        """Whether Redis may have lost streams moments ago: this instance's outage is recent,
        Redis started moments ago, or this instance's own lease is gone."""
        outage = self._outage
        if outage.down_since is not None or time.monotonic() - outage.up_since < RECENT_LOSS_S:
            return True
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.info("server")
            pipe.exists(self._lease(self.instance))
            server, held = await pipe.execute()
        return float(server.get("uptime_in_seconds", math.inf)) < RECENT_LOSS_S or not held

    async def _info_now(self, stream_id: str) -> StreamInfo | None:
        local = await self._local.info(stream_id)
        if local is not None:
            return local
        meta = await self._redis.hgetall(self._meta(stream_id))
        if not meta:
            return None
        newest = await self._redis.xrevrange(self._log(stream_id), count=1) or []
        last = [entry_id for entry_id, _ in newest if entry_id]
        return StreamInfo(
            load_meta(meta[b"meta"]),
            _text(meta[b"owner"]),
            _text(meta[b"instance"]),
            meta.get(b"finished") == b"1",
            int(_text(last[0]).partition("-")[2]) if last else 0,  # entry ids are 0-<seq>
        )

    async def read(self, stream_id: str, after: int) -> AsyncGenerator[Batch, None]:
        if self._local.has(stream_id):
            async with contextlib.aclosing(self._local.read(stream_id, after)) as batches:
                async for batch in batches:
                    yield batch
            return
        async with contextlib.aclosing(self._read_remote(stream_id, after)) as batches:
            async for batch in batches:
                yield batch

    async def _read_remote(self, stream_id: str, after: int) -> AsyncGenerator[Batch, None]:
        """Follow a stream generated elsewhere, from its Redis Stream.

        Redis going away is waited out (the client sees heartbeats meanwhile). Events missing
        from the log (a gap in the ids, or a finished log without its last event) are never
        skipped: the reader ends with `Cut("stream_incomplete")` instead.
        """
        key = self._log(stream_id)
        last = after
        instance: str | None = None  # the generating instance, once seen
        failures = 0
        recovered_at: float | None = None  # when this reader last got Redis back
        keys_gone_at: float | None = None  # when the stream's keys were found gone
        finished_seen = False
        while True:
            started = time.monotonic()
            try:
                reply: Any = await self._redis.xread(
                    {key: f"0-{last}"}, count=512, block=READ_BLOCK_MS
                )
                meta = {} if reply else await self._redis.hgetall(self._meta(stream_id))
                if meta:
                    instance = _text(meta[b"instance"])
                alive = True
                if not reply and meta and meta.get(b"finished") != b"1":
                    alive = bool(await self._redis.exists(self._lease(instance or "")))
            except FAILURES as exc:
                self._outage.failed(started, "reading a stream of another instance", exc)
                await asyncio.sleep(_backoff(failures))
                failures += 1
                continue
            if failures:
                failures = 0
                recovered_at = time.monotonic()
            self._outage.ok()
            if reply:
                keys_gone_at = None
                finished_seen = False
                first = last + 1
                events: list[StreamEvent] = []
                for entry_id, fields in reply[0][1]:
                    seq = int(entry_id.split(b"-")[1])
                    if seq != last + 1:
                        if events:
                            yield first, events
                        yield self._incomplete(stream_id, last, f"events {last + 1}-{seq - 1}")
                        return
                    events.append(load(fields[b"f"]))
                    last = seq
                yield first, events
                if isinstance(events[-1], TERMINAL):
                    return
                continue
            now = time.monotonic()
            if not meta:
                # Expired, or Redis restarted without its data: the generating instance writes
                # the stream again from its memory. Wait for it, for a while.
                if keys_gone_at is None:
                    keys_gone_at = now
                elif now - keys_gone_at >= RESTORE_WAIT_S:
                    yield self._incomplete(stream_id, last, "the stream's keys")
                    return
                continue
            keys_gone_at = None
            if meta.get(b"finished") == b"1":
                if finished_seen:  # finished, and still no more events: they are lost
                    yield self._incomplete(stream_id, last, f"the events after {last}")
                    return
                finished_seen = True
                continue  # one more read collects the last events
            if not alive:
                if recovered_at is not None and now - recovered_at < LEASE_MS / 1000:
                    continue  # Redis was away: give the instance time to renew its lease
                # The generating instance died: tell the readers instead of hanging them.
                lost = Cut("instance_lost")
                await self._record_loss(stream_id, last + 1, lost)
                yield last + 1, [lost]
                return

    def _incomplete(self, stream_id: str, last: int, missing: str) -> Batch:
        log.warning(
            "stream %s: %s missing from Redis; ending a reader with stream_incomplete",
            stream_id,
            missing,
            extra={"instance": self.instance},
        )
        return last + 1, [Cut("stream_incomplete")]

    async def _record_loss(self, stream_id: str, seq: int, lost: Cut) -> None:
        """Write the instance_lost end once, so later resumes see it too."""
        key = self._log(stream_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xadd(key, {"f": dump(lost)}, id=f"0-{seq}")
                pipe.hset(self._meta(stream_id), "finished", "1")
                pipe.expire(self._meta(stream_id), self._ttl)
                pipe.expire(key, self._ttl)
                await pipe.execute()
        except ResponseError:
            pass  # another reader recorded it first
        except FAILURES as exc:
            self._outage.failed(time.monotonic(), "recording a lost instance", exc)

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
        started = time.monotonic()
        try:
            left = await self._redis.decr(self._readers(stream_id))
            if left <= 0:
                info = await self._info_now(stream_id)
                if info is not None and not info.finished:
                    await self._redis.publish(self._channel(info.instance), f"readers {stream_id}")
        except FAILURES as exc:
            # The generating instance then counts one reader too many: it runs the reply to
            # its end rather than cancelling it after the grace.
            self._outage.failed(started, "counting the readers of a stream", exc)

    async def remote_readers(self, stream_id: str) -> int:
        started = time.monotonic()
        try:
            value = await self._redis.get(self._readers(stream_id))
        except FAILURES as exc:
            # Unknown: assume someone follows it, rather than cancel a reply that has readers.
            self._outage.failed(started, "counting the readers of a stream", exc)
            return 1
        return max(0, int(value)) if value else 0

    async def request_stop(self, info: StreamInfo, wait_s: float) -> str | None:
        """Publish the Stop to the generating instance (again every STOP_REPUBLISH_S, since a
        message published while it reconnects is lost) until it answers."""
        channel, message = self._channel(info.instance), f"stop {info.stream_id}"
        loop = asyncio.get_running_loop()
        published_at: float | None = None
        try:
            async with asyncio.timeout(wait_s):
                while True:
                    now = loop.time()
                    with contextlib.suppress(*FAILURES):  # Redis away: try until the deadline
                        if published_at is None or now - published_at >= STOP_REPUBLISH_S:
                            published_at = now
                            await self._redis.publish(channel, message)
                        async with self._redis.pipeline(transaction=False) as pipe:
                            pipe.get(self._stopped(info.stream_id))
                            pipe.hget(self._meta(info.stream_id), "finished")
                            answer, finished = await pipe.execute()
                        if answer:
                            return _text(answer)
                        if finished == b"1":
                            # Ended, and no answer (yet). Ended other than by a Stop: it had
                            # ended on its own. Stopped: by this Stop, or one just before; only
                            # the generating instance can tell (it answers the Stop published
                            # again, even if its first answer was lost): until the deadline.
                            reason = await self._end_reason(info.stream_id)
                            if reason is not None and reason != "stopped":
                                return "finished"
                    await asyncio.sleep(STOP_POLL_S)
        except TimeoutError:
            return None

    async def _end_reason(self, stream_id: str) -> str | None:
        """How a finished log ended: a Cut's reason, or `completed` (None if not found)."""
        entries: Any = await self._redis.xrevrange(self._log(stream_id), count=1)
        for _, fields in entries or []:
            last = load(fields[b"f"])
            if isinstance(last, Cut):
                return last.reason
            if isinstance(last, TERMINAL):
                return "completed"
        return None

    async def start(self, on_control: Callable[[str, str], Awaitable[str | None]]) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._redis.set(self._lease(self.instance), b"1", px=LEASE_MS)
        except FAILURES as exc:  # (TimeoutError is an OSError)
            # Started before Redis: serve anyway (what needs Redis answers 503 meanwhile);
            # the loops below write the lease and subscribe as soon as Redis answers.
            self._outage.failed(started, "at startup", exc)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._renew_lease(), name="chatrelay-lease"),
            loop.create_task(self._listen(on_control), name="chatrelay-control"),
            loop.create_task(self._copy(), name="chatrelay-copy"),
        ]

    async def _renew_lease(self) -> None:
        lease = self._lease(self.instance)
        failures = 0
        while True:
            await asyncio.sleep(RENEW_S if not failures else min(RENEW_S, _backoff(failures)))
            started = time.monotonic()
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.exists(lease)
                    pipe.set(lease, b"1", px=LEASE_MS)
                    held, _ = await pipe.execute()
            except FAILURES as exc:
                self._outage.failed(started, "renewing this instance's lease", exc)
                failures += 1
                continue
            failures = 0
            self._outage.ok()
            if not held:
                # It expired (Redis was out of reach for longer than its TTL) or Redis lost
                # its data (restarted without persistence): check Redis holds our streams.
                self._resync()

    async def _listen(self, on_control: Callable[[str, str], Awaitable[str | None]]) -> None:
        """The control channel, subscribed again whenever the connection to Redis is lost."""
        channel = self._channel(self.instance)
        failures = 0
        while True:
            pubsub: Any = self._redis.pubsub(ignore_subscribe_messages=True)
            started = time.monotonic()
            try:
                # (Not proof that Redis is back: a dead pooled connection may take it.)
                await pubsub.subscribe(channel)
                failures = 0
                while True:
                    started = time.monotonic()
                    message = await pubsub.get_message(timeout=READ_BLOCK_MS / 1000)
                    if message is not None:
                        await self._control(message["data"], on_control)
            except FAILURES as exc:
                self._outage.failed(started, "listening for Stop messages", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(_backoff(failures))
            failures += 1

    async def _control(
        self, data: bytes, on_control: Callable[[str, str], Awaitable[str | None]]
    ) -> None:
        kind, _, stream_id = _text(data).partition(" ")
        if kind != "stop":
            try:
                await on_control(kind, stream_id)
            except Exception:
                log.exception("control message %r failed", data)
            return
        # A Stop is answered once the generation has ended: in a task of its own, so the
        # channel goes on meanwhile; the stopper's repeated messages are not handled twice.
        if stream_id not in self._stopping:
            self._stopping.add(stream_id)
            task = asyncio.get_running_loop().create_task(self._answer_stop(stream_id, on_control))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _answer_stop(
        self, stream_id: str, on_control: Callable[[str, str], Awaitable[str | None]]
    ) -> None:
        try:
            answer = await on_control("stop", stream_id)
            if answer is not None:
                await self._write_answer(stream_id, answer)
        except Exception:
            log.exception("stopping stream %s failed", stream_id)
        finally:
            self._stopping.discard(stream_id)

    async def _write_answer(self, stream_id: str, answer: str) -> None:
        """Write a Stop's answer, trying again for a while: right after Redis came back, a
        connection the pool still held to the old server fails once (and a lost answer would
        leave the stopper unable to tell `stopped` from `finished`)."""
        deadline = time.monotonic() + ANSWER_WRITE_S
        failures = 0
        while True:
            started = time.monotonic()
            try:
                # The first answer stands: a later one is about the same stop.
                await self._redis.set(self._stopped(stream_id), answer, nx=True, ex=self._ttl)
                return
            except FAILURES as exc:
                self._outage.failed(started, "answering a Stop", exc)
                if time.monotonic() >= deadline:
                    return
            await asyncio.sleep(_backoff(failures))
            failures += 1

    async def close(self) -> None:
        # A clean shutdown first lets the copier write what it still holds.
        if self._tasks and self._outage.down_since is None and self._dirty:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_FLUSH_S):
                    await self._idle.wait()
        tasks = [*self._tasks, *self._handlers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(*FAILURES):
            await self._redis.delete(self._lease(self.instance))
        await self._local.close()
