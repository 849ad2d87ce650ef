"""The JWT signing keys of `CHATRELAY_JWT_JWKS_URL`, kept fresh in the background.

A token whose key id is known is verified from memory and never waits on the network: the key
set is fetched at start and again every `refresh_s` by a background task (which keeps the last
good set and retries with backoff when the provider is down). Only a key id not yet seen (a
rotation) triggers a fetch on the request path, one at a time, at most once per `cooldown_s`,
and waited for at most `timeout_s`; every request meanwhile shares that one fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from jwt import PyJWK

log = logging.getLogger("chatrelay.jwks")

_RETRY_CAP_S = 60.0


class UnknownSigningKey(Exception):
    """No key of the current set signs this token (or the set could not be fetched)."""


class JwksKeys:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 3.0,
        refresh_s: float = 300.0,
        cooldown_s: float = 5.0,
    ) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._refresh_s = refresh_s
        self._cooldown_s = cooldown_s
        self._keys: dict[str | None, PyJWK] = {}
        self._fetched_at = -float("inf")
        self._fetch: asyncio.Task[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._refresh_loop(), name="jwks-refresh")

    async def close(self) -> None:
        for task in (self._loop_task, self._fetch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._http.aclose()

    async def key(self, kid: str | None) -> PyJWK:
        """The key that signed a token naming `kid`; fetches only for an unseen key id."""
        if (found := self._lookup(kid)) is not None:
            return found
        if time.monotonic() - self._fetched_at >= self._cooldown_s or not self._keys:
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._shared_fetch()), self._timeout_s)
        if (found := self._lookup(kid)) is not None:
            return found
        raise UnknownSigningKey(kid)

    def _lookup(self, kid: str | None) -> PyJWK | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _shared_fetch(self) -> asyncio.Task[None]:
        if self._fetch is None or self._fetch.done():
            self._fetch = asyncio.create_task(self._fetch_once(), name="jwks-fetch")
        return self._fetch

    async def _fetch_once(self) -> None:
        from jwt import PyJWKSet  # only with JWT auth on: it brings in `cryptography`

        response = await self._http.get(self.url)
        response.raise_for_status()
        keys = PyJWKSet.from_dict(response.json()).keys
        self._keys = {k.key_id: k for k in keys if k.public_key_use in (None, "sig")}
        self._fetched_at = time.monotonic()

    async def _refresh_loop(self) -> None:
        failures = 0
        while True:
            try:
                await self._shared_fetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("could not fetch the JWKS (%s); keeping the last keys", _why(exc))
                await asyncio.sleep(min(_RETRY_CAP_S, 2.0**failures))
                continue
            if failures:
                log.info("the JWKS is reachable again")
            failures = 0
            await asyncio.sleep(self._refresh_s)


def _why(exc: Exception) -> str:
    kind: Any = type(exc).__name__
    return f"{kind}: {exc}" if str(exc) else kind
