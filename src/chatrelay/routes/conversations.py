"""The conversations API and usage: list, read, rename, delete; tokens summed."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ..bodies import read_body
from ..conversation_ids import lookup_ids, shown_id
from ..errors import FieldProblem, InvalidField, NotFound
from ..openapi import body
from ..principals import principal_of
from ..schemas import validate_json
from ..services import services
from ..store import Store
from ..tables import Conversation, Message

router = APIRouter()


class ConversationPatch(BaseModel):
    """What a client may change: the title and the free-form metadata."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\x00]*$")
    metadata: dict[str, Any] | None = None


def summary(conversation: Conversation, viewer: str | None = None) -> dict[str, Any]:
    """`viewer`: the principal reading it, who knows it by its id in their namespace
    (conversation_ids.py); None (the CLI): the id as stored."""
    return {
        "id": conversation.id if viewer is None else shown_id(viewer, conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "metadata": conversation.meta,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def message_view(message: Message) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at.isoformat(),
    }
    if message.role == "assistant":
        view.update(
            model=message.model,
            stream_id=message.stream_id,
            end_reason=message.end_reason,
            stop_reason=message.stop_reason,
            error_code=message.error_code,
            error_message=message.error_message,
            usage=_usage(message),
            ttft_ms=message.ttft_ms,
            duration_ms=message.duration_ms,
        )
        if message.thinking:
            view["thinking"] = message.thinking
    return view


def full(conversation: Conversation, viewer: str | None = None) -> dict[str, Any]:
    return {
        **summary(conversation, viewer),
        "messages": [message_view(m) for m in conversation.messages],
    }


def _store(request: Request) -> Store:
    store = services(request).store
    return store


@router.get("/conversations", summary="The caller's conversations, newest first")
async def list_conversations(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    principal = principal_of(request)
    page = await _store(request).page(principal.scope, limit, cursor)
    return {
        "data": [summary(c, principal.id) for c in page.conversations],
        "next_cursor": page.next_cursor,
    }


# The conversation a caller names is looked for in their namespace, then (a row from before
# namespaces, or an admin's view of another namespace) under the id itself, owner checked:
# another owner's conversation and one that does not exist get the same 404.


@router.get("/conversations/{conversation_id}", summary="A conversation with its messages")
async def get_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    principal = principal_of(request)
    for candidate in lookup_ids(principal.id, conversation_id):
        conversation = await _store(request).get(candidate, principal.scope)
        if conversation is not None:
            return full(conversation, principal.id)
    raise NotFound(f"Conversation {conversation_id!r} not found")


@router.patch(
    "/conversations/{conversation_id}",
    summary="Rename a conversation or replace its metadata",
    openapi_extra=body(ConversationPatch),
)
async def patch_conversation(request: Request, conversation_id: str) -> dict[str, Any]:
    settings = services(request).settings
    patch = validate_json(await read_body(request, settings.max_body_bytes), ConversationPatch)
    principal = principal_of(request)
    for candidate in lookup_ids(principal.id, conversation_id):
        conversation = await _store(request).update(
            candidate, principal.scope, title=patch.title, metadata=patch.metadata
        )
        if conversation is not None:
            return full(conversation, principal.id)
    raise NotFound(f"Conversation {conversation_id!r} not found")


@router.delete("/conversations/{conversation_id}", status_code=204, summary="Delete a conversation")
async def delete_conversation(request: Request, conversation_id: str) -> Response:
    principal = principal_of(request)
    for candidate in lookup_ids(principal.id, conversation_id):
        if await _store(request).delete(candidate, principal.scope):
            return Response(status_code=204)
    raise NotFound(f"Conversation {conversation_id!r} not found")


def _bound(value: str | None, name: str, end: bool) -> datetime | None:
    """A date (whole UTC day) or an ISO 8601 time; `to` dates include that day."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return datetime.combine(day, time(), UTC)
        parsed = datetime.fromisoformat(value)
        # In UTC now, so a time the databases cannot hold fails here, as a 422.
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidField(
            [FieldProblem(name, "must be a date (2026-11-24) or an ISO 8601 time")]
        ) from None


def _usage(message: Message) -> dict[str, Any]:
    """A reply's tokens; the prompt cache's part of the input only where it was reported."""
    usage: dict[str, Any] = {
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "estimated": message.usage_estimated,
        "cost_usd": message.cost_usd,  # None: its model has no price (or before 0007)
    }
    for name in ("cache_read_tokens", "cache_write_tokens"):
        if (value := getattr(message, name)) is not None:
            usage[name] = value
    return usage


@router.get("/usage", summary="Tokens and cost, summed by model, day, API key or user")
async def usage(
    request: Request,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    group_by: Literal["model", "day", "key", "user"] = "model",
) -> dict[str, Any]:
    rows = await _store(request).usage(
        principal_of(request).scope, _bound(start, "from", False), _bound(end, "to", True), group_by
    )
    return {"group_by": group_by, "from": start, "to": end, "data": rows, "total": totals(rows)}


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rows summed; the cost None when no row has one (unknown, not zero)."""
    costs = [row["cost_usd"] for row in rows if row["cost_usd"] is not None]
    total: dict[str, Any] = {
        key: sum(row[key] for row in rows)
        for key in (
            "messages",
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "estimated_messages",
            "unpriced_messages",
        )
    }
    total["cost_usd"] = round(sum(costs), 9) if costs else None
    return total
