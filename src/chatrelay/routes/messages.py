"""The Anthropic Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

Any model alias serves behind them. Keys are taken as `x-api-key` as well as
`Authorization: Bearer` (auth.py); `anthropic-version` and `anthropic-beta` are accepted and
ignored (what chatrelay serves does not change with them). Errors are in Anthropic's shape
(routes/errors.py picks it by path).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..bodies import read_body
from ..chat import complete
from ..openapi import body
from ..principals import principal_of
from ..services import services
from ..surfaces import anthropic
from . import headers
from .chat import client_gone, stream_or_error
from .errors import anthropic_error_response

router = APIRouter(prefix="/v1")

# Says that a count is chatrelay's estimate (4 characters a token), not the upstream's.
ESTIMATED = "x-chatrelay-estimated"


@router.post(
    "/messages",
    summary="Anthropic Messages API (streaming or not)",
    openapi_extra=body(anthropic.AnthropicMessagesRequest),
)
async def messages(request: Request) -> Response:
    settings = services(request).settings
    service = services(request).chat
    principal = principal_of(request)
    body = anthropic.parse(await read_body(request, settings.max_body_bytes))
    chat = anthropic.to_chat_request(body)
    # Stateless, as Anthropic's API is, unless the client names a conversation in `metadata`.
    persist = chat.conversation_id is not None
    if not body.stream:
        job = await service.start(chat, principal, persist=persist)
        reply = await complete(job, request.receive)
        if reply is None:
            return client_gone()
        if reply.error is not None:
            return anthropic_error_response(reply.error)
        return JSONResponse(anthropic.message_object(job, reply))

    # Anthropic's clients never resume by themselves: one that leaves stops the reply at once,
    # unless it asked for a grace to resume in (X-Resume-Grace).
    grace = headers.resume_grace(request)
    reader = await service.stream(
        chat,
        principal,
        anthropic.NAME,
        persist=persist,
        idempotency_key=headers.idempotency_key(request),
        resume_grace_s=0.0 if grace is None else grace,
    )
    # The SDK raises an HTTP error status when the stream is entered (and retries 429/5xx),
    # so a failure before the first token is answered as one; after one heartbeat interval
    # without an answer we commit to the 200 stream and later failures are `event: error`.
    return await stream_or_error(reader, settings.heartbeat_s, anthropic_error_response)


@router.post(
    "/messages/count_tokens",
    summary="Count a Messages API request's input tokens",
    openapi_extra=body(anthropic.AnthropicCountTokensRequest),
)
async def count_tokens(request: Request) -> Response:
    settings = services(request).settings
    body = anthropic.parse_count_tokens(await read_body(request, settings.max_body_bytes))
    chat = anthropic.to_chat_request(body)
    tokens, estimated = await services(request).chat.count_tokens(chat)
    return JSONResponse(
        {"input_tokens": tokens}, headers={ESTIMATED: "true" if estimated else "false"}
    )
