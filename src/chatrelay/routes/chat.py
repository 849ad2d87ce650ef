"""`POST /ai/stream/chat` (the seed guide's endpoint) and its non-streaming twin `/ai/chat`."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .. import surfaces
from ..bodies import read_body
from ..chat import complete
from ..errors import ChatRelayError, MethodNotAllowed
from ..openapi import body
from ..principals import principal_of
from ..schemas import ChatRequest
from ..services import services
from ..sse import PING, EventStreamResponse
from ..streams import Reader
from ..surfaces import seed
from . import headers
from .errors import error_response

router = APIRouter()

REQUEST_BODY = body(ChatRequest)


async def _request(request: Request) -> ChatRequest:
    settings = services(request).settings
    # Parsed by hand, not by FastAPI, so the size limit applies while reading and every
    # error names its field in our own error shape.
    return seed.parse(await read_body(request, settings.max_body_bytes))


@router.post(
    "/ai/stream/chat",
    summary="Stream a chat reply as Server-Sent Events",
    openapi_extra=REQUEST_BODY,
    response_class=EventStreamResponse,
)
async def stream_chat(request: Request) -> EventStreamResponse:
    settings = services(request).settings
    service = services(request).chat
    chat = await _request(request)
    reader = await service.stream(
        chat,
        principal_of(request),
        seed.NAME,
        idempotency_key=headers.idempotency_key(request),
        resume_grace_s=headers.resume_grace(request),
    )
    return EventStreamResponse(
        surfaces.frames(reader), heartbeat_s=settings.heartbeat_s, headers=stream_headers(reader)
    )


@router.get("/ai/stream/chat", include_in_schema=False)
async def stream_chat_by_get() -> Response:
    """Without this route, `GET /ai/stream/chat` would resume a stream named "chat" (404)."""
    raise MethodNotAllowed(
        "GET is not allowed on /ai/stream/chat: send the chat request with POST"
        " (to resume a stream: GET /ai/stream/{stream_id})",
        ["POST"],
    )


def stream_headers(reader: Reader) -> dict[str, str]:
    """The ids a client of any surface needs to resume, stop or find its stream."""
    # The instance is random per process: it tells operators (and tests) who served a stream.
    headers = {"x-stream-id": reader.meta.stream_id, "x-chatrelay-instance": reader.info.instance}
    if reader.meta.conversation_id:  # new conversations get their id here, before any frame
        headers["x-conversation-id"] = reader.meta.conversation_id
    return headers


async def stream_or_error(
    reader: Reader,
    heartbeat_s: float,
    error_response: Callable[[ChatRelayError], Response],
    ping: bytes = PING,
) -> Response:
    """An SDK surface's answer: a failure before the first token as an HTTP error (the SDKs
    retry 429/5xx), else, at the first token or after one heartbeat interval without one (so
    proxies see bytes), the 200 stream, in which later failures are the surface's error frame."""
    failure = await reader.opening(heartbeat_s)
    if failure is not None:
        await reader.aclose()  # the reply has ended: its turn is stored, its tokens settled
        return error_response(failure)
    return EventStreamResponse(
        surfaces.frames(reader), heartbeat_s=heartbeat_s, headers=stream_headers(reader), ping=ping
    )


def client_gone() -> Response:
    """The answer to a request whose client left: nobody reads it, the logs and metrics do."""
    return Response(status_code=499)  # nginx's "client closed request"


@router.post("/ai/chat", summary="Chat reply as one JSON object", openapi_extra=REQUEST_BODY)
async def chat(request: Request) -> Response:
    service = services(request).chat
    job = await service.start(await _request(request), principal_of(request))
    reply = await complete(job, request.receive)
    if reply is None:
        return client_gone()
    if reply.error is not None:
        return error_response(reply.error, partial_content=reply.content or None)
    return JSONResponse(seed.reply_object(job, reply))
