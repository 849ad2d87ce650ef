"""Operations: `GET /healthz` (alive), `GET /readyz` (able to serve), `GET /metrics`.

`/readyz` is cheap: it checks the database and Redis, and only that the default model has its
key (`provider: configured`). `/readyz?probe=upstream` also reaches each model's upstream."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from typing import Annotated, Any, Literal

import httpx
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from ..routing import Router
from ..services import services

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok", "instance": services(request).streams.instance}


# Readiness values that mean "can serve": checked and fine, not in use, or (the provider, not
# probed) configured with its key.
READY = ("ok", "not used", "configured", "reachable")
PROBE_TIMEOUT_S = 2.0
# Probe results are shared this long, so an open /readyz cannot make the server open a
# connection to each upstream per request.
PROBE_CACHE_S = 5.0


@router.get("/readyz", summary="Readiness: database, Redis and a provider are usable")
async def readyz(
    request: Request,
    probe: Annotated[
        Literal["upstream"] | None,
        Query(description="`upstream`: also reach each model's upstream (no tokens spent)"),
    ] = None,
) -> JSONResponse:
    state = services(request)
    checks: dict[str, Any] = {}

    async def database() -> None:
        async with state.store.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def redis() -> None:
        if state.redis is not None:
            await state.redis.ping()

    for name, check in (("database", database), ("redis", redis)):
        try:
            await asyncio.wait_for(check(), timeout=2)
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the reason is shown
            checks[name] = f"failed: {type(exc).__name__}"
    if state.redis is None:
        checks["redis"] = "not used"
    router_: Router = state.chat.router
    upstreams = router_.upstreams()
    reached: dict[str, str] = {}
    if probe == "upstream" and upstreams:
        reached = await _probe(state.upstream_probe, upstreams)
    default = router_.default
    if default in router_.config.unavailable:
        checks["provider"] = "default model unavailable"
    elif default not in upstreams:
        checks["provider"] = "ok"  # the built-in mock: nothing to reach
    else:
        # Without the probe, only that its key is there: nothing was sent to the upstream.
        checks["provider"] = reached.get(default, "configured")
    ready = all(value in READY for value in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if probe == "upstream":
        body["upstreams"] = reached
    return JSONResponse(body, status_code=200 if ready else 503)


async def _probe(prober: UpstreamProbe, upstreams: dict[str, str]) -> dict[str, str]:
    """alias -> `reachable` or `unreachable: <why>`; each base URL is reached once."""
    urls = sorted(set(upstreams.values()))
    results = await asyncio.gather(*(prober.reach(url) for url in urls))
    by_url = dict(zip(urls, results, strict=True))
    return {alias: by_url[url] for alias, url in upstreams.items()}


class UpstreamProbe:
    """Reaches upstream base URLs for `/readyz?probe=upstream`: an HTTP request without the
    API key, whose answer (any status) says the upstream is reachable. Results are kept for
    `PROBE_CACHE_S` and concurrent probes of one URL share one attempt."""

    def __init__(self, timeout_s: float = PROBE_TIMEOUT_S, cache_s: float = PROBE_CACHE_S) -> None:
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._done: dict[str, tuple[float, str]] = {}
        self._running: dict[str, asyncio.Task[str]] = {}

    async def reach(self, url: str) -> str:
        now = time.monotonic()
        done = self._done.get(url)
        if done is not None and now - done[0] < self.cache_s:
            return done[1]
        task = self._running.get(url)
        if task is None:
            task = self._running[url] = asyncio.create_task(self._attempt(url))
            task.add_done_callback(lambda _: self._running.pop(url, None))
        return await asyncio.shield(task)  # a reader going away does not cancel it for others

    async def _attempt(self, url: str) -> str:
        result = await reach(url, self.timeout_s)
        self._done[url] = (time.monotonic(), result)
        return result


async def reach(url: str, timeout_s: float) -> str:
    """`reachable` when the upstream answers HTTP at all (no key is sent, no tokens are spent),
    else `unreachable: <why>`, in words that name no address."""
    try:
        # trust_env: through the same proxy settings the SDKs would use.
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=True) as http,
            http.stream("GET", url),
        ):
            return "reachable"
    except httpx.TimeoutException:
        return f"unreachable: no answer within {timeout_s:g} s"
    except (httpx.HTTPError, OSError) as exc:
        return f"unreachable: {_why(exc)}"


def _why(exc: BaseException) -> str:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
