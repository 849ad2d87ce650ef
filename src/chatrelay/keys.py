"""API keys: created and revoked by the operator (`chatrelay keys ...`), checked per request.

A key reads `crk_<id>_<secret>`. The id (public) finds the row; the whole key is compared,
in constant time, with the stored SHA-256 hash. The secret has 256 random bits, so a fast
hash is enough: there is nothing to brute-force that a slow one would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from .store import now
from .tables import ApiKey

PREFIX = "crk_"
# last_used_at is written at most this often per key: a DB write per request would cost more
# than the request.
TOUCH_EVERY_S = 60.0


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    admin: bool
    rpm: int | None
    tpm: int | None
    daily_tokens: int | None
    concurrency: int | None
    daily_usd: float | None = None
    monthly_usd: float | None = None


class ApiKeys:
    """The key table, with a short cache so a request costs no query (revocation takes
    effect within `cache_s`)."""

    def __init__(self, engine: AsyncEngine, cache_s: float = 10.0) -> None:
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}

    async def create(
        self,
        name: str,
        *,
        admin: bool = False,
        rpm: int | None = None,
        tpm: int | None = None,
        daily_tokens: int | None = None,
        concurrency: int | None = None,
        daily_usd: float | None = None,
        monthly_usd: float | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: returns the full key (shown once) and its row."""
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            id=key_id,
            name=name,
            secret_hash=_hash(key),
            admin=admin,
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            concurrency=concurrency,
            daily_usd=daily_usd,
            monthly_usd=monthly_usd,
            created_at=now(),
        )
        async with self._session.begin() as session:
            session.add(row)
        return key, row

    async def all(self) -> list[ApiKey]:
        async with self._session() as session:
            rows = await session.execute(select(ApiKey).order_by(ApiKey.created_at))
            return list(rows.scalars())

    async def revoke(self, key_id: str) -> bool:
        async with self._session.begin() as session:
            result = await session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now())
            )
        self._cache.pop(key_id, None)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def verify(self, key: str) -> KeyRecord | None:
        """The key's record, or None if it is unknown, wrong or revoked."""
        if not key.startswith(PREFIX):
            return None
        key_id, _, secret = key[len(PREFIX) :].partition("_")
        if not key_id or not secret:
            return None
        row = await self._row(key_id)
        # Compare even when there is no row, so timing says nothing about which ids exist.
        expected = row.secret_hash if row is not None else "0" * 64
        if not hmac.compare_digest(_hash(key), expected) or row is None:
            return None
        if row.revoked_at is not None:
            return None
        await self._touch(key_id)
        return KeyRecord(
            row.id,
            row.name,
            row.admin,
            row.rpm,
            row.tpm,
            row.daily_tokens,
            row.concurrency,
            row.daily_usd,
            row.monthly_usd,
        )

    async def _row(self, key_id: str) -> ApiKey | None:
        cached = self._cache.get(key_id)
        clock = time.monotonic()
        if cached is not None and clock - cached[0] < self._cache_s:
            return cached[1]
        async with self._session() as session:
            row = await session.get(ApiKey, key_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (clock, row)
        return row

    async def _touch(self, key_id: str) -> None:
        clock = time.monotonic()
        if clock - self._touched.get(key_id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
            return
        self._touched[key_id] = clock
        async with self._session.begin() as session:
            await session.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now())
            )
