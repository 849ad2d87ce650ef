"""Conversation ids room for their owner's namespace: `{namespace}.{the client's id}`.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

`conversations.id` and `messages.conversation_id` (the only columns holding a conversation
id) grow from 100 to 111 characters (conversation_ids.py). Rows already stored keep their
bare id: their owners still find them by it.

PostgreSQL alters the two columns in place. SQLite enforces no length, but its schema says
one: both tables are rebuilt under new names and renamed back, the new messages table
referring to the new conversations table, so that dropping the old conversations table
(foreign keys on) cascades into no message.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

WIDE = 111  # conversation_ids.STORED_ID_LENGTH when this revision was written
NARROW = 100


def upgrade() -> None:
    _resize(WIDE)


def downgrade() -> None:
    # Fails on PostgreSQL if a stored id is longer than 100 characters (a namespaced one).
    _resize(NARROW)


def _resize(length: int) -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(length)
        return
    op.alter_column(
        "messages",
        "conversation_id",
        type_=sa.String(length),
        existing_nullable=False,
    )
    op.alter_column("conversations", "id", type_=sa.String(length), existing_nullable=False)


def _rebuild_sqlite(length: int) -> None:
    op.create_table(
        "_conversations_new",
        sa.Column("id", sa.String(length), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_by", sa.String(64), nullable=True),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lock_owner", sa.String(64), nullable=True),
    )
    op.create_table(
        "_messages_new",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(length),
            sa.ForeignKey("_conversations_new.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("stream_id", sa.String(64), nullable=True),
        sa.Column("end_reason", sa.String(20), nullable=True),
        sa.Column("stop_reason", sa.String(40), nullable=True),
        sa.Column("error_code", sa.String(40), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("usage_estimated", sa.Boolean(), nullable=False),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("thinking", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
    )
    conversation_columns = (
        "id, owner, title, model, metadata, created_at, updated_at, locked_by, locked_at,"
        " lock_owner"
    )
    message_columns = (
        "id, conversation_id, seq, role, content, model, stream_id, end_reason, stop_reason,"
        " error_code, input_tokens, output_tokens, usage_estimated, ttft_ms, duration_ms,"
        " created_at, thinking, error_message"
    )
    op.execute(
        f"INSERT INTO _conversations_new ({conversation_columns})"
        f" SELECT {conversation_columns} FROM conversations"
    )
    op.execute(
        f"INSERT INTO _messages_new ({message_columns}) SELECT {message_columns} FROM messages"
    )
    op.drop_table("messages")  # first: nothing refers to it
    op.drop_table("conversations")  # its messages are gone: nothing cascades
    # Renaming a table rewrites the references to it: _messages_new's now name conversations.
    op.rename_table("_conversations_new", "conversations")
    op.rename_table("_messages_new", "messages")
    op.create_index(
        "ix_conversations_owner_updated", "conversations", ["owner", "updated_at", "id"]
    )
    op.create_index("ix_messages_conversation_id", "messages", ["conversation_id"])
    op.create_index("ix_messages_created_at", "messages", ["created_at"])
    op.create_index(
        "uq_messages_conversation_seq", "messages", ["conversation_id", "seq"], unique=True
    )
