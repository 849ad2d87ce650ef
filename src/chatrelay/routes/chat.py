"""`POST /ai/stream/chat` (the seed guide's endpoint) and its non-streaming twin `/ai/chat`."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..bodies import read_body
from ..chat import ChatJob, ChatService, complete
from ..errors import ChatRelayError, FieldProblem, InvalidField, MethodNotAllowed
from ..openapi import body
from ..principals import principal_of
from ..schemas import ChatRequest, parse_chat_request
from ..settings import Settings
from ..sse import EventStreamResponse, usage_dict
from ..streams import StreamHub
from .errors import error_response

router = APIRouter()

REQUEST_BODY = body(ChatRequest)


async def _request(request: Request) -> ChatRequest:
    settings: Settings = request.app.state.settings
    # Parsed by hand, not by FastAPI, so the size limit applies while reading and every
    # error names its field in our own error shape.
    return parse_chat_request(await read_body(request, settings.max_body_bytes))


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 200:
        raise InvalidField([FieldProblem("Idempotency-Key", "must be 1 to 200 characters")])
    return key


@router.post(
    "/ai/stream/chat",
    summary="Stream a chat reply as Server-Sent Events",
    openapi_extra=REQUEST_BODY,
    response_class=EventStreamResponse,
)
async def stream_chat(request: Request) -> EventStreamResponse:
    settings: Settings = request.app.state.settings
    service: ChatService = request.app.state.chat
    hub: StreamHub = request.app.state.streams
    principal = principal_of(request)
    chat = await _request(request)
    key = _idempotency_key(request)
    stream_id = uuid.uuid4().hex
    if key is not None:
        bound = await hub.events.claim(principal.id, key, stream_id)
        if bound != stream_id:
            # A retried POST (its response was lost): the same stream, not a second reply.
            frames = await hub.follow(bound, principal.scope, 0)
            headers = {"x-stream-id": bound, "x-chatrelay-instance": hub.instance}
            return EventStreamResponse(frames, heartbeat_s=settings.heartbeat_s, headers=headers)
    try:
        job = await service.start(chat, principal, stream_id=stream_id)
        try:
            frames = await hub.open(job, principal.id)
        except ChatRelayError as exc:
            await job.abandon(exc)  # no generation will record this turn: end it here
            raise
    except BaseException:
        if key is not None:
            await hub.events.forget_claim(principal.id, key)
        raise
    return EventStreamResponse(
        frames, heartbeat_s=settings.heartbeat_s, headers=_headers(job, hub.instance)
    )


@router.get("/ai/stream/chat", include_in_schema=False)
async def stream_chat_by_get() -> Response:
    """Without this route, `GET /ai/stream/chat` would resume a stream named "chat" (404)."""
    raise MethodNotAllowed(
        "GET is not allowed on /ai/stream/chat: send the chat request with POST"
        " (to resume a stream: GET /ai/stream/{stream_id})",
        ["POST"],
    )


def _headers(job: ChatJob, instance: str) -> dict[str, str]:
    # The instance is random per process: it tells operators (and tests) who served a stream.
    headers = {"x-stream-id": job.stream_id, "x-chatrelay-instance": instance}
    if job.conversation_id:  # new conversations get their id here, before the first frame
        headers["x-conversation-id"] = job.conversation_id
    return headers


def client_gone() -> Response:
    """The answer to a request whose client left: nobody reads it, the logs and metrics do."""
    return Response(status_code=499)  # nginx's "client closed request"


@router.post("/ai/chat", summary="Chat reply as one JSON object", openapi_extra=REQUEST_BODY)
async def chat(request: Request) -> Response:
    service: ChatService = request.app.state.chat
    job = await service.start(await _request(request), principal_of(request))
    reply = await complete(job, request.receive)
    if reply is None:
        return client_gone()
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
