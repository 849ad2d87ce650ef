"""Leases: whether the instance holding a conversation's lock still lives.

A conversation's lock carries the id of the instance that took it (`conversations.lock_owner`,
the random per-process id also sent as `X-Chatrelay-Instance`). When a request finds the
conversation locked, the store asks the lease of that instance; a lease that is gone means
nobody will ever end that turn, and the lock is taken over at once (`Store.begin_turn`).

- With Redis (`RedisLeases`) the lease is the instance's own Redis key, `{prefix}:i:{id}`
  (`eventlogs/redis.py`: renewed every second, 3 s TTL, deleted on a clean stop). Nothing more
  is written per instance. A lease found missing is looked for once more after a renewal
  interval (`CONFIRM_S`): a Redis restarted without its data has lost every lease until
  their instances renew them, and a live lock must not be taken then.
- Without Redis (`DatabaseLeases`) it is the instance's row in the `instances` table,
  renewed every `DB_RENEW_S` through the group commit (one small update), dead after
  `DB_LEASE_S` of silence, deleted on a clean stop.

An instance started while Redis is unreachable starts anyway: its lease is written, and its
previous life ended, as soon as Redis answers (the event log's lease loop, and a task here).

An instance started with a name (`CHATRELAY_INSTANCE_NAME`; `chatrelay serve` uses the host
name and port) also ends its previous life at start: the Redis lease, or the row, of the
instance that last ran under that name is deleted, so a crashed instance that is restarted
frees its conversations at once instead of after its lease runs out. Names must therefore be
unique among running instances.

A lease that cannot be checked (Redis or the database failing) counts as alive: a lock is
never taken from a live instance because of an outage; the request gets 409 as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("chatrelay.leases")

DB_RENEW_S = 2.0
DB_LEASE_S = 10.0
# How long a name remembers its last instance in Redis (renewed by each start).
NAME_TTL_S = 7 * 86_400
# A missing Redis lease is dead if it is still missing this much later (renewals: every 1 s).
CONFIRM_S = 1.2
# How long the mark of an instance replaced by a restart under its name is kept.
GONE_TTL_S = 3600
# At start, how long Redis may take to answer before the previous life is ended in the
# background instead (retried every RETRY_BASE_S, doubling up to RETRY_CAP_S).
START_TIMEOUT_S = 2.0
RETRY_BASE_S = 0.1
RETRY_CAP_S = 1.0


class RedisLeases:
    """The instances' Redis leases (kept by the Redis event log)."""

    def __init__(self, redis: Any, *, prefix: str, instance: str, name: str | None) -> None:
        self.instance = instance
        self._redis = redis
        self._prefix = prefix
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._previous: str | None = None  # the instance this one replaces under its name

    def _lease(self, instance: str) -> str:
        return f"{self._prefix}:i:{instance}"  # the key eventlogs/redis.py renews

    def _gone(self, instance: str) -> str:
        return f"{self._prefix}:gone:{instance}"

    async def start(self) -> None:
        """End the previous instance of this name; with Redis unreachable (this instance may
        start before it), in the background once Redis answers, so serving does not wait."""
        from redis.exceptions import RedisError

        if self._name is None:
            return
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._replace_previous()
        except (RedisError, OSError) as exc:  # (TimeoutError is an OSError)
            log.info(
                "the previous instance named %s is ended once Redis answers (%s now)",
                self._name,
                type(exc).__name__,
            )
            self._task = asyncio.get_running_loop().create_task(
                self._replace_later(), name="chatrelay-name-lease"
            )

    async def _replace_later(self) -> None:
        from redis.exceptions import RedisError

        delay = RETRY_BASE_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self._replace_previous()
                return
            except (RedisError, OSError):
                delay = min(RETRY_CAP_S, delay * 2)  # the event log reports the outage

    async def _replace_previous(self) -> None:
        assert self._name is not None
        if self._previous is None:
            key = f"{self._prefix}:n:{self._name}"
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.getset(key, self.instance)  # SET ... GET needs Redis 6.2; GETSET: all
                pipe.expire(key, NAME_TTL_S)
                previous, _ = await pipe.execute()
            if previous is None:
                return
            previous = previous.decode() if isinstance(previous, bytes) else str(previous)
            if previous == self.instance:
                return
            self._previous = previous  # (kept, should the next step fail and be tried again)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._gone(self._previous), b"1", ex=GONE_TTL_S)
            pipe.delete(self._lease(self._previous))
            await pipe.execute()
        log.info("instance %s replaces %s (named %s)", self.instance, self._previous, self._name)

    async def alive(self, instance: str) -> bool:
        from redis.exceptions import RedisError

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.exists(self._lease(instance))
                pipe.exists(self._gone(instance))
                leased, gone = await pipe.execute()
            if leased or gone:
                return bool(leased)  # a restart under its name ended it: no need to wait
            await asyncio.sleep(CONFIRM_S)
            return bool(await self._redis.exists(self._lease(instance)))
        except (RedisError, OSError) as exc:
            log.warning("could not check the lease of instance %s: %r", instance, exc)
            return True

    async def close(self) -> None:
        # The event log deletes the lease itself.
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class DatabaseLeases:
    """Leases as rows of the `instances` table, for instances without Redis."""

    def __init__(self, store: Store, *, instance: str, name: str | None) -> None:
        self.instance = instance
        self._store = store
        self._name = name
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._store.register_instance(self.instance, self._name)
        self._task = asyncio.get_running_loop().create_task(
            self._renew(), name="chatrelay-db-lease"
        )

    async def _renew(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(DB_RENEW_S)
            try:
                await self._store.renew_instance(self.instance, self._name)
            except Exception as exc:
                if not failing:  # once per outage, not every two seconds
                    log.warning("could not renew this instance's lease: %r", exc)
                failing = True
            else:
                if failing:
                    log.info("this instance's lease is renewed again")
                failing = False

    async def alive(self, instance: str) -> bool:
        try:
            return await self._store.instance_alive(instance, DB_LEASE_S)
        except Exception as exc:
            log.warning("could not check the lease of instance %s: %r", instance, exc)
            return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._store.forget_instance(self.instance)
        except Exception as exc:
            log.warning("could not delete this instance's lease: %r", exc)
