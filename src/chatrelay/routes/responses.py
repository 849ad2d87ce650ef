"""The Responses API route: `POST /v1/responses`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..bodies import read_body
from ..chat import complete
from ..errors import InvalidField, Unsupported
from ..openapi import body
from ..principals import Principal, principal_of
from ..schemas import ChatRequest
from ..services import services
from ..sse import LINE_PING
from ..surfaces import responses
from . import headers
from .chat import client_gone, stream_or_error
from .errors import openai_error_response

router = APIRouter(prefix="/v1")


@router.post(
    "/responses",
    summary="OpenAI-compatible Responses API (streaming or not)",
    openapi_extra=body(responses.ResponsesRequest),
)
async def create_response(request: Request) -> Response:
    settings = services(request).settings
    body = responses.parse(await read_body(request, settings.max_body_bytes))
    chat, index_of = responses.to_chat_request(body)
    principal = principal_of(request)
    await _check_previous(request, body, principal)
    # Stored (a turn of a conversation, continued by `previous_response_id`) unless the
    # client says `store: false`.
    persist = body.store is not False or chat.conversation_id is not None
    try:
        return await _answer(request, body, chat, principal, persist)
    except InvalidField as exc:
        # Name the fields this client sent.
        raise InvalidField([responses.rename(p, index_of) for p in exc.problems]) from None


async def _check_previous(
    request: Request, body: responses.ResponsesRequest, principal: Principal
) -> None:
    """An unknown `previous_response_id` is a 404 naming it, never a new conversation."""
    previous = responses.continued(body)
    if previous is None:
        return
    conversations = services(request).chat.conversations
    stream_id, conversation_id = previous
    found = (
        None
        if conversations is None
        else await conversations.reply_in(conversation_id, principal.id, stream_id)
    )
    assert body.previous_response_id is not None
    if found is None:
        raise responses.ResponseNotFound(body.previous_response_id)
    if not found:
        raise Unsupported(
            "previous_response_id",
            f"{body.previous_response_id!r} is an earlier response of its conversation; only"
            " the latest can be continued (branching from an earlier one is not supported)",
        )


async def _answer(
    request: Request,
    body: responses.ResponsesRequest,
    chat: ChatRequest,
    principal: Principal,
    persist: bool,
) -> Response:
    settings = services(request).settings
    service = services(request).chat
    echo = body.echo()
    if not body.stream:
        job = await service.start(chat, principal, persist=persist)
        reply = await complete(job, request.receive)
        if reply is None:
            return client_gone()
        if reply.error is not None:
            return openai_error_response(reply.error)
        return JSONResponse(responses.completion_object(job, reply, echo))

    # OpenAI's clients never resume by themselves: one that leaves stops the reply at once,
    # unless it asked for a grace to resume in (X-Resume-Grace).
    grace = headers.resume_grace(request)
    reader = await service.stream(
        chat,
        principal,
        responses.NAME,
        options={"echo": echo},
        persist=persist,
        idempotency_key=headers.idempotency_key(request),
        resume_grace_s=0.0 if grace is None else grace,
    )
    # A failure before the first token is an HTTP error (the SDKs retry on 429/5xx); after
    # one heartbeat interval without an answer we commit to a 200 stream.
    return await stream_or_error(reader, settings.heartbeat_s, openai_error_response, LINE_PING)
