"""Resuming and stopping a stream: `GET /ai/stream/{id}`, `POST /ai/stream/{id}/stop`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from .. import surfaces
from ..errors import FieldProblem, InvalidField
from ..principals import principal_of
from ..services import services
from ..sse import LINE_PING, PING, EventStreamResponse
from ..surfaces import seed

router = APIRouter()


def _offset(after: int | None, last_event_id: str | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    try:
        value = int(last_event_id)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidField(
            [FieldProblem("Last-Event-ID", "must be the id of a frame (a whole number)")]
        )
    return value


@router.get(
    "/ai/stream/{stream_id}",
    summary="Resume a stream after the frame `Last-Event-ID` (or `after`)",
    response_class=EventStreamResponse,
)
async def resume_stream(
    request: Request,
    stream_id: str,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> EventStreamResponse:
    settings = services(request).settings
    hub = services(request).streams
    offset = _offset(after, request.headers.get("last-event-id"))
    reader = await hub.follow(stream_id, principal_of(request).scope)
    # In the format of the surface that started the stream, whichever it was.
    frames = await surfaces.resume(reader, offset)
    headers = {"x-stream-id": stream_id, "x-chatrelay-instance": hub.instance}
    # With the heartbeat of that surface too (OpenAI-style SSE decoders need LINE_PING).
    ping = PING if reader.meta.surface == seed.NAME else LINE_PING
    return EventStreamResponse(frames, heartbeat_s=settings.heartbeat_s, headers=headers, ping=ping)


@router.post("/ai/stream/{stream_id}/stop", summary="Stop a stream's generation")
async def stop_stream(request: Request, stream_id: str) -> dict[str, str]:
    hub = services(request).streams
    status = await hub.stop(stream_id, principal_of(request).scope)
    return {"stream_id": stream_id, "status": status}
