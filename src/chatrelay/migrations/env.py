"""Alembic environment: migrations run on the connection chatrelay passes in (db.upgrade)."""

from __future__ import annotations

from alembic import context

from chatrelay.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - chatrelay always passes a connection
    raise RuntimeError("run migrations through `chatrelay db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
