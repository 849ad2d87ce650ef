"""Spending limits per principal: requests per minute, concurrent streams, tokens per minute
and per day, US dollars per day and per month; counted in process memory, or in Redis so that
every instance shares them.

Tokens are *reserved* when a request is admitted (its estimated input plus `max_tokens`), so a
request that would go over the daily budget is refused before the upstream is called, and
*settled* when its reply ends, from the real usage (a reply that stops early gives the
unused reservation back). Money works the same way, counted in whole micro-dollars so the
same integer counters serve: the reservation is the request's worst case at its model's
price (prices.py), the settlement its real cost. Windows are fixed: the UTC minute, the UTC
day and the UTC calendar month.

Why not a rate-limit library: reservations that are later refunded, and concurrency that is
released when a stream ends, are counters that go down as well as up; the common libraries
only count hits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from .errors import BudgetExceeded, ConfigError, LimitExceeded, OverBudget, OverLimit
from .prices import MICRO

DAY_S = 86_400
MONTH_TTL_S = 32 * DAY_S
MONEY = frozenset({"daily_usd", "monthly_usd"})


def _month(clock: float) -> tuple[int, float]:
    """The UTC calendar month as a number (year * 12 + month), and the seconds to its end."""
    now = datetime.fromtimestamp(clock, UTC)
    following = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return now.year * 12 + now.month - 1, following.timestamp() - clock


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value != float("inf") else None


@dataclass(frozen=True, slots=True)
class Limits:
    """None means unlimited."""

    rpm: int | None = None
    concurrency: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None
    daily_usd: float | None = None  # US dollars per UTC day
    monthly_usd: float | None = None  # US dollars per UTC calendar month

    @classmethod
    def parse(cls, text: str, setting: str) -> Limits:
        """`rpm=60,concurrency=5,tpm=100000,daily_tokens=1000000,daily_usd=5,monthly_usd=50`
        (any subset); the budgets in dollars may have decimals."""
        values: dict[str, float] = {}
        names = {f.name for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, number = part.partition("=")
            name, number = name.strip(), number.strip()
            value = _number(number) if name in MONEY else int(number) if number.isdigit() else None
            if name not in names or value is None:
                raise ConfigError(
                    f"{setting}: {part!r} is not one of {', '.join(sorted(names))} = a number"
                )
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]

    def override(self, **values: float | None) -> Limits:
        """These limits, with the given ones replaced where they are set."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update({k: v for k, v in values.items() if v is not None})
        return Limits(**current)

    @property
    def counts_tokens(self) -> bool:
        return self.tpm is not None or self.daily_tokens is not None

    @property
    def counts_money(self) -> bool:
        return self.daily_usd is not None or self.monthly_usd is not None


class Counters(Protocol):
    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        """Add (or subtract) and return the new value; the key expires after `ttl_s`."""
        ...

    async def value(self, key: str) -> int: ...

    async def join(self, key: str, member: str, limit: int, stale_s: float) -> bool:
        """Add `member` to the set if it has fewer than `limit` members (stale ones dropped)."""
        ...

    async def leave(self, key: str, member: str) -> None: ...

    async def size(self, key: str, stale_s: float) -> int: ...


class MemoryCounters:
    """Counters for one instance."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, float]] = {}
        self._sets: dict[str, dict[str, float]] = {}

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        clock = time.time()
        value, expires = self._values.get(key, (0, clock + ttl_s))
        if expires <= clock:
            value, expires = 0, clock + ttl_s
        value += amount
        self._values[key] = (value, expires)
        if len(self._values) > 100_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > clock}
        return value

    async def value(self, key: str) -> int:
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > time.time() else 0

    async def join(self, key: str, member: str, limit: int, stale_s: float) -> bool:
        members = self._sets.setdefault(key, {})
        clock = time.time()
        for name in [m for m, since in members.items() if since < clock - stale_s]:
            del members[name]
        if len(members) >= limit:
            return False
        members[member] = clock
        return True

    async def leave(self, key: str, member: str) -> None:
        members = self._sets.get(key)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._sets[key]

    async def size(self, key: str, stale_s: float) -> int:
        clock = time.time()
        return sum(1 for since in self._sets.get(key, {}).values() if since >= clock - stale_s)


# A stream slot is `<instance>/<stream id>`: the slots of an instance whose lease is gone (it
# died mid-stream, so it will never leave them) are dropped when they would refuse someone.
# Leases are `<lease prefix><instance>` (eventlogs/redis.py); the prefix is empty without them.
_DROP_DEAD = """
local function drop_dead(key, leases)
  if leases == '' then return end
  for _, slot in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local slash = string.find(slot, '/', 1, true)
    if slash and redis.call('EXISTS', leases .. string.sub(slot, 1, slash - 1)) == 0 then
      redis.call('ZREM', key, slot)
    end
  end
end
"""
# KEYS: the slots; ARGV: stale before, limit, now, slot, ttl, lease prefix
_JOIN = (
    _DROP_DEAD
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= limit then drop_dead(KEYS[1], ARGV[6]) end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""
)
# KEYS: the slots; ARGV: stale before, lease prefix
_SIZE = (
    _DROP_DEAD
    + """
drop_dead(KEYS[1], ARGV[2])
return redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf')
"""
)


class RedisCounters:
    """Counters shared by every instance using the same Redis."""

    def __init__(self, redis: Any, *, instance: str = "", lease_prefix: str = "") -> None:
        """`instance` and `lease_prefix`: this instance's id and where the instances' Redis
        leases live (`{prefix}:i:`), so that a dead instance's stream slots are freed as soon
        as its lease is gone instead of after the stale time."""
        self._redis = redis
        self._join = redis.register_script(_JOIN)
        self._size = redis.register_script(_SIZE)
        self._slot_prefix = f"{instance}/" if instance and lease_prefix else ""
        self._leases = lease_prefix if instance else ""

    async def add(self, key: str, amount: int, ttl_s: int) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, ttl_s, nx=True)
            value, _ = await pipe.execute()
        return int(value)

    async def value(self, key: str) -> int:
        value = await self._redis.get(key)
        return int(value) if value else 0

    async def join(self, key: str, member: str, limit: int, stale_s: float) -> bool:
        clock = time.time()
        slot = self._slot_prefix + member
        joined = await self._join(
            keys=[key],
            args=[clock - stale_s, limit, clock, slot, int(stale_s) + 60, self._leases],
        )
        return bool(joined)

    async def leave(self, key: str, member: str) -> None:
        await self._redis.zrem(key, self._slot_prefix + member)

    async def size(self, key: str, stale_s: float) -> int:
        return int(await self._size(keys=[key], args=[time.time() - stale_s, self._leases]))


@dataclass(slots=True)
class Admission:
    """What one admitted request holds: its token and money reservations and its stream
    slot."""

    principal: str
    limits: Limits
    reserved: int
    minute: int
    day: int
    stream_id: str
    settled: bool = False
    reserved_micro_usd: int = 0
    month: int = 0


class Quotas:
    """Admits and settles requests against each principal's limits."""

    def __init__(self, counters: Counters, prefix: str, stream_stale_s: float) -> None:
        self._counters = counters
        self._prefix = prefix
        self._stale = stream_stale_s

    def _key(self, principal: str, what: str) -> str:
        return f"{self._prefix}:q:{principal}:{what}"

    async def admit(
        self,
        principal: str,
        limits: Limits,
        tokens: int,
        stream_id: str,
        micro_usd: int = 0,
    ) -> Admission:
        """Count the request, reserve its tokens, its worst-case cost (`micro_usd`) and a
        stream slot, or raise LimitExceeded (or OverLimit for a request that could never fit,
        however long it waited)."""
        for name, limit in (
            ("tokens_per_minute", limits.tpm),
            ("tokens_per_day", limits.daily_tokens),
        ):
            if limit is not None and tokens > limit:
                raise OverLimit(name, limit, tokens)
        for name, budget in (("daily_usd", limits.daily_usd), ("monthly_usd", limits.monthly_usd)):
            if budget is not None and micro_usd > round(budget * MICRO):
                raise OverBudget(name, budget, micro_usd / MICRO)
        clock = time.time()
        minute, day = int(clock // 60), int(clock // DAY_S)
        month, to_month = _month(clock)
        to_minute, to_day = 60 - clock % 60, DAY_S - clock % DAY_S
        add = self._counters.add
        rpm_key = self._key(principal, f"rpm:{minute}")
        if limits.rpm is not None and await add(rpm_key, 1, 120) > limits.rpm:
            raise LimitExceeded("requests_per_minute", limits.rpm, to_minute)
        undo: list[tuple[str, int]] = []
        try:
            if limits.tpm is not None:
                key = self._key(principal, f"tpm:{minute}")
                undo.append((key, -tokens))
                if await add(key, tokens, 120) > limits.tpm:
                    raise LimitExceeded("tokens_per_minute", limits.tpm, to_minute)
            if limits.daily_tokens is not None:
                key = self._key(principal, f"day:{day}")
                undo.append((key, -tokens))
                if await add(key, tokens, 2 * DAY_S) > limits.daily_tokens:
                    raise LimitExceeded("tokens_per_day", limits.daily_tokens, to_day)
            for name, budget, window, ttl, reset in (
                ("daily_usd", limits.daily_usd, f"usd_day:{day}", 2 * DAY_S, to_day),
                ("monthly_usd", limits.monthly_usd, f"usd_month:{month}", MONTH_TTL_S, to_month),
            ):
                if budget is None:
                    continue
                key = self._key(principal, window)
                undo.append((key, -micro_usd))
                spent = await add(key, micro_usd, ttl)
                if spent > round(budget * MICRO):
                    raise BudgetExceeded(name, budget, (spent - micro_usd) / MICRO, reset)
            if limits.concurrency is not None:
                joined = await self._counters.join(
                    self._key(principal, "streams"), stream_id, limits.concurrency, self._stale
                )
                if not joined:
                    raise LimitExceeded("concurrent_streams", limits.concurrency, 1)
        except LimitExceeded:
            for key, amount in undo:
                await add(key, amount, 2 * DAY_S)
            raise
        return Admission(principal, limits, tokens, minute, day, stream_id, False, micro_usd, month)

    async def settle(
        self, admission: Admission, used_tokens: int, used_micro_usd: int | None = None
    ) -> None:
        """Replace the reservations by the real usage and cost and free the stream slot
        (once). `used_micro_usd` None (the cost is not known) keeps the money reserved."""
        if admission.settled:
            return
        admission.settled = True
        delta = used_tokens - admission.reserved
        limits, principal = admission.limits, admission.principal
        spent = admission.reserved_micro_usd if used_micro_usd is None else used_micro_usd
        if spent != admission.reserved_micro_usd:
            change = spent - admission.reserved_micro_usd
            if limits.daily_usd is not None:
                key = self._key(principal, f"usd_day:{admission.day}")
                await self._counters.add(key, change, 2 * DAY_S)
            if limits.monthly_usd is not None:
                key = self._key(principal, f"usd_month:{admission.month}")
                await self._counters.add(key, change, MONTH_TTL_S)
        if limits.tpm is not None and delta:
            await self._counters.add(self._key(principal, f"tpm:{admission.minute}"), delta, 120)
        if limits.daily_tokens is not None and delta:
            key = self._key(principal, f"day:{admission.day}")
            await self._counters.add(key, delta, 2 * DAY_S)
        if limits.concurrency is not None:
            await self._counters.leave(self._key(principal, "streams"), admission.stream_id)

    async def status(self, principal: str, limits: Limits) -> dict[str, Any]:
        """Each limit with what is left of it now, for `GET /me`; the budgets in dollars."""
        clock = time.time()
        minute, day = int(clock // 60), int(clock // DAY_S)
        month, to_month = _month(clock)
        value = self._counters.value
        money: dict[str, Any] = {}
        for name, budget, window, reset in (
            ("daily_usd", limits.daily_usd, f"usd_day:{day}", DAY_S - clock % DAY_S),
            ("monthly_usd", limits.monthly_usd, f"usd_month:{month}", to_month),
        ):
            if budget is None:
                money[name] = None
                continue
            spent = await value(self._key(principal, window)) / MICRO
            money[name] = {
                "limit": budget,
                "spent": round(spent, 6),
                "remaining": round(max(0.0, budget - spent), 6),
                "reset_s": round(reset),
            }
        used = {
            "requests_per_minute": (
                limits.rpm,
                await value(self._key(principal, f"rpm:{minute}")),
                60 - clock % 60,
            ),
            "tokens_per_minute": (
                limits.tpm,
                await value(self._key(principal, f"tpm:{minute}")),
                60 - clock % 60,
            ),
            "tokens_per_day": (
                limits.daily_tokens,
                await value(self._key(principal, f"day:{day}")),
                DAY_S - clock % DAY_S,
            ),
            "concurrent_streams": (
                limits.concurrency,
                await self._counters.size(self._key(principal, "streams"), self._stale),
                0,
            ),
        }
        return {
            name: None
            if limit is None
            else {"limit": limit, "remaining": max(0, limit - count), "reset_s": round(reset)}
            for name, (limit, count, reset) in used.items()
        } | money
