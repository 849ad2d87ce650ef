"""`GET /me`: who the caller is and what is left of its limits (for "N messages left")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..principals import principal_of
from ..services import services

router = APIRouter()


@router.get("/me", summary="The caller's identity and remaining limits")
async def me(request: Request) -> dict[str, Any]:
    principal = principal_of(request)
    quotas = services(request).quotas
    return {
        "principal": {
            "id": principal.id,
            "kind": principal.kind,
            "admin": principal.admin,
            "name": principal.name,
        },
        "limits": await quotas.status(principal.id, principal.limits),
    }
