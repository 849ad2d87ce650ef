"""The OpenAI-compatible routes: `POST /v1/chat/completions` and `GET /v1/models`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..bodies import read_body
from ..chat import ChatService, complete
from ..errors import FieldProblem, InvalidField
from ..openai_compat import (
    ChunkEncoder,
    OpenAIChatRequest,
    chunk_frames,
    completion_object,
    to_chat_request,
)
from ..openapi import body
from ..principals import principal_of
from ..relay import Answering, End, RelayEvent
from ..routing import Router
from ..schemas import validate_json
from ..settings import Settings
from ..sse import EventStreamResponse
from .chat import client_gone
from .errors import openai_error_response

router = APIRouter(prefix="/v1")


@router.post(
    "/chat/completions",
    summary="OpenAI-compatible Chat Completions (streaming or not)",
    openapi_extra=body(OpenAIChatRequest),
)
async def chat_completions(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    service: ChatService = request.app.state.chat
    body = validate_json(await read_body(request, settings.max_body_bytes), OpenAIChatRequest)
    chat = to_chat_request(body)
    try:
        # Stateless, as OpenAI's API is, unless the client names a conversation in `metadata`.
        job = await service.start(
            chat, principal_of(request), persist=chat.conversation_id is not None
        )
    except InvalidField as exc:
        if body.max_completion_tokens is None:
            raise
        # Name the field this client sent.
        renamed = [
            FieldProblem("max_completion_tokens", p.message) if p.field == "max_tokens" else p
            for p in exc.problems
        ]
        raise InvalidField(renamed) from None
    if not body.stream:
        reply = await complete(job, request.receive)
        if reply is None:
            return client_gone()
        if reply.error is not None:
            return openai_error_response(reply.error)
        return JSONResponse(completion_object(reply))

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    encoder = ChunkEncoder(job, include_usage)
    events = job.events()
    # OpenAI clients retry on a 429/5xx status, so a failure before the first token is
    # answered as an HTTP error; after one heartbeat interval without an answer we commit to
    # a 200 stream (so proxies see bytes) and later failures become error chunks.
    pending = asyncio.ensure_future(anext(events))
    done, _ = await asyncio.wait({pending}, timeout=settings.heartbeat_s)
    first: list[RelayEvent] = []
    if done:
        first.append(pending.result())
        if type(first[0]) is Answering:
            first.append(await anext(events))
        last = first[-1]
        if type(last) is End and last.error is not None:
            await events.aclose()
            return openai_error_response(last.error)
        frames = chunk_frames(encoder, events, first)
    else:
        frames = chunk_frames(encoder, _after(pending, events), [])
    return EventStreamResponse(
        frames, heartbeat_s=settings.heartbeat_s, headers={"x-stream-id": job.stream_id}
    )


async def _after(
    pending: asyncio.Future[RelayEvent], events: AsyncGenerator[RelayEvent, None]
) -> AsyncGenerator[RelayEvent, None]:
    try:
        yield await pending
        async for event in events:
            yield event
    finally:
        pending.cancel()
        await events.aclose()


@router.get("/models", summary="The model aliases this server serves")
async def list_models(request: Request) -> dict[str, Any]:
    models: Router = request.app.state.chat.router
    config = models.config
    return {
        "object": "list",
        "data": [
            {
                "id": alias,
                "object": "model",
                "created": 0,
                "owned_by": spec.provider,
                "default": alias == config.default,
                "fallbacks": list(spec.fallbacks),
                "available": alias not in config.unavailable,
            }
            for alias, spec in config.specs.items()
        ],
    }
