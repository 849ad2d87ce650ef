"""The database: URL normalisation, the async engine, and schema migrations at startup.

SQLite (embedded, the default) and PostgreSQL are both served through SQLAlchemy's async
engine. PaaS hand out `postgres://` or `postgresql://` URLs; they are normalised to the
asyncpg driver. Migrations are Alembic's, applied programmatically (`upgrade()`), and also by
`chatrelay db upgrade`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    """`postgres://` / `postgresql://` -> asyncpg; `sqlite://` -> aiosqlite; others refused."""
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"DATABASE_URL is not a database URL: {_redacted(url)}") from None
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
        # PaaS URLs carry libpq's `sslmode`; asyncpg takes the same values as `ssl`.
        if "sslmode" in parsed.query:
            query = dict(parsed.query)
            query["ssl"] = query.pop("sslmode")
            parsed = parsed.set(query=query)
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    else:
        raise ConfigError(
            f"DATABASE_URL: unsupported database {backend!r}; use sqlite or postgresql"
        )
    return parsed.render_as_string(hide_password=False)


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable>"


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite database file (relative ones are under the working
    directory); None for PostgreSQL and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).absolute()


def describe_url(url: str) -> str:
    """The URL to show a person: never a password, and a SQLite file's absolute path."""
    parsed = make_url(normalize_url(url))
    if (path := sqlite_file(url)) is not None:
        parsed = parsed.set(database=str(path))
    if any(name.lower() == "password" for name in parsed.query):
        parsed = parsed.set(
            query={k: "***" if k.lower() == "password" else v for k, v in parsed.query.items()}
        )
    return parsed.render_as_string(hide_password=True)


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """The async engine; SQLite gets its data folder created, WAL and foreign keys on."""
    url = normalize_url(url)
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite has one writer at a time: several pooled connections only take turns at its
        # lock, and under load fail with "database is locked". One connection queues instead.
        options.update(pool_size=1, max_overflow=0, pool_timeout=60)
    else:
        options.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_async_engine(url, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    # WAL lets readers run while a reply is being written; foreign keys make deletes cascade.
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL stays consistent after a crash but does not fsync every commit (a
    # commit cost ~14 ms on the benchmark machine's disk; a power cut may lose the last ones).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# The newest migration; tests/test_migrations.py checks it against Alembic's own head.
HEAD = "0007"


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply the migrations up to `revision` (idempotent)."""
    if revision == "head" and await _at_head(engine):
        return  # the usual start: no need to load Alembic (about 10 MB of memory)
    from alembic import command

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Instances starting together must not race to create the same tables.
            await connection.execute(text("SELECT pg_advisory_xact_lock(2066711)"))
        await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


def upgrade_in_child(url: str) -> None:
    """Migrate the database in a short-lived child process, if it is not at head already.

    `chatrelay serve` calls this before it starts: Alembic costs about 10 MB that, once
    imported, a server process would keep for its whole life (measured in
    docs/BENCHMARKS.md). The server's own `upgrade()` then finds the schema at head.
    """
    import asyncio
    import os
    import subprocess
    import sys

    async def at_head() -> bool:
        engine = create_engine(url)
        try:
            return await _at_head(engine)
        finally:
            await engine.dispose()

    try:
        if asyncio.run(at_head()):
            return
    except Exception:  # unreachable, say: the child's error names the problem
        pass
    done = subprocess.run(
        [sys.executable, "-m", "chatrelay", "db", "upgrade"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        # One line, naming DATABASE_URL (the child's own "Error: " prefix dropped: the CLI
        # adds its own).
        reason = lines[-1].removeprefix("Error: ")
        raise ConfigError(f"could not migrate the database: {reason}")


async def _at_head(engine: AsyncEngine) -> bool:
    try:
        return await stored_revision(engine) == HEAD
    except DBAPIError:
        return False  # unreadable: the migration's own error will say why


async def stored_revision(engine: AsyncEngine) -> str | None:
    """The schema revision the database records, without loading Alembic; None when it has
    no version table (a new database)."""
    async with engine.connect() as connection:
        try:
            found = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except DBAPIError:
            return None  # no version table yet
        versions = [row[0] for row in found]
    return versions[0] if len(versions) == 1 else None


async def current_revision(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
