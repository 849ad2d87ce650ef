"""Group commit for the turn writes (a turn's opening, a reply): every write queued while a
transaction is being written goes into the next one, in order.

Each stream writes twice, before its first token and after its last. One transaction each,
on SQLite's one pooled connection, queued new streams behind each other (docs/BENCHMARKS.md).
Nothing waits for a timer: a write alone runs at once, and callers wait until their own write
is committed. A write raises `ConversationBusy` without touching the database, which does not
disturb the others; any database error aborts the shared transaction, and then each write is
retried alone (`alone=True`), so that it fails alone.

On SQLite, a transaction runs whole on aiosqlite's worker thread. Through the async engine,
every statement is several round trips to that thread (cursor, execute, fetch, close), and
each one waits for the GIL that a busy event loop holds for up to its switch interval (5 ms):
a batch of a few dozen writes took hundreds of milliseconds, and every new stream waited.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from .errors import ConversationBusy

log = logging.getLogger("chatrelay.store")

T = TypeVar("T")
Write = Callable[[Connection, bool], Any]


class GroupCommit:
    """Runs writes `write(connection, alone)` in shared transactions, one after another."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._transaction: _SQLiteThread | _AsyncTransaction
        if engine.dialect.name == "sqlite" and engine.dialect.driver == "aiosqlite":
            self._transaction = _SQLiteThread(engine)
        else:
            self._transaction = _AsyncTransaction(engine)
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def aclose(self) -> None:
        """Wait for what is in flight (before the engine is disposed of)."""
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        await self._transaction.aclose()

    async def run(self, write: Callable[[Connection, bool], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        # A caller cancelled meanwhile never reads a failure (Conversations.end logs those it
        # does read): mark it read, or asyncio would log it again as never retrieved.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        self._pending.append((write, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="store-writes")
        return await done

    async def _flush(self) -> None:
        try:
            while self._pending:
                # A request cancelled while its write waited here never gets its turn written.
                batch = [(write, done) for write, done in self._pending if not done.cancelled()]
                self._pending = []
                if not batch:
                    continue
                writes = [write for write, _ in batch]
                try:
                    results = await self._transaction.transact(partial(_together, writes=writes))
                except Exception:
                    for write, done in batch:
                        try:
                            result = await self._transaction.transact(partial(_alone, write))
                        except Exception as exc:
                            _settle(done, exception=exc)
                        else:
                            _settle(done, result)
                    continue
                for (_, done), (result, error) in zip(batch, results, strict=True):
                    _settle(done, result, error)
        finally:
            self._flusher = None


class _AsyncTransaction:
    """A transaction through the async engine (PostgreSQL: asyncpg's round trips are the
    network's, with no thread to wait for)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def transact(self, work: Callable[[Connection], T]) -> T:
        async with self._engine.begin() as connection:
            return await connection.run_sync(work)

    async def aclose(self) -> None:
        return None


class _SQLiteThread:
    """Transactions run whole on aiosqlite's thread, over the async engine's own connection.

    The connection is checked out of the async pool for the duration (SQLite's pool holds
    one), so no other session's statements interleave. On that thread, a synchronous engine of
    the same dialect family (pysqlite, which aiosqlite's dialect extends: the same SQL, the
    same type handling) borrows the sqlite3 connection aiosqlite opened there.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._lent = threading.local()
        self._closing: set[asyncio.Future[None]] = set()
        self._sync: Engine = create_engine(
            "sqlite://", poolclass=NullPool, creator=lambda: _Borrowed(self._lent.connection)
        )

    async def transact(self, work: Callable[[Connection], T]) -> T:
        connection = await self._engine.connect()
        try:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection  # the aiosqlite.Connection

            def on_thread() -> T:
                self._lent.connection = driver._conn
                try:
                    with self._sync.begin() as sync:
                        return work(sync)
                finally:
                    self._lent.connection = None

            # aiosqlite's own queue to its thread, as SQLAlchemy's aiosqlite dialect uses it.
            result: T = await driver._execute(on_thread)
        except BaseException:
            await connection.close()
            raise
        # Committed: the writers may go on. Handing the connection back (the pool's reset is one
        # more trip to the thread, and a busy loop's turn) need not hold them; the next
        # checkout waits for it in the pool.
        closing = asyncio.ensure_future(connection.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closed)
        return result

    async def aclose(self) -> None:
        if self._closing:
            await asyncio.wait(self._closing)

    def _closed(self, closing: asyncio.Future[None]) -> None:
        self._closing.discard(closing)
        if not closing.cancelled() and (error := closing.exception()) is not None:
            log.error("could not hand a connection back to the pool: %r", error)


class _Borrowed:
    """A sqlite3 connection the synchronous engine may use but not close: aiosqlite owns it."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def close(self) -> None:
        pass


def _together(connection: Connection, writes: list[Write]) -> list[tuple[Any, Exception | None]]:
    results: list[tuple[Any, Exception | None]] = []
    for write in writes:
        try:
            results.append((write(connection, False), None))
        except ConversationBusy as busy:  # decided from a row count: nothing was written
            results.append((None, busy))
    return results


def _alone(write: Write, connection: Connection) -> Any:
    return write(connection, True)


def _settle(
    done: asyncio.Future[Any], result: Any = None, exception: Exception | None = None
) -> None:
    if done.done():
        return
    if exception is not None:
        done.set_exception(exception)
    else:
        done.set_result(result)
