"""Operations: `GET /healthz` (alive), `GET /readyz` (able to serve), `GET /metrics`."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok", "instance": request.app.state.streams.instance}


@router.get("/readyz", summary="Readiness: database, Redis and a provider are usable")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
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
    router_ = state.chat.router
    checks["provider"] = (
        "ok" if router_.default not in router_.config.unavailable else "default model unavailable"
    )
    ready = all(value in ("ok", "not used") for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
