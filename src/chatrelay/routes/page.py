"""The chat page (`/`) and its static files (`/static/...`), served from the package: no build
step and no CDN, so the page works where the internet is not reachable."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    # The page is small and changes with the server: always revalidate.
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
