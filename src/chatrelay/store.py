"""Conversations and messages in the database: every query the service needs, and no more.

The store knows nothing of HTTP or streams. Ownership is part of every read and write: a
conversation of another owner is, to the caller, a conversation that does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from .errors import ConversationBusy
from .group_commit import GroupCommit
from .tables import Conversation, Message

# What a conversation id looks like (ours are UUIDs; clients may choose their own).
CONVERSATION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")  # \Z: no trailing newline


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Opaque and unguessable (122 random bits)."""
    return str(uuid.uuid4())


@dataclass(slots=True)
class Reply:
    """How an assistant turn went, recorded when its stream ends."""

    content: str
    model: str | None
    stream_id: str
    end_reason: str
    stop_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None  # the error frame's message, safe to show a user
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_estimated: bool = False
    ttft_ms: int | None = None
    duration_ms: int | None = None
    thinking: str | None = None


@dataclass(slots=True)
class Page:
    conversations: list[Conversation]
    next_cursor: str | None


class Store:
    """Async access to conversations; one short transaction per call."""

    def __init__(self, engine: AsyncEngine, lock_timeout_s: float = 600.0) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._lock_timeout = timedelta(seconds=lock_timeout_s)
        self._writes = GroupCommit(engine)

    async def close(self) -> None:
        await self._writes.aclose()
        await self.engine.dispose()

    # -- conversations ---------------------------------------------------------------------
    async def get(self, conversation_id: str, owner: str | None) -> Conversation | None:
        """The conversation with its messages; `owner=None` sees every owner's (admin)."""
        if not CONVERSATION_ID.match(conversation_id):
            return None  # no such id can exist (and PostgreSQL refuses NUL in text)
        async with self._session() as session:
            query = (
                select(Conversation)
                .where(Conversation.id == conversation_id)
                .options(selectinload(Conversation.messages))
            )
            if owner is not None:
                query = query.where(Conversation.owner == owner)
            return (await session.execute(query)).scalar_one_or_none()

    async def exists(self, conversation_id: str) -> bool:
        async with self._session() as session:
            query = select(func.count()).where(Conversation.id == conversation_id)
            return bool((await session.execute(query)).scalar_one())

    async def page(self, owner: str | None, limit: int, cursor: str | None) -> Page:
        """Newest first (by last activity), `limit` at a time; the cursor is opaque."""
        query: Select[Conversation] = select(Conversation).order_by(
            Conversation.updated_at.desc(), Conversation.id.desc()
        )
        if owner is not None:
            query = query.where(Conversation.owner == owner)
        if cursor is not None:
            updated_at, last_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    Conversation.updated_at < updated_at,
                    and_(Conversation.updated_at == updated_at, Conversation.id < last_id),
                )
            )
        async with self._session() as session:
            rows = list((await session.execute(query.limit(limit + 1))).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _encode_cursor(rows[-1]) if more and rows else None)

    async def message_counts(self, conversation_ids: list[str]) -> dict[str, int]:
        """How many messages each of these conversations holds (one query)."""
        if not conversation_ids:
            return {}
        query = (
            select(Message.conversation_id, func.count())
            .where(Message.conversation_id.in_(conversation_ids))
            .group_by(Message.conversation_id)
        )
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return {conversation_id: int(count) for conversation_id, count in rows}

    async def update(
        self,
        conversation_id: str,
        owner: str | None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation | None:
        async with self._session.begin() as session:
            conversation = await self._owned(session, conversation_id, owner)
            if conversation is None:
                return None
            if title is not None:
                conversation.title = title
            if metadata is not None:
                conversation.meta = metadata
            conversation.updated_at = now()
        return await self.get(conversation_id, owner)

    async def delete(self, conversation_id: str, owner: str | None) -> bool:
        async with self._session.begin() as session:
            conversation = await self._owned(session, conversation_id, owner)
            if conversation is None:
                return False
            await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            await session.delete(conversation)
        return True

    async def _owned(
        self, session: AsyncSession, conversation_id: str, owner: str | None
    ) -> Conversation | None:
        if not CONVERSATION_ID.match(conversation_id):
            return None
        query = select(Conversation).where(Conversation.id == conversation_id)
        if owner is not None:
            query = query.where(Conversation.owner == owner)
        return (await session.execute(query)).scalar_one_or_none()

    # -- a turn: lock, store the user's messages, later the reply, unlock --------------------
    async def begin_turn(
        self,
        conversation_id: str,
        owner: str,
        stream_id: str,
        new_messages: list[dict[str, Any]],
        title: str,
        model: str,
        create: bool,
    ) -> int:
        """Lock the conversation for `stream_id` and append the user's new messages; return
        the seq the reply will take (the lock keeps it free until `end_turn`).

        Creates the conversation when `create` is set. Raises `ConversationBusy` if another
        stream holds a lock younger than the lock timeout.
        """
        stamp = now()
        stale = stamp - self._lock_timeout

        def write(connection: Connection, alone: bool) -> int:
            if create:
                try:
                    connection.execute(
                        _INSERT_CONVERSATION,
                        {
                            "id": conversation_id,
                            "owner": owner,
                            "title": title,
                            "model": model,
                            "metadata": {},
                            "created_at": stamp,
                            "updated_at": stamp,
                            "locked_by": stream_id,
                            "locked_at": stamp,
                        },
                    )
                except IntegrityError:
                    if not alone:  # PostgreSQL has aborted the shared transaction: retry alone
                        raise
                    raise ConversationBusy(conversation_id) from None
                seq = 0
            else:
                locked = connection.execute(
                    _LOCK,
                    {
                        "b_id": conversation_id,
                        "b_owner": owner,
                        "b_stale": stale,
                        "b_stream": stream_id,
                        "b_stamp": stamp,
                        "b_model": model,
                    },
                )
                if locked.rowcount != 1:
                    raise ConversationBusy(conversation_id)
                seq = int(connection.execute(_NEXT_SEQ, {"b_id": conversation_id}).scalar_one())
            if new_messages:
                connection.execute(
                    _INSERT_MESSAGES,
                    [
                        {
                            "id": new_id(),
                            "conversation_id": conversation_id,
                            "seq": seq + offset,
                            "role": message["role"],
                            "content": message["content"],
                            "stream_id": stream_id,
                            "usage_estimated": False,
                            "created_at": stamp,
                        }
                        for offset, message in enumerate(new_messages)
                    ],
                )
            return seq + len(new_messages)

        # Core statements, not the ORM, in one synchronous block, committed together with the
        # other turn writes of the moment: this runs once per stream, before its first token.
        return await self._writes.run(write)

    async def end_turn(self, conversation_id: str, reply: Reply, seq: int | None = None) -> None:
        """Store the assistant's reply (complete or not) and release the lock.

        `seq` is what `begin_turn` returned (saves a query); without it, the next free one.
        """
        row = {
            "id": new_id(),
            "seq": seq,
            "conversation_id": conversation_id,
            "role": "assistant",
            "content": reply.content,
            "model": reply.model,
            "stream_id": reply.stream_id,
            "end_reason": reply.end_reason,
            "stop_reason": reply.stop_reason,
            "error_code": reply.error_code,
            "error_message": reply.error_message,
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "usage_estimated": reply.usage_estimated,
            "ttft_ms": reply.ttft_ms,
            "duration_ms": reply.duration_ms,
            "thinking": reply.thinking,
            "created_at": now(),
        }

        def write(connection: Connection, alone: bool) -> None:
            if alone:
                # Its reserved seq may be what failed (a lock taken over after the timeout
                # and the seq used meanwhile): alone, it takes the next free one.
                row["seq"] = None
            _store_reply(connection, row)

        # The write goes on if the caller is cancelled (a stream's end must be recorded).
        await asyncio.shield(self._writes.run(write))

    async def release(self, conversation_id: str, stream_id: str) -> None:
        """Release the lock without a reply (the turn never reached a provider)."""
        async with self._session.begin() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.locked_by == stream_id)
                .values(locked_by=None, locked_at=None)
            )

    # -- usage ------------------------------------------------------------------------------
    async def usage(
        self,
        owner: str | None,
        start: datetime | None,
        end: datetime | None,
        group_by: str,
    ) -> list[dict[str, Any]]:
        """Summed tokens of assistant turns, by model or by day (UTC)."""
        if group_by == "model":
            key: Any = Message.model
        elif self.engine.dialect.name == "sqlite":
            key = func.strftime("%Y-%m-%d", Message.created_at)
        else:
            key = func.to_char(func.timezone("UTC", Message.created_at), "YYYY-MM-DD")
        query = (
            select(
                key.label("key"),
                func.count().label("messages"),
                func.coalesce(func.sum(Message.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(Message.output_tokens), 0).label("output_tokens"),
                func.coalesce(func.sum(cast(Message.usage_estimated, Integer)), 0).label(
                    "estimated"
                ),
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "assistant")
            .group_by(key)
            .order_by(key)
        )
        if owner is not None:
            query = query.where(Conversation.owner == owner)
        if start is not None:
            query = query.where(Message.created_at >= start)
        if end is not None:
            query = query.where(Message.created_at < end)
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [
            {
                group_by: row.key,
                "messages": row.messages,
                "input_tokens": int(row.input_tokens),
                "output_tokens": int(row.output_tokens),
                "estimated_messages": int(row.estimated),
            }
            for row in rows
        ]


_CONVERSATIONS = Table("conversations", Conversation.metadata)
_MESSAGES = Table("messages", Message.metadata)


# The statements of every turn, built once: building one costs more than running it (its
# cache key is computed on each new statement object).
_NEXT_SEQ = select(func.coalesce(func.max(_MESSAGES.c.seq), -1) + 1).where(
    _MESSAGES.c.conversation_id == bindparam("b_id")
)
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_INSERT_MESSAGES = insert(_MESSAGES)
_LOCK = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.owner == bindparam("b_owner"),
        or_(
            _CONVERSATIONS.c.locked_by.is_(None),
            _CONVERSATIONS.c.locked_at < bindparam("b_stale"),
        ),
    )
    .values(
        locked_by=bindparam("b_stream"),
        locked_at=bindparam("b_stamp"),
        updated_at=bindparam("b_stamp"),
        model=bindparam("b_model"),
    )
)
_RELEASE = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.locked_by == bindparam("b_stream"),
    )
    .values(locked_by=None, locked_at=None, updated_at=bindparam("b_stamp"))
)


def _store_reply(connection: Connection, row: dict[str, Any]) -> None:
    if row["seq"] is None:  # without the seq its turn reserved: the next free one
        row["seq"] = connection.execute(_NEXT_SEQ, {"b_id": row["conversation_id"]}).scalar_one()
    connection.execute(_INSERT_MESSAGES, [row])
    connection.execute(
        _RELEASE,
        {
            "b_id": row["conversation_id"],
            "b_stream": row["stream_id"],
            "b_stamp": row["created_at"],
        },
    )


def _encode_cursor(conversation: Conversation) -> str:
    raw = orjson.dumps([conversation.updated_at.isoformat(), conversation.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    from .errors import FieldProblem, InvalidField

    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, conversation_id = orjson.loads(raw)
        when = datetime.fromisoformat(stamp)
        # Only what this server could have written: a UTC time the databases can hold, and
        # an id of the well-formed kind (PostgreSQL refuses NUL in text, for one).
        when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
        if not isinstance(conversation_id, str) or not CONVERSATION_ID.match(conversation_id):
            raise ValueError(conversation_id)
        return when, conversation_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise InvalidField([FieldProblem("cursor", "is not a cursor this server gave")]) from None
