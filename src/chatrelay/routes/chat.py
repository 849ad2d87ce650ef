"""`POST /ai/stream/chat`: the seed guide's endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..bodies import read_body
from ..chat import ChatService
from ..schemas import ChatRequest, parse_chat_request
from ..settings import Settings
from ..sse import EventStreamResponse

router = APIRouter()


@router.post(
    "/ai/stream/chat",
    summary="Stream a chat reply as Server-Sent Events",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
        }
    },
    response_class=EventStreamResponse,
)
async def stream_chat(request: Request) -> EventStreamResponse:
    settings: Settings = request.app.state.settings
    service: ChatService = request.app.state.chat
    # Parsed by hand, not by FastAPI, so the size limit applies while reading and every
    # error names its field in our own error shape.
    body = await read_body(request, settings.max_body_bytes)
    stream = service.open_stream(parse_chat_request(body))
    return EventStreamResponse(
        stream.frames(), heartbeat_s=settings.heartbeat_s, headers=stream.headers
    )
