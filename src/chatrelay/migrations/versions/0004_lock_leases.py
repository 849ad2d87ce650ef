"""Conversation locks carry their instance's lease; instances without Redis renew one here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: a lock taken before this revision has no lease, and only its age frees it.
    op.add_column("conversations", sa.Column("lock_owner", sa.String(64), nullable=True))
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instances_name", "instances", ["name"])


def downgrade() -> None:
    op.drop_table("instances")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("lock_owner")
