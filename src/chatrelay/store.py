"""Conversations and messages in the database: every query the service needs, and no more.

The store knows nothing of HTTP or streams. Ownership is part of every read and write: a
conversation of another owner is, to the caller, a conversation that does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from sqlalchemy import (
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from .conversation_ids import STORED_ID_LENGTH
from .errors import ConversationBusy
from .events import Reply
from .group_commit import GroupCommit
from .tables import Conversation, Instance, Message

log = logging.getLogger("chatrelay.store")

# The end_reason of a reply while it is being generated (checkpointed as it goes), and of one
# whose instance died before its end (found when its conversation's lock is taken over).
GENERATING = "generating"
INTERRUPTED = "interrupted"

# What a conversation id looks like (ours are UUIDs; clients may choose their own).
CONVERSATION_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")  # \Z: no trailing newline
# What a stored one looks like: the same, in its owner's namespace (conversation_ids.py).
STORED_ID = re.compile(rf"\A[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{STORED_ID_LENGTH - 1}}}\Z")


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """Opaque and unguessable (122 random bits)."""
    return str(uuid.uuid4())


@dataclass(slots=True)
class Draft:
    """A reply as far as it got, for a checkpoint (`Store.checkpoint`)."""

    conversation_id: str
    stream_id: str
    seq: int | None  # the seq its turn reserved
    model: str | None
    content: str
    thinking: str | None
    started: bool  # an earlier checkpoint of it is stored: only an update is left to do


class Leases(Protocol):
    """Whose lock is whose: this instance's lease, and whether another's still lives
    (`leases.py`: the instance's Redis key, or its row in the database)."""

    instance: str

    async def alive(self, instance: str) -> bool: ...


class ConversationGone(Exception):
    """The conversation was deleted while its reply was being generated."""


class _Held(ConversationBusy):
    """Busy, and by whom: what decides whether the lock may be taken over."""

    def __init__(
        self,
        conversation_id: str,
        stream_id: str,
        owner: str | None,
        locked_at: datetime | None,
        model: str | None,
    ) -> None:
        super().__init__(conversation_id)
        self.conversation_id = conversation_id
        self.stream_id = stream_id
        self.owner = owner
        self.locked_at = locked_at
        self.model = model


@dataclass(slots=True)
class Page:
    conversations: list[Conversation]
    next_cursor: str | None


class Store:
    """Async access to conversations; one short transaction per call."""

    def __init__(
        self, engine: AsyncEngine, lock_timeout_s: float = 600.0, leases: Leases | None = None
    ) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._lock_timeout = timedelta(seconds=lock_timeout_s)
        self._writes = GroupCommit(engine)
        # Without leases (the CLI) a lock is only ever freed by its age.
        self.leases = leases
        # PostgreSQL instances may run on several hosts: their heartbeats use its clock.
        self._db_clock = engine.dialect.name == "postgresql"
        self._orphans: set[asyncio.Task[None]] = set()  # unlocking turns whose caller left

    async def close(self) -> None:
        if self._orphans:
            await asyncio.wait(self._orphans)
        await self._writes.aclose()
        await self.engine.dispose()

    # -- conversations ---------------------------------------------------------------------
    async def get(self, conversation_id: str, owner: str | None) -> Conversation | None:
        """The conversation with its messages; `owner=None` sees every owner's (admin).

        A lock whose instance is gone is freed first, its reply marked `interrupted`, so a
        reader never sees a reply as `generating` that nobody generates any more.
        """
        if not STORED_ID.match(conversation_id):
            return None  # no such id can exist (and PostgreSQL refuses NUL in text)
        found = await self._load(conversation_id, owner)
        if found is None or found.locked_by is None or self.leases is None:
            return found
        held = _Held(
            conversation_id, found.locked_by, found.lock_owner, found.locked_at, found.model
        )
        if not await self._dead(held):
            return found
        await self._free(held)
        return await self._load(conversation_id, owner)

    async def _load(self, conversation_id: str, owner: str | None) -> Conversation | None:
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
        if not STORED_ID.match(conversation_id):
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
        stream holds the lock, unless that lock is dead: its instance's lease is gone (the
        instance died or restarted), or it is older than the lock timeout. A dead lock is
        taken over, its reply stored as far as it got with `end_reason: interrupted` (an
        empty one if it got nowhere), so the history never has two user turns in a row.
        """
        stamp = now()
        lease = self.leases.instance if self.leases is not None else None

        def write(connection: Connection, alone: bool, dead: _Held | None = None) -> int:
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
                            "lock_owner": lease,
                        },
                    )
                except IntegrityError:
                    if not alone:  # PostgreSQL has aborted the shared transaction: retry alone
                        raise
                    raise ConversationBusy(conversation_id) from None
                seq = 0
            else:
                params = {
                    "b_id": conversation_id,
                    "b_owner": owner,
                    "b_stream": stream_id,
                    "b_stamp": stamp,
                    "b_model": model,
                    "b_lease": lease,
                }
                if dead is None:
                    locked = connection.execute(_LOCK, params)
                else:  # only if it is still that dead stream's lock
                    locked = connection.execute(_TAKE_OVER, {**params, "b_old": dead.stream_id})
                if locked.rowcount != 1:
                    if dead is not None:
                        raise ConversationBusy(conversation_id)
                    raise _holder(connection, conversation_id, owner)
                if dead is not None:
                    _interrupt(connection, dead, stamp)
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
        try:
            return await self._lock(write, conversation_id, stream_id, model)
        except _Held as busy:
            held = busy
        if not await self._dead(held):
            raise held
        log.info(
            "conversation %s: the lock of stream %s is dead (instance %s gone): taken over",
            conversation_id,
            held.stream_id,
            held.owner,
            extra={"conversation_id": conversation_id, "stream_id": stream_id},
        )
        return await self._lock(
            lambda connection, alone: write(connection, alone, held),
            conversation_id,
            stream_id,
            model,
        )

    async def _lock(
        self,
        write: Callable[[Connection, bool], int],
        conversation_id: str,
        stream_id: str,
        model: str,
    ) -> int:
        """Run a turn's locking write. A caller that leaves meanwhile (a client gone, a
        request cut) does not stop it: it may commit all the same, and then nobody would ever
        end that turn, so once it has committed it is ended here, as an abandoned one."""
        writing = asyncio.ensure_future(self._writes.run(write))
        try:
            return await asyncio.shield(writing)
        except asyncio.CancelledError:
            writing.add_done_callback(
                lambda done: self._orphaned(done, conversation_id, stream_id, model)
            )
            raise

    def _orphaned(
        self, writing: asyncio.Future[int], conversation_id: str, stream_id: str, model: str
    ) -> None:
        if writing.cancelled() or writing.exception() is not None:
            return  # nothing was locked
        unlocking = asyncio.ensure_future(self.abandon_turn(conversation_id, stream_id, model))
        self._orphans.add(unlocking)
        unlocking.add_done_callback(self._unlocked)

    def _unlocked(self, unlocking: asyncio.Task[None]) -> None:
        self._orphans.discard(unlocking)
        if not unlocking.cancelled() and (error := unlocking.exception()) is not None:
            log.error("could not unlock an abandoned turn: %r", error)

    async def _dead(self, held: _Held) -> bool:
        """Whether nobody will ever end the turn holding this lock."""
        if held.locked_at is not None and held.locked_at < now() - self._lock_timeout:
            return True
        if held.owner is None or self.leases is None:
            return False  # a lock of before leases (revision 0004): only its age frees it
        if held.owner == self.leases.instance:
            return False  # this very process holds it: its stream ends it
        return not await self.leases.alive(held.owner)

    async def _free(self, held: _Held) -> None:
        """Unlock a dead lock (if still that one), its reply marked interrupted."""
        stamp = now()

        def write(connection: Connection, alone: bool) -> None:
            freed = connection.execute(
                _UNLOCK_DEAD, {"b_id": held.conversation_id, "b_old": held.stream_id}
            )
            if freed.rowcount == 1:
                _interrupt(connection, held, stamp)

        await self._writes.run(write)

    async def abandon_turn(self, conversation_id: str, stream_id: str, model: str | None) -> None:
        """Unlock a turn whose reply could not be stored: it keeps what its checkpoints
        stored, marked `interrupted` (or an empty interrupted reply)."""
        await self._free(_Held(conversation_id, stream_id, None, None, model))

    async def checkpoint(self, drafts: list[Draft]) -> None:
        """Store replies as far as they got (`end_reason: generating`), all in one write.

        The first checkpoint of a reply inserts it, at its reserved seq, only while its
        stream still holds the lock (not after its end, nor after a takeover); later ones
        update it while it is still `generating`. Two statements whatever the number of
        replies (executemany); alone (after a failed batch), one reply at a time.
        """
        stamp = now()
        updates = [
            {
                "b_id": draft.conversation_id,
                "b_stream": draft.stream_id,
                "b_content": draft.content,
                "b_thinking": draft.thinking,
            }
            for draft in drafts
        ]

        def write(connection: Connection, alone: bool) -> None:
            if not alone:
                started = [params for params, d in zip(updates, drafts, strict=True) if d.started]
                if started:
                    connection.execute(_CHECKPOINT, started)
                first = [
                    {
                        "b_id": new_id(),
                        "b_conversation_id": d.conversation_id,
                        "b_seq": d.seq,
                        "b_content": d.content,
                        "b_model": d.model,
                        "b_stream_id": d.stream_id,
                        "b_thinking": d.thinking,
                        "b_created_at": stamp,
                    }
                    for d in drafts
                    if not d.started
                ]
                if first:
                    connection.execute(_INSERT_CHECKPOINT, first)
                return
            for draft, params in zip(drafts, updates, strict=True):
                if connection.execute(_CHECKPOINT, params).rowcount:
                    continue
                holder = connection.execute(_HOLDER, {"b_id": draft.conversation_id}).first()
                if holder is None or holder.locked_by != draft.stream_id:
                    continue  # ended, taken over, or deleted meanwhile
                row = {
                    "id": new_id(),
                    "conversation_id": draft.conversation_id,
                    "seq": None if alone else draft.seq,
                    "role": "assistant",
                    "content": draft.content,
                    "model": draft.model,
                    "stream_id": draft.stream_id,
                    "end_reason": GENERATING,
                    "usage_estimated": False,
                    "thinking": draft.thinking,
                    "created_at": stamp,
                }
                if row["seq"] is None:
                    row["seq"] = connection.execute(
                        _NEXT_SEQ, {"b_id": draft.conversation_id}
                    ).scalar_one()
                connection.execute(_INSERT_MESSAGES, [row])

        await self._writes.run(write)

    async def end_turn(
        self,
        conversation_id: str,
        reply: Reply,
        seq: int | None = None,
        *,
        checkpointed: bool = True,
    ) -> None:
        """Store the assistant's reply (complete or not) and release the lock.

        `seq` is what `begin_turn` returned (saves a query); without it, the next free one.
        The reply is written over its checkpoint (or an interrupted mark); `checkpointed=False`
        says no checkpoint of it was ever written, which saves looking for one.
        """
        row = {
            "id": new_id(),
            "seq": seq,
            "conversation_id": conversation_id,
            "role": "assistant",
            "content": reply.content_blocks(),
            "model": reply.model,
            "stream_id": reply.stream_id,
            "end_reason": reply.end_reason,
            "stop_reason": reply.stop_reason,
            "error_code": reply.error_code,
            "error_message": reply.error_message,
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_read_tokens": reply.cache_read_tokens,
            "cache_write_tokens": reply.cache_write_tokens,
            "usage_estimated": reply.usage_estimated,
            "cost_usd": reply.cost_usd,
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
            _store_reply(connection, row, alone, checkpointed)

        # The write goes on if the caller is cancelled (a stream's end must be recorded).
        await asyncio.shield(self._writes.run(write))

    async def release(self, conversation_id: str, stream_id: str) -> None:
        """Release the lock without a reply (the turn never reached a provider)."""
        async with self._session.begin() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.locked_by == stream_id)
                .values(locked_by=None, locked_at=None, lock_owner=None)
            )

    # -- instances (without Redis): the leases conversation locks carry ----------------------
    async def register_instance(self, instance: str, name: str | None) -> None:
        """This instance's row; a row of the same name is a previous life (its locks are
        dead from now on), rows silent for a day are gone for good."""
        stamp = now()

        def write(connection: Connection, alone: bool) -> None:
            if name is not None:
                connection.execute(delete(_INSTANCES).where(_INSTANCES.c.name == name))
            connection.execute(
                delete(_INSTANCES).where(_INSTANCES.c.heartbeat_at < stamp - timedelta(days=1))
            )
            self._insert_instance(connection, instance, name, stamp)

        await self._writes.run(write)

    async def renew_instance(self, instance: str, name: str | None) -> None:
        """The heartbeat: one small update (the row comes back if it was deleted)."""
        stamp = now()

        def write(connection: Connection, alone: bool) -> None:
            if self._db_clock:
                renewed = connection.execute(_RENEW_BY_DB_CLOCK, {"b_id": instance})
            else:
                renewed = connection.execute(_RENEW, {"b_id": instance, "b_stamp": stamp})
            if renewed.rowcount == 0:
                log.warning(
                    "instance %s: its lease row was gone (a second instance named %r?)",
                    instance,
                    name,
                )
                self._insert_instance(connection, instance, name, stamp)

        await self._writes.run(write)

    def _insert_instance(
        self, connection: Connection, instance: str, name: str | None, stamp: datetime
    ) -> None:
        row = {"id": instance, "name": name, "started_at": stamp, "heartbeat_at": stamp}
        statement = _INSERT_INSTANCE
        if self._db_clock:
            statement = statement.values(heartbeat_at=func.now())
        connection.execute(statement, row)

    async def instance_alive(self, instance: str, lease_s: float) -> bool:
        """Whether `instance` has renewed its row within the last `lease_s` seconds."""
        async with self._session() as session:
            if self._db_clock:
                found = (await session.execute(_HEARTBEAT_BY_DB_CLOCK, {"b_id": instance})).first()
                if found is None:
                    return False
                heartbeat, clock = found
            else:
                heartbeat = (
                    await session.execute(_HEARTBEAT, {"b_id": instance})
                ).scalar_one_or_none()
                clock = now()
        return heartbeat is not None and heartbeat >= clock - timedelta(seconds=lease_s)

    async def forget_instance(self, instance: str) -> None:
        """On a clean stop: this instance's locks are dead at once."""
        await self._writes.run(
            lambda connection, alone: connection.execute(
                delete(_INSTANCES).where(_INSTANCES.c.id == instance)
            )
        )

    # -- usage ------------------------------------------------------------------------------
    async def usage(
        self,
        owner: str | None,
        start: datetime | None,
        end: datetime | None,
        group_by: str,
    ) -> list[dict[str, Any]]:
        """Summed tokens and cost of assistant turns, by model, day (UTC), API key (`key:`
        owners) or user (`user:` owners); the cache counts are parts of the input tokens. A
        group's cost is None when none of its replies has a known cost."""
        prefix = {"key": "key:", "user": "user:"}.get(group_by)
        if group_by == "model":
            key: Any = Message.model
        elif prefix is not None:
            key = Conversation.owner
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
                func.coalesce(func.sum(Message.cache_read_tokens), 0).label("cache_read"),
                func.coalesce(func.sum(Message.cache_write_tokens), 0).label("cache_write"),
                func.coalesce(func.sum(cast(Message.usage_estimated, Integer)), 0).label(
                    "estimated"
                ),
                func.sum(Message.cost_usd).label("cost"),
                (func.count() - func.count(Message.cost_usd)).label("unpriced"),
            )
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.role == "assistant")
            .group_by(key)
            .order_by(key)
        )
        if owner is not None:
            query = query.where(Conversation.owner == owner)
        if prefix is not None:
            query = query.where(Conversation.owner.startswith(prefix, autoescape=True))
        if start is not None:
            query = query.where(Message.created_at >= start)
        if end is not None:
            query = query.where(Message.created_at < end)
        async with self._session() as session:
            rows = (await session.execute(query)).all()
        return [
            {
                group_by: row.key.removeprefix(prefix) if prefix else row.key,
                "messages": row.messages,
                "input_tokens": int(row.input_tokens),
                "output_tokens": int(row.output_tokens),
                "cache_read_tokens": int(row.cache_read),
                "cache_write_tokens": int(row.cache_write),
                "estimated_messages": int(row.estimated),
                "cost_usd": None if row.cost is None else round(float(row.cost), 9),
                "unpriced_messages": int(row.unpriced),
            }
            for row in rows
        ]


_CONVERSATIONS = Table("conversations", Conversation.metadata)
_MESSAGES = Table("messages", Message.metadata)
_INSTANCES = Table("instances", Instance.metadata)


# The statements of every turn, built once: building one costs more than running it (its
# cache key is computed on each new statement object).
_NEXT_SEQ = select(func.coalesce(func.max(_MESSAGES.c.seq), -1) + 1).where(
    _MESSAGES.c.conversation_id == bindparam("b_id")
)
_INSERT_CONVERSATION = insert(_CONVERSATIONS)
_INSERT_MESSAGES = insert(_MESSAGES)
_LOCK_VALUES: dict[str, Any] = {
    "locked_by": bindparam("b_stream"),
    "locked_at": bindparam("b_stamp"),
    "lock_owner": bindparam("b_lease"),
    "updated_at": bindparam("b_stamp"),
    "model": bindparam("b_model"),
}
_LOCK = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.owner == bindparam("b_owner"),
        _CONVERSATIONS.c.locked_by.is_(None),
    )
    .values(_LOCK_VALUES)
)
_TAKE_OVER = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.owner == bindparam("b_owner"),
        _CONVERSATIONS.c.locked_by == bindparam("b_old"),
    )
    .values(_LOCK_VALUES)
)
_HOLDER = select(
    _CONVERSATIONS.c.locked_by,
    _CONVERSATIONS.c.lock_owner,
    _CONVERSATIONS.c.locked_at,
    _CONVERSATIONS.c.model,
).where(_CONVERSATIONS.c.id == bindparam("b_id"))
_UNLOCK = {"locked_by": None, "locked_at": None, "lock_owner": None}
_UNLOCK_DEAD = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.locked_by == bindparam("b_old"),
    )
    .values(_UNLOCK)
)
_RELEASE = (
    update(_CONVERSATIONS)
    .where(
        _CONVERSATIONS.c.id == bindparam("b_id"),
        _CONVERSATIONS.c.locked_by == bindparam("b_stream"),
    )
    .values({**_UNLOCK, "updated_at": bindparam("b_stamp")})
)
# A stream's reply: the one assistant message of its turn with an end reason (assistant turns
# the client sent along are stored with the stream's id too, but without an end reason).
_OF_STREAM = and_(
    _MESSAGES.c.conversation_id == bindparam("b_id"),
    _MESSAGES.c.stream_id == bindparam("b_stream"),
    _MESSAGES.c.role == "assistant",
    _MESSAGES.c.end_reason.is_not(None),
)
_REPLY_OF = select(_MESSAGES.c.id, _MESSAGES.c.end_reason).where(_OF_STREAM)
_CHECKPOINT = (
    update(_MESSAGES)
    .where(_OF_STREAM, _MESSAGES.c.end_reason == GENERATING)
    .values(content=bindparam("b_content"), thinking=bindparam("b_thinking"))
)
# A reply's first checkpoint, only while its stream holds the lock.
_CHECKPOINT_BOUND = (
    "id", "conversation_id", "seq", "content", "model", "stream_id", "thinking", "created_at",
)  # fmt: skip
_INSERT_CHECKPOINT = insert(_MESSAGES).from_select(
    [*_CHECKPOINT_BOUND, "role", "end_reason", "usage_estimated"],
    select(
        *(bindparam(f"b_{name}", type_=_MESSAGES.c[name].type) for name in _CHECKPOINT_BOUND),
        literal("assistant", _MESSAGES.c.role.type),
        literal(GENERATING, _MESSAGES.c.end_reason.type),
        literal(False, _MESSAGES.c.usage_estimated.type),
    ).where(
        exists().where(
            _CONVERSATIONS.c.id == bindparam("b_conversation_id"),
            _CONVERSATIONS.c.locked_by == bindparam("b_stream_id"),
        )
    ),
)
_INTERRUPT = (
    update(_MESSAGES)
    .where(_MESSAGES.c.id == bindparam("b_message"), _MESSAGES.c.end_reason == GENERATING)
    .values(end_reason=INTERRUPTED)
)
# What a reply's end writes over its checkpoint (or its interrupted mark, if it was thought
# dead but was only late).
_REPLY_FIELDS = (
    "content",
    "model",
    "end_reason",
    "stop_reason",
    "error_code",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "usage_estimated",
    "cost_usd",
    "ttft_ms",
    "duration_ms",
    "thinking",
    "created_at",
)
_FINISH = (
    update(_MESSAGES)
    .where(_OF_STREAM)
    .values({name: bindparam(f"b_{name}") for name in _REPLY_FIELDS})
)
_EXISTS = select(func.count()).where(_CONVERSATIONS.c.id == bindparam("b_id"))
_INSERT_INSTANCE = insert(_INSTANCES)
_RENEW = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("b_id"))
    .values(heartbeat_at=bindparam("b_stamp"))
)
_RENEW_BY_DB_CLOCK = (
    update(_INSTANCES).where(_INSTANCES.c.id == bindparam("b_id")).values(heartbeat_at=func.now())
)
_HEARTBEAT = select(_INSTANCES.c.heartbeat_at).where(_INSTANCES.c.id == bindparam("b_id"))
_HEARTBEAT_BY_DB_CLOCK = select(_INSTANCES.c.heartbeat_at, func.now()).where(
    _INSTANCES.c.id == bindparam("b_id")
)


def _holder(connection: Connection, conversation_id: str, owner: str) -> ConversationBusy:
    """Why a lock could not be taken: who holds it (or plain busy: gone, or not `owner`'s)."""
    found = connection.execute(_HOLDER, {"b_id": conversation_id}).first()
    if found is None or found.locked_by is None:
        return ConversationBusy(conversation_id)  # released meanwhile: the client sends again
    return _Held(conversation_id, found.locked_by, found.lock_owner, found.locked_at, found.model)


def _interrupt(connection: Connection, dead: _Held, stamp: datetime) -> None:
    """The dead stream's reply, as far as its checkpoints got, marked interrupted; or an
    empty interrupted reply if none was stored (never two user turns in a row)."""
    found = connection.execute(
        _REPLY_OF, {"b_id": dead.conversation_id, "b_stream": dead.stream_id}
    ).first()
    if found is not None:
        connection.execute(_INTERRUPT, {"b_message": found.id})
        return
    seq = connection.execute(_NEXT_SEQ, {"b_id": dead.conversation_id}).scalar_one()
    connection.execute(
        _INSERT_MESSAGES,
        [
            {
                "id": new_id(),
                "conversation_id": dead.conversation_id,
                "seq": seq,
                "role": "assistant",
                "content": "",
                "model": dead.model,
                "stream_id": dead.stream_id,
                "end_reason": INTERRUPTED,
                "usage_estimated": False,
                "created_at": stamp,
            }
        ],
    )


def _store_reply(
    connection: Connection, row: dict[str, Any], alone: bool = False, checkpointed: bool = True
) -> None:
    """The reply over its checkpoint if one is stored, else a new row; and the unlock.

    Without a checkpoint the insert goes straight to the reserved seq; if a row is there
    after all (a takeover's interrupted mark), the batch fails and alone it is updated.
    """
    params = {f"b_{name}": row[name] for name in _REPLY_FIELDS}
    params.update(b_id=row["conversation_id"], b_stream=row["stream_id"])
    if (not checkpointed and not alone) or connection.execute(_FINISH, params).rowcount == 0:
        if alone and not connection.execute(_EXISTS, {"b_id": row["conversation_id"]}).scalar():
            raise ConversationGone(row["conversation_id"])
        if row["seq"] is None:  # without the seq its turn reserved: the next free one
            row["seq"] = connection.execute(
                _NEXT_SEQ, {"b_id": row["conversation_id"]}
            ).scalar_one()
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
        if not isinstance(conversation_id, str) or not STORED_ID.match(conversation_id):
            raise ValueError(conversation_id)
        return when, conversation_id
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError):
        raise InvalidField([FieldProblem("cursor", "is not a cursor this server gave")]) from None
