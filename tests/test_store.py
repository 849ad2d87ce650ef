"""The store on its own (no HTTP): turns, locks, ownership, pages, usage; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from sqlalchemy import text

import chatrelay.store
from chatrelay.db import create_engine, upgrade
from chatrelay.errors import ConversationBusy, InvalidField
from chatrelay.events import Reply
from chatrelay.store import Store
from chatrelay.tables import Conversation


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def reply(stream_id: str, content: str = "Hello!", **fields: Any) -> Reply:
    fields.setdefault("model", "mock")
    fields.setdefault("end_reason", "completed")
    return Reply(content=content, stream_id=stream_id, **fields)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    engine = create_engine(database_url)
    await upgrade(engine)
    store = Store(engine)
    try:
        yield store
    finally:
        await store.close()


class Clock:
    """Stands in for `chatrelay.store.now`: the store's idea of the time, set by the test."""

    def __init__(self, start: datetime) -> None:
        self.time = start

    def __call__(self) -> datetime:
        return self.time


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock(datetime(2026, 3, 1, 10, 0, tzinfo=UTC))
    monkeypatch.setattr(chatrelay.store, "now", fake)
    yield fake


async def start(
    store: Store,
    cid: str,
    owner: str = "alice",
    stream_id: str | None = None,
    messages: list[dict[str, Any]] | None = None,
    create: bool = True,
    model: str = "mock",
) -> str:
    """`begin_turn` as the chat service calls it; returns the stream id holding the lock."""
    stream_id = stream_id or f"{cid}-stream-{'new' if create else 'next'}"
    await store.begin_turn(
        cid,
        owner,
        stream_id,
        messages if messages is not None else [user(f"Hello from {cid}")],
        title=f"Title of {cid}",
        model=model,
        create=create,
    )
    return stream_id


async def chat(store: Store, cid: str, owner: str = "alice", **reply_fields: Any) -> None:
    """A whole first turn: the user's message, then the reply."""
    stream_id = await start(store, cid, owner)
    await store.end_turn(cid, reply(stream_id, **reply_fields))


async def conversation(store: Store, cid: str) -> Conversation:
    found = await store.get(cid, None)
    assert found is not None, cid
    return found


def aware_utc(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)


# -- a turn: lock, messages, reply, unlock --------------------------------------------------


async def test_begin_turn_creates_the_conversation_with_the_messages_in_order_and_locks_it(
    store: Store,
) -> None:
    sent = [user("one"), assistant("two"), user("three")]
    await start(store, "c1", owner="alice", stream_id="s1", messages=sent, model="claude")

    stored = await conversation(store, "c1")
    assert (stored.id, stored.owner, stored.title, stored.model) == (
        "c1",
        "alice",
        "Title of c1",
        "claude",
    )
    assert stored.meta == {}
    assert stored.locked_by == "s1"
    assert stored.locked_at is not None
    assert [{"role": m.role, "content": m.content} for m in stored.messages] == sent
    assert [m.seq for m in stored.messages] == [0, 1, 2]
    assert {m.stream_id for m in stored.messages} == {"s1"}
    assert all(m.usage_estimated is False and m.end_reason is None for m in stored.messages)
    assert await store.exists("c1")
    assert not await store.exists("c2")


async def test_a_locked_conversation_is_busy_until_end_turn_releases_it(store: Store) -> None:
    await start(store, "c1", stream_id="s1")

    with pytest.raises(ConversationBusy) as busy:
        await start(store, "c1", stream_id="s2", messages=[user("me too")], create=False)
    assert "c1" in busy.value.message
    with pytest.raises(ConversationBusy):  # creating it again is no way round the lock
        await start(store, "c1", stream_id="s3", messages=[user("me three")], create=True)
    stored = await conversation(store, "c1")
    assert [m.content for m in stored.messages] == ["Hello from c1"]  # nothing appended
    assert stored.locked_by == "s1"

    await store.end_turn("c1", reply("s1"))
    assert (await conversation(store, "c1")).locked_by is None

    await start(store, "c1", stream_id="s2", messages=[user("me too")], create=False)
    stored = await conversation(store, "c1")
    assert stored.locked_by == "s2"
    assert [m.content for m in stored.messages] == ["Hello from c1", "Hello!", "me too"]

    # release() frees the lock without a reply (the turn never reached a provider)...
    await store.release("c1", "someone-else")  # ...but only for the stream holding it
    assert (await conversation(store, "c1")).locked_by == "s2"
    await store.release("c1", "s2")
    await start(store, "c1", stream_id="s3", messages=[user("again")], create=False)
    stored = await conversation(store, "c1")
    assert [m.role for m in stored.messages] == ["user", "assistant", "user", "user"]


async def test_a_lock_older_than_the_lock_timeout_is_taken_over(store: Store) -> None:
    quick = Store(store.engine, lock_timeout_s=0.05)  # shares the engine: not closed here
    await start(quick, "c1", stream_id="crashed")

    await asyncio.sleep(0.15)
    with pytest.raises(ConversationBusy):  # the default timeout (10 min) still holds
        await start(store, "c1", stream_id="s2", messages=[user("hello?")], create=False)
    await start(quick, "c1", stream_id="s2", messages=[user("hello?")], create=False)
    with pytest.raises(ConversationBusy):  # and the new holder's fresh lock is respected
        await start(store, "c1", stream_id="s3", messages=[user("me?")], create=False)
    assert (await conversation(store, "c1")).locked_by == "s2"

    # The crashed stream's late reply is stored, but does not free the new holder's lock.
    await quick.end_turn("c1", reply("crashed", "late"))
    stored = await conversation(store, "c1")
    assert stored.locked_by == "s2"
    assert [m.seq for m in stored.messages] == [0, 1, 2]


async def test_a_late_reply_of_a_lock_taken_over_replaces_its_interrupted_mark(
    store: Store,
) -> None:
    """A stream that took the lock over after the timeout marks the old turn's reply
    interrupted (an empty one: it had stored nothing), so the history never has two user
    turns in a row; if the old stream was only late, its reply then takes that place."""
    quick = Store(store.engine, lock_timeout_s=0.05)  # shares the engine: not closed here
    reserved = await quick.begin_turn("c1", "alice", "crashed", [user("q1")], "t", "m", True)
    assert reserved == 1
    await asyncio.sleep(0.15)
    taken = await quick.begin_turn("c1", "alice", "s2", [user("q2")], "t", "m", False)
    assert taken == 3  # the interrupted mark took seq 1, q2 seq 2
    marked = (await conversation(store, "c1")).messages[1]
    assert (marked.role, marked.content, marked.end_reason) == ("assistant", "", "interrupted")
    assert marked.stream_id == "crashed"
    await quick.end_turn("c1", reply("s2", "answer to q2"), taken)
    await quick.end_turn("c1", reply("crashed", "late answer"), reserved)
    stored = await conversation(store, "c1")
    assert [(m.seq, m.content, m.end_reason) for m in stored.messages] == [
        (0, "q1", None),
        (1, "late answer", "completed"),
        (2, "q2", None),
        (3, "answer to q2", "completed"),
    ]


async def test_end_turn_stores_every_reply_field_and_keeps_seq_contiguous(store: Store) -> None:
    full = Reply(
        content="Here is the answer",
        model="claude-sonnet-5-5",
        stream_id="s1",
        end_reason="completed",
        stop_reason="end_turn",
        error_code=None,
        input_tokens=123,
        output_tokens=45,
        usage_estimated=True,
        cost_usd=0.001044,
        ttft_ms=250,
        duration_ms=1500,
        thinking="Let me think about it.",
    )
    failed = Reply(
        content="Half an ans",
        model="gpt-5.4-mini",
        stream_id="s2",
        end_reason="error",
        stop_reason=None,
        error_code="upstream_overloaded",
        input_tokens=None,
        output_tokens=None,
        usage_estimated=False,
        ttft_ms=None,
        duration_ms=900,
        thinking=None,
    )
    before = datetime.now(UTC)
    await start(store, "c1", stream_id="s1", messages=[user("q1"), assistant("a0"), user("q1b")])
    await store.end_turn("c1", full)
    await start(store, "c1", stream_id="s2", messages=[user("q2")], create=False)
    await store.end_turn("c1", failed)
    after = datetime.now(UTC)

    stored = await conversation(store, "c1")
    assert [m.seq for m in stored.messages] == list(range(6))
    assert [m.role for m in stored.messages] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    for message, expected in ((stored.messages[3], full), (stored.messages[5], failed)):
        for field in dataclasses.fields(Reply):
            if field.name in ("tool_calls", "thinking_signature"):  # stored in `content`
                continue
            assert getattr(message, field.name) == getattr(expected, field.name), field.name
        assert message.role == "assistant"
    assert stored.locked_by is None and stored.locked_at is None
    assert stored.messages[4].stream_id == "s2"
    # Real turns are stamped with the current time, in UTC.
    stamps = [stored.created_at, stored.updated_at, *(m.created_at for m in stored.messages)]
    assert all(aware_utc(stamp) for stamp in stamps)
    assert all(before - timedelta(seconds=1) <= s <= after + timedelta(seconds=1) for s in stamps)
    assert stored.updated_at == stored.messages[-1].created_at


async def test_replies_ending_together_are_all_stored_each_in_its_own_conversation(
    store: Store,
) -> None:
    """Replies that end at the same moment share a transaction; none is lost or mixed up."""
    for n in range(40):
        await start(store, f"c{n}", stream_id=f"s{n}", messages=[user(f"q{n}")])
    await asyncio.gather(
        *(
            store.end_turn(f"c{n}", reply(f"s{n}", f"answer {n}", output_tokens=n))
            for n in range(40)
        )
    )
    for n in range(40):
        stored = await conversation(store, f"c{n}")
        assert [(m.seq, m.role, m.content) for m in stored.messages] == [
            (0, "user", f"q{n}"),
            (1, "assistant", f"answer {n}"),
        ]
        assert stored.messages[1].output_tokens == n
        assert stored.locked_by is None


async def test_turns_opening_together_are_all_stored_and_locked(store: Store) -> None:
    """Forty requests opening their turns at once share transactions; each gets its own
    conversation, messages and lock, and its reply its reserved place."""
    seqs = await asyncio.gather(
        *(
            store.begin_turn(f"c{n}", "alice", f"s{n}", [user(f"q{n}")], f"t{n}", "m", True)
            for n in range(40)
        )
    )
    assert seqs == [1] * 40
    for n in range(40):
        stored = await conversation(store, f"c{n}")
        assert [(m.seq, m.content) for m in stored.messages] == [(0, f"q{n}")]
        assert (stored.locked_by, stored.title) == (f"s{n}", f"t{n}")


async def test_a_busy_turn_among_others_fails_alone(store: Store) -> None:
    """In one burst: a second turn on a locked conversation and a new conversation under an
    id that exists are refused (409); the other turns of the burst are stored all the same."""
    await start(store, "locked", stream_id="holder")
    await start(store, "taken", stream_id="other-holder")
    results = await asyncio.gather(
        store.begin_turn("n1", "alice", "s1", [user("a")], "t", "m", True),
        store.begin_turn("locked", "alice", "s2", [user("b")], "t", "m", False),
        store.begin_turn("n2", "alice", "s3", [user("c")], "t", "m", True),
        store.begin_turn("taken", "alice", "s4", [user("d")], "t", "m", True),
        store.begin_turn("n3", "alice", "s5", [user("e")], "t", "m", True),
        return_exceptions=True,
    )
    assert results[0] == results[2] == results[4] == 1
    assert isinstance(results[1], ConversationBusy) and isinstance(results[3], ConversationBusy)
    for cid, stream, said in (("n1", "s1", "a"), ("n2", "s3", "c"), ("n3", "s5", "e")):
        stored = await conversation(store, cid)
        assert stored.locked_by == stream
        assert [m.content for m in stored.messages] == [said]
    assert (await conversation(store, "locked")).locked_by == "holder"
    assert (await conversation(store, "taken")).locked_by == "other-holder"
    assert "b" not in [m.content for m in (await conversation(store, "locked")).messages]


async def test_turn_writes_never_commit_another_sessions_open_transaction(
    store: Store,
) -> None:
    """A turn opening while another session is mid-transaction is stored, and that
    session's change, rolled back afterwards, is not (SQLite's turn writes run on the one
    connection that session holds: they wait for it)."""
    await start(store, "c0", stream_id="s0")
    async with store.engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(text("UPDATE conversations SET title = 'draft' WHERE id = 'c0'"))
        turn = asyncio.create_task(
            store.begin_turn("c1", "alice", "s1", [user("q")], "t", "m", True)
        )
        await asyncio.sleep(0.05)
        await transaction.rollback()
    assert await turn == 1
    assert (await conversation(store, "c0")).title != "draft"
    stored = await conversation(store, "c1")
    assert (stored.locked_by, [m.content for m in stored.messages]) == ("s1", ["q"])


async def test_a_reply_that_cannot_be_stored_fails_alone(store: Store) -> None:
    """A reply whose conversation was deleted meanwhile does not take the others down with it."""
    for n in range(3):
        await start(store, f"c{n}", stream_id=f"s{n}", messages=[user(f"q{n}")])
    assert await store.delete("c1", None)
    results = await asyncio.gather(
        *(store.end_turn(f"c{n}", reply(f"s{n}", f"answer {n}")) for n in range(3)),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], Exception)  # the foreign key refuses it (both databases)
    for n in (0, 2):
        stored = await conversation(store, f"c{n}")
        assert [m.content for m in stored.messages] == [f"q{n}", f"answer {n}"]
        assert stored.locked_by is None


async def test_a_cancelled_caller_does_not_cancel_the_write_of_its_reply(store: Store) -> None:
    """A stream torn down while its reply is being written still gets the reply stored."""
    await start(store, "c1", stream_id="s1", messages=[user("q")])
    writing = asyncio.ensure_future(store.end_turn("c1", reply("s1", "kept")))
    await asyncio.sleep(0)
    writing.cancel()
    for _ in range(200):
        if (await conversation(store, "c1")).locked_by is None:
            break
        await asyncio.sleep(0.01)
    stored = await conversation(store, "c1")
    assert [m.content for m in stored.messages] == ["q", "kept"]


@pytest.mark.parametrize("create", [True, False])
async def test_a_caller_that_leaves_while_its_turn_is_locking_leaves_no_lock(
    store: Store, create: bool
) -> None:
    """A request cut while its turn's write is in flight (the client gone): the write may
    commit all the same, and then the turn is ended at once, not left locked by nobody."""
    if not create:
        await start(store, "c1", stream_id="s0", messages=[user("q")])
        await store.end_turn("c1", reply("s0", "a"))
    opening = asyncio.ensure_future(
        start(store, "c1", stream_id="s1", messages=[user("cut")], create=create)
    )
    await asyncio.sleep(0)  # the write is queued, maybe on its way to the database
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    for _ in range(200):  # the write goes on after its caller left: wait for its end
        found = await store.get("c1", None)
        last = found.messages[-1] if found is not None else None
        if last is not None and last.stream_id == "s1" and last.role == "assistant":
            break
        await asyncio.sleep(0.01)
    stored = await conversation(store, "c1")
    assert stored.locked_by is None
    # No two user messages in a row: the cut turn has its (empty) interrupted reply.
    assert [(m.role, m.end_reason) for m in stored.messages[-2:]] == [
        ("user", None),
        ("assistant", "interrupted"),
    ]
    await start(store, "c1", stream_id="s2", messages=[user("next")], create=False)


async def test_a_transaction_that_fails_halfway_leaves_nothing_behind(store: Store) -> None:
    """Writes are atomic on both databases: nothing of a transaction that failed is stored."""
    with pytest.raises(RuntimeError):
        async with store.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO conversations (id, owner, title, metadata, created_at, updated_at)"
                    " VALUES ('half', 'alice', '', '{}', '2026-01-01', '2026-01-01')"
                )
            )
            raise RuntimeError("between two statements")
    assert not await store.exists("half")
    await start(store, "whole")
    assert await store.exists("whole")


# -- ownership --------------------------------------------------------------------------------


async def test_another_owner_sees_nothing_and_owner_none_sees_every_owner(store: Store) -> None:
    await chat(store, "alices", owner="alice")
    await chat(store, "bobs", owner="bob")

    assert await store.get("alices", "bob") is None
    assert await store.update("alices", "bob", title="mine now", metadata={"x": 1}) is None
    assert await store.delete("alices", "bob") is False
    assert [c.id for c in (await store.page("bob", 10, None)).conversations] == ["bobs"]
    assert (await store.page("mallory", 10, None)).conversations == []
    mine = await store.get("alices", "alice")
    assert mine is not None and mine.title == "Title of alices" and mine.meta == {}
    assert len(mine.messages) == 2

    assert {c.id for c in (await store.page(None, 10, None)).conversations} == {"alices", "bobs"}
    admin_view = await store.get("bobs", None)
    assert admin_view is not None and admin_view.owner == "bob"
    renamed = await store.update("bobs", None, title="Renamed by admin")
    assert renamed is not None and renamed.title == "Renamed by admin"
    assert await store.delete("bobs", None) is True
    assert await store.get("bobs", None) is None


# -- pages ------------------------------------------------------------------------------------


async def test_page_is_newest_first_by_last_activity(store: Store) -> None:
    for cid in ("first", "second", "third"):
        await chat(store, cid)
        await asyncio.sleep(0.002)
    page = await store.page("alice", 10, None)
    assert [c.id for c in page.conversations] == ["third", "second", "first"]
    assert page.next_cursor is None

    await start(store, "first", messages=[user("back again")], create=False)  # activity
    page = await store.page("alice", 10, None)
    assert [c.id for c in page.conversations] == ["first", "third", "second"]
    updated = [c.updated_at for c in page.conversations]
    assert updated == sorted(updated, reverse=True)


@pytest.mark.parametrize("stamps", ["distinct", "tied"])
async def test_cursor_pages_walk_seven_conversations_three_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch, stamps: str
) -> None:
    if stamps == "tied":  # all seven at the same instant: the id breaks the tie
        same = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
        monkeypatch.setattr(chatrelay.store, "now", lambda: same)
    for n in range(7):
        await chat(store, f"conv-{n}")
        if stamps == "distinct":
            await asyncio.sleep(0.002)
    await chat(store, "someone-elses", owner="bob")

    seen: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    for _ in range(4):
        page = await store.page("alice", 3, cursor)
        seen += [c.id for c in page.conversations]
        sizes.append(len(page.conversations))
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert cursor is None
    assert len(seen) == len(set(seen)) == 7
    everything = await store.page("alice", 100, None)
    assert seen == [c.id for c in everything.conversations]
    if stamps == "distinct":
        assert seen == [f"conv-{n}" for n in reversed(range(7))]


def forged(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


async def test_a_forged_cursor_is_an_invalid_field_naming_cursor(store: Store) -> None:
    await chat(store, "c1")
    for cursor in (
        "not-a-cursor",
        "!!!!",
        "",
        forged(None),
        forged([1, "x"]),
        forged(["yesterday", "c1"]),
        forged({"a": 1, "b": 2}),
    ):
        with pytest.raises(InvalidField) as invalid:
            await store.page("alice", 3, cursor)
        assert [p.field for p in invalid.value.problems] == ["cursor"], cursor
        assert "cursor" in invalid.value.message


@pytest.mark.parametrize(
    "cursor",
    [
        forged(["9999-12-31T23:59:59-01:00", "x"]),  # a time past year 9999 in UTC
        forged(["2026-03-01T10:00:00+00:00", "nul\u0000byte"]),  # PostgreSQL refuses NUL
    ],
    ids=["time-out-of-range", "nul-in-id"],
)
async def test_a_well_formed_but_forged_cursor_is_an_invalid_field_too(
    store: Store, cursor: str
) -> None:
    """GET /conversations?cursor=... must answer 400 (or a page), never 500, whatever it is sent.

    Refusing it as `InvalidField` or answering a page are both fine; a database error is not.
    """
    await chat(store, "c1")
    try:
        page = await store.page("alice", 3, cursor)
    except InvalidField as invalid:
        assert [p.field for p in invalid.problems] == ["cursor"]
    else:
        assert len(page.conversations) <= 1


# -- update and delete ------------------------------------------------------------------------


async def test_update_sets_title_and_metadata_and_bumps_updated_at(store: Store) -> None:
    await chat(store, "c1")
    before = await conversation(store, "c1")
    await asyncio.sleep(0.002)

    renamed = await store.update("c1", "alice", title="Trip to Oslo")
    assert renamed is not None
    assert renamed.title == "Trip to Oslo" and renamed.meta == {}
    assert renamed.updated_at > before.updated_at
    assert renamed.created_at == before.created_at
    assert len(renamed.messages) == 2

    meta = {"tags": ["travel", "norway"], "pinned": True, "score": 1.5, "nested": {"a": None}}
    await asyncio.sleep(0.002)
    tagged = await store.update("c1", "alice", metadata=meta)
    assert tagged is not None and tagged.updated_at > renamed.updated_at
    stored = await conversation(store, "c1")
    assert stored.title == "Trip to Oslo"  # untouched when only metadata is given
    assert stored.meta == meta
    assert stored.updated_at == tagged.updated_at
    assert [c.id for c in (await store.page("alice", 10, None)).conversations] == ["c1"]


async def count(store: Store, sql: str, **params: Any) -> int:
    async with store.engine.connect() as connection:
        return int((await connection.execute(text(sql), params)).scalar_one())


async def test_delete_removes_the_conversation_and_its_messages(store: Store) -> None:
    await chat(store, "gone")
    await start(store, "gone", messages=[user("more"), user("and more")], create=False)
    await chat(store, "kept")
    messages_of = "SELECT count(*) FROM messages WHERE conversation_id = :cid"
    assert await count(store, messages_of, cid="gone") == 4

    assert await store.delete("gone", "alice") is True
    assert await count(store, messages_of, cid="gone") == 0
    assert await count(store, "SELECT count(*) FROM conversations WHERE id = 'gone'") == 0
    assert await count(store, messages_of, cid="kept") == 2
    assert await store.get("gone", "alice") is None
    assert await store.delete("gone", "alice") is False

    # The schema cascades too (ON DELETE CASCADE; SQLite has foreign keys switched on).
    async with store.engine.begin() as connection:
        await connection.execute(text("DELETE FROM conversations WHERE id = 'kept'"))
    assert await count(store, messages_of, cid="kept") == 0
    assert await count(store, "SELECT count(*) FROM messages") == 0


# -- usage ------------------------------------------------------------------------------------


async def test_usage_by_model_and_by_day_within_bounds(store: Store, clock: Clock) -> None:
    async def turn(cid: str, at: datetime, owner: str = "alice", **fields: Any) -> None:
        clock.time = at
        await chat(store, cid, owner=owner, **fields)

    day1 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    await turn("a", day1, model="m1", input_tokens=10, output_tokens=5)
    # 23:30 in New York on March 1st is March 2nd in UTC: days are UTC days.
    await turn(
        "b",
        datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
        model="m2",
        input_tokens=7,
        output_tokens=3,
        usage_estimated=True,
    )
    await turn("c", datetime(2026, 3, 2, 9, 0, tzinfo=UTC), model="m1", input_tokens=1)
    await turn(
        "d",
        datetime(2026, 3, 3, 0, 0, tzinfo=UTC),
        model="m2",
        end_reason="error",
        error_code="upstream_overloaded",
    )
    await turn("bobs", day1, owner="bob", model="m1", input_tokens=1000, output_tokens=1000)

    def row(key: str, value: str, messages: int, i: int, o: int, e: int) -> dict[str, Any]:
        return {
            key: value,
            "messages": messages,
            "input_tokens": i,
            "output_tokens": o,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "estimated_messages": e,
            "cost_usd": None,
            "unpriced_messages": messages,
        }

    assert await store.usage("alice", None, None, "model") == [
        row("model", "m1", 2, 11, 5, 0),
        row("model", "m2", 2, 7, 3, 1),
    ]
    assert await store.usage("alice", None, None, "day") == [
        row("day", "2026-03-01", 1, 10, 5, 0),
        row("day", "2026-03-02", 2, 8, 3, 1),
        row("day", "2026-03-03", 1, 0, 0, 0),
    ]
    assert await store.usage(None, None, None, "model") == [
        row("model", "m1", 3, 1011, 1005, 0),
        row("model", "m2", 2, 7, 3, 1),
    ]
    assert await store.usage("nobody", None, None, "model") == []

    march2 = datetime(2026, 3, 2, tzinfo=UTC)
    march3 = datetime(2026, 3, 3, tzinfo=UTC)
    assert await store.usage("alice", march2, march3, "day") == [  # end is exclusive
        row("day", "2026-03-02", 2, 8, 3, 1)
    ]
    assert await store.usage("alice", march2, None, "model") == [
        row("model", "m1", 1, 1, 0, 0),
        row("model", "m2", 2, 7, 3, 1),
    ]
    assert await store.usage("alice", None, march2, "model") == [row("model", "m1", 1, 10, 5, 0)]
    # Bounds given in another zone mean the same instants.
    est = timezone(timedelta(hours=-5))
    assert await store.usage("alice", march2.astimezone(est), march3.astimezone(est), "day") == [
        row("day", "2026-03-02", 2, 8, 3, 1)
    ]


# -- what comes back --------------------------------------------------------------------------


async def test_timestamps_come_back_timezone_aware_in_utc(store: Store, clock: Clock) -> None:
    paris = timezone(timedelta(hours=1))
    clock.time = datetime(2026, 3, 1, 11, 30, 15, 123456, tzinfo=paris)
    await start(store, "c1", stream_id="s1")

    locked = await conversation(store, "c1")
    assert aware_utc(locked.locked_at)
    assert locked.locked_at == clock.time  # the same instant...
    assert locked.locked_at.hour == 10  # ...told in UTC

    clock.time = datetime(2026, 3, 1, 10, 31, tzinfo=UTC)
    await store.end_turn("c1", reply("s1"))
    stored = await conversation(store, "c1")
    assert aware_utc(stored.created_at) and aware_utc(stored.updated_at)
    assert stored.created_at == datetime(2026, 3, 1, 10, 30, 15, 123456, tzinfo=UTC)
    assert stored.updated_at == datetime(2026, 3, 1, 10, 31, tzinfo=UTC)
    assert all(aware_utc(m.created_at) for m in stored.messages)
    [listed] = (await store.page("alice", 10, None)).conversations
    assert aware_utc(listed.updated_at) and aware_utc(listed.created_at)


async def test_json_content_blocks_round_trip_unchanged(store: Store) -> None:
    blocks = [
        {"type": "text", "text": 'What is in this picture? Ünïcødé, "quotes", 🚀\nnew line'},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "text", "text": "", "extra": {"n": 1.25, "flag": False, "none": None}},
    ]
    await start(store, "c1", stream_id="s1", messages=[user(blocks), user("plain text")])
    await store.end_turn("c1", reply("s1", "Ünïcødé reply 🚀"))

    stored = await conversation(store, "c1")
    assert [m.content for m in stored.messages] == [blocks, "plain text", "Ünïcødé reply 🚀"]
    # Unchanged down to the order of the keys.
    assert json.dumps(stored.messages[0].content) == json.dumps(blocks)
