"""`POST /ai/stream/chat` (the seed guide's endpoint) and its non-streaming twin `/ai/chat`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..bodies import read_body
from ..chat import ChatService, complete
from ..principals import principal_of
from ..schemas import ChatRequest, parse_chat_request
from ..settings import Settings
from ..sse import EventStreamResponse, seed_frames, usage_dict
from .errors import error_response

router = APIRouter()

REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
    }
}


async def _start(request: Request) -> tuple[Settings, Any]:
    settings: Settings = request.app.state.settings
    service: ChatService = request.app.state.chat
    # Parsed by hand, not by FastAPI, so the size limit applies while reading and every
    # error names its field in our own error shape.
    body = await read_body(request, settings.max_body_bytes)
    job = await service.start(parse_chat_request(body), principal_of(request))
    return settings, job


@router.post(
    "/ai/stream/chat",
    summary="Stream a chat reply as Server-Sent Events",
    openapi_extra=REQUEST_BODY,
    response_class=EventStreamResponse,
)
async def stream_chat(request: Request) -> EventStreamResponse:
    settings, job = await _start(request)
    headers = {"x-stream-id": job.stream_id}
    if job.conversation_id:  # new conversations get their id here, before the first frame
        headers["x-conversation-id"] = job.conversation_id
    return EventStreamResponse(seed_frames(job), heartbeat_s=settings.heartbeat_s, headers=headers)


@router.post("/ai/chat", summary="Chat reply as one JSON object", openapi_extra=REQUEST_BODY)
async def chat(request: Request) -> JSONResponse:
    _, job = await _start(request)
    reply = await complete(job)
    if reply.error is not None:
        return error_response(reply.error, partial_content=reply.content or None)
    body: dict[str, Any] = {
        "content": reply.content,
        "model": reply.model,
        "stop_reason": reply.stop_reason,
        "usage": usage_dict(reply.usage),
        "stream_id": job.stream_id,
        "conversation_id": job.conversation_id,
    }
    if reply.thinking:
        body["thinking"] = reply.thinking
    if job.warnings:
        body["warnings"] = job.warnings
    return JSONResponse(body)
