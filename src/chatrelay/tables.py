"""The database schema, as SQLAlchemy tables. Changes go through a new Alembic migration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .conversation_ids import STORED_ID_LENGTH


class UTCDateTime(TypeDecorator[datetime]):
    """Times stored in UTC and read back as aware datetimes, on SQLite too (it keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    """A chat: its owner, title and the messages in order."""

    __tablename__ = "conversations"

    # In its owner's namespace (conversation_ids.py): `{namespace}.{the client's id}`; a bare
    # id for a conversation stored before revision 0005.
    id: Mapped[str] = mapped_column(String(STORED_ID_LENGTH), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    title: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str | None] = mapped_column(String(200))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The stream replying right now, and since when: a second request waits for none (409).
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The lease of the instance holding the lock (its instance id): once that lease is gone
    # (the instance died, or restarted), the lock is taken over. None before revision 0004.
    lock_owner: Mapped[str | None] = mapped_column(String(64))

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        order_by="Message.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (Index("ix_conversations_owner_updated", "owner", "updated_at", "id"),)


class Message(Base):
    """One turn; an assistant turn also records how it was produced and how it ended."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[Any] = mapped_column(JSON)  # a string, or a list of content blocks
    model: Mapped[str | None] = mapped_column(String(200))
    stream_id: Mapped[str | None] = mapped_column(String(64))
    # Why an assistant turn ended: completed, error, disconnected, stopped; `generating` while
    # it is (checkpointed as it goes), `interrupted` when its instance died before its end.
    end_reason: Mapped[str | None] = mapped_column(String(20))
    stop_reason: Mapped[str | None] = mapped_column(String(40))
    error_code: Mapped[str | None] = mapped_column(String(40))
    # What the stream's error frame told the user (safe to show); None before revision 0003.
    error_message: Mapped[str | None] = mapped_column(Text)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    # Of input_tokens, those read from and written to the prompt cache (revision 0006).
    cache_read_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    # US dollars, from its usage at its model's price (revision 0007); None: no price known.
    cost_usd: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    thinking: Mapped[str | None] = mapped_column(Text)

    conversation: Mapped[Conversation] = relationship(back_populates="messages")

    __table_args__ = (Index("uq_messages_conversation_seq", "conversation_id", "seq", unique=True),)


class Instance(Base):
    """A running `chatrelay serve` without Redis: the lease its conversation locks carry.

    Renewed every few seconds; a lock whose instance row is gone (the instance restarted
    under the same name, or stopped) or silent past the lease is taken over. With Redis the
    lease is the instance's Redis key instead, and this table stays empty.
    """

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # per boot (random)
    name: Mapped[str | None] = mapped_column(String(200), index=True)  # stable: host:port
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A server-to-server key. Only a hash of the secret is kept: it cannot be shown again."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)  # public part of the key
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    daily_tokens: Mapped[int | None] = mapped_column(Integer)
    concurrency: Mapped[int | None] = mapped_column(Integer)
    # Budgets in US dollars per UTC day and month (revision 0007); None: the kind's default.
    daily_usd: Mapped[float | None] = mapped_column(Float)
    monthly_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
