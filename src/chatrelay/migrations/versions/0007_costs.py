"""Money: a reply's cost in US dollars, and per-key budgets in dollars per day and month.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: replies stored before this revision, and models without a price, have no
    # known cost (null, never 0).
    op.add_column("messages", sa.Column("cost_usd", sa.Float(), nullable=True))
    # Nullable: a key without its own budget has its kind's (CHATRELAY_LIMITS_API_KEY).
    op.add_column("api_keys", sa.Column("daily_usd", sa.Float(), nullable=True))
    op.add_column("api_keys", sa.Column("monthly_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("monthly_usd")
        batch.drop_column("daily_usd")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("cost_usd")
