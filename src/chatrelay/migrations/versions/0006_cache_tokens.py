"""A reply's prompt cache counts: input tokens read from and written to the cache.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: replies stored before this revision, and upstreams that report no cache.
    op.add_column("messages", sa.Column("cache_read_tokens", sa.Integer(), nullable=True))
    op.add_column("messages", sa.Column("cache_write_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("cache_write_tokens")
        batch.drop_column("cache_read_tokens")
