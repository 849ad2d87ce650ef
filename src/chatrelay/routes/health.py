"""`GET /healthz`: the process is up and serving."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/healthz", summary="Liveness check")
async def healthz(request: Request) -> dict[str, str]:
    return {"status": "ok", "instance": request.app.state.streams.instance}
