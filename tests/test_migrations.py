"""Schema migrations on SQLite and PostgreSQL: from empty, step by step, down and up, no drift;
and the DATABASE_URL forms the service accepts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, func, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from chatrelay.db import alembic_config, create_engine, current_revision, normalize_url, upgrade
from chatrelay.errors import ConfigError
from chatrelay.events import Reply
from chatrelay.store import Store
from chatrelay.tables import Base

from .conftest import POSTGRES_URL, postgres_database

SCRIPTS = ScriptDirectory.from_config(alembic_config())
HEAD = SCRIPTS.get_current_head()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database (nothing migrated yet)."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def revisions_in_order() -> list[str]:
    """Every revision from the first to head (the history is linear)."""
    assert len(SCRIPTS.get_heads()) == 1, "the migrations have more than one head"
    return [script.revision for script in reversed(list(SCRIPTS.walk_revisions("base", "heads")))]


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def schema(engine: AsyncEngine) -> dict[str, Any]:
    """Tables, their columns and indexes, as the database reports them."""

    def read(sync: Connection) -> dict[str, Any]:
        inspector = inspect(sync)
        return {
            name: {
                "columns": sorted(
                    (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)
                ),
                "indexes": sorted(
                    (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(name)
                ),
            }
            for name in inspector.get_table_names()
        }

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))


async def drift(engine: AsyncEngine) -> list[Any]:
    """What `alembic check` would report: the models against the migrated database."""

    def compare(sync: Connection) -> list[Any]:
        context = MigrationContext.configure(sync, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


# -- rows written with the reflected tables, so they fit whatever revision the database is at ---

STAMP = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
CONVERSATION = {
    "owner": "alice",
    "title": "Written at an older revision",
    "model": "mock",
    "metadata": {"kept": True},
    "created_at": STAMP,
    "updated_at": STAMP,
    "locked_by": None,
    "locked_at": None,
}
MESSAGE = {
    "seq": 0,
    "role": "user",
    "content": [{"type": "text", "text": "still here?"}],
    "usage_estimated": False,
    "created_at": STAMP,
}


async def insert_rows(engine: AsyncEngine, tag: str) -> None:
    """A conversation `conv-{tag}` with one message, in the columns the database has now."""

    def insert(sync: Connection) -> None:
        metadata = MetaData()
        conversations = Table("conversations", metadata, autoload_with=sync)
        messages = Table("messages", metadata, autoload_with=sync)
        row = {"id": f"conv-{tag}", **CONVERSATION}
        sync.execute(
            conversations.insert().values({k: v for k, v in row.items() if k in conversations.c})
        )
        message = {"id": f"msg-{tag}", "conversation_id": f"conv-{tag}", **MESSAGE}
        sync.execute(
            messages.insert().values({k: v for k, v in message.items() if k in messages.c})
        )

    async with engine.begin() as connection:
        await connection.run_sync(insert)


# -- upgrade ----------------------------------------------------------------------------------


async def test_upgrade_from_an_empty_database_creates_the_tables(engine: AsyncEngine) -> None:
    assert await tables(engine) == set()
    assert await current_revision(engine) is None

    await upgrade(engine)

    assert await current_revision(engine) == HEAD
    found = await schema(engine)
    assert {"conversations", "messages"} <= set(Base.metadata.tables)
    assert set(found) == {"alembic_version", *Base.metadata.tables}
    for name in Base.metadata.tables:
        model = Base.metadata.tables[name]
        columns = {column[0]: column[2] for column in found[name]["columns"]}
        assert columns == {c.name: c.nullable for c in model.columns}, name
        indexes = {index[0]: (index[1], index[2]) for index in found[name]["indexes"]}
        assert indexes == {
            i.name: (tuple(c.name for c in i.columns), bool(i.unique)) for i in model.indexes
        }, name
    async with engine.connect() as connection:
        foreign_keys = await connection.run_sync(
            lambda sync: inspect(sync).get_foreign_keys("messages")
        )
    [foreign_key] = foreign_keys
    assert foreign_key["referred_table"] == "conversations"
    assert foreign_key["constrained_columns"] == ["conversation_id"]
    assert (foreign_key.get("options") or {}).get("ondelete", "").upper() == "CASCADE"


async def test_upgrading_twice_is_a_no_op(engine: AsyncEngine) -> None:
    await upgrade(engine)
    await insert_rows(engine, "before")
    before = await schema(engine)

    await upgrade(engine)

    assert await current_revision(engine) == HEAD
    assert await schema(engine) == before
    async with engine.connect() as connection:
        versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
        ids = (await connection.execute(text("SELECT id FROM conversations"))).scalars().all()
    assert [tuple(v) for v in versions] == [(HEAD,)]
    assert ids == ["conv-before"]


async def test_every_revision_upgrades_from_the_previous_one_keeping_the_data(
    engine: AsyncEngine,
) -> None:
    revisions = revisions_in_order()
    assert revisions[-1] == HEAD
    written: list[str] = []
    for revision in revisions:
        await upgrade(engine, revision)
        assert await current_revision(engine) == revision
        async with engine.connect() as connection:
            for tag in written:  # what earlier revisions held is all still there
                found = await connection.execute(
                    text("SELECT count(*) FROM messages WHERE conversation_id = :cid"),
                    {"cid": f"conv-{tag}"},
                )
                assert found.scalar_one() == 1, (revision, tag)
        if {"conversations", "messages"} <= await tables(engine):
            await insert_rows(engine, revision)
            written.append(revision)
    assert written, "no revision created the conversations and messages tables"

    # At head, the models read every row, whichever revision wrote it.
    store = Store(engine)
    for tag in written:
        stored = await store.get(f"conv-{tag}", "alice")
        assert stored is not None, tag
        assert stored.created_at == STAMP
        assert [m.content for m in stored.messages] == [MESSAGE["content"]]
    # And the service works on the migrated database.
    await store.begin_turn(f"conv-{written[0]}", "alice", "s1", [], "t", "mock", create=False)
    await store.end_turn(f"conv-{written[0]}", Reply("yes", "mock", "s1", "completed"))
    stored = await store.get(f"conv-{written[0]}", "alice")
    assert stored is not None and [m.seq for m in stored.messages] == [0, 1]


async def test_downgrade_to_base_and_back_up(engine: AsyncEngine) -> None:
    await upgrade(engine)
    await insert_rows(engine, "old")

    await downgrade(engine, "base")
    assert await current_revision(engine) is None
    assert await tables(engine) <= {"alembic_version"}

    await upgrade(engine)
    assert await current_revision(engine) == HEAD
    assert {"conversations", "messages"} <= await tables(engine)
    assert await drift(engine) == []
    await insert_rows(engine, "new")
    async with engine.connect() as connection:
        ids = await connection.execute(select(func.count()).select_from(text("conversations")))
        assert ids.scalar_one() == 1


async def test_the_migrations_match_the_models_with_no_drift(engine: AsyncEngine) -> None:
    """`alembic check`: a model change without its migration fails here."""
    await upgrade(engine)
    assert await drift(engine) == []


async def test_two_instances_upgrading_a_fresh_postgresql_database_at_once_both_succeed() -> None:
    async with postgres_database() as url:
        engines = [create_engine(url) for _ in range(3)]
        try:
            await asyncio.gather(*(upgrade(engine) for engine in engines))
            assert await current_revision(engines[0]) == HEAD
            assert {"conversations", "messages"} <= await tables(engines[0])
            assert await drift(engines[0]) == []
        finally:
            for engine in engines:
                await engine.dispose()


# -- DATABASE_URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        (
            "postgresql://u:p@db.example.com:6543/app",
            "postgresql+asyncpg://u:p@db.example.com:6543/app",
        ),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+asyncpg://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgres://u:p@h/db?sslmode=require", "postgresql+asyncpg://u:p@h/db?ssl=require"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////var/data/x.db", "sqlite+aiosqlite:////var/data/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_normalize_url_picks_the_async_driver(given: str, normalized: str) -> None:
    assert normalize_url(given) == normalized


def test_an_unsupported_database_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as refused:
        normalize_url("mysql://app:hunter2@db.example.com/app")
    assert "mysql" in refused.value.message
    assert "DATABASE_URL" in refused.value.message
    assert "hunter2" not in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@db.example.com:notaport/app",
        "postgresql//app:hunter2@db.example.com/app",
        "://app:hunter2@db.example.com/app",
        "app:hunter2@db.example.com",
    ],
)
def test_an_unparseable_url_is_a_config_error_that_never_shows_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        normalize_url(url)
    assert "DATABASE_URL" in refused.value.message
    assert "hunter2" not in refused.value.message
    assert "hunter2" not in str(refused.value)


async def test_a_paas_url_with_sslmode_connects() -> None:
    """Render, Neon, Supabase... hand out `postgres://...?sslmode=require` URLs."""
    engine = create_engine(f"{POSTGRES_URL}?sslmode=disable")
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


def test_the_head_constant_is_alembics_head() -> None:
    """db.HEAD lets a started server skip loading Alembic; it must name the newest migration."""
    from alembic.script import ScriptDirectory

    from chatrelay.db import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD
