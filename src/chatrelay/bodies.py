"""Reading request bodies within the configured size limit."""

from __future__ import annotations

from starlette.requests import Request

from .errors import BodyTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or `BodyTooLarge` as soon as it passes `limit` bytes (the setting
    `CHATRELAY_MAX_BODY_BYTES`)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"The request body is larger than the limit of {limit} bytes (CHATRELAY_MAX_BODY_BYTES)"
    )
