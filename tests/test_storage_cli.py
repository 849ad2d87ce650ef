"""Storage as a user meets it: `chatrelay serve` keeping conversations across restarts, and the
`chatrelay db` / `chatrelay conversations` commands, on SQLite and PostgreSQL (subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory

from chatrelay.conversation_ids import stored_id
from chatrelay.db import alembic_config, create_engine, current_revision

from .conftest import make_settings, postgres_database, serve, stream_chat

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
FIRST = "Plan a trip to Oslo"
SECOND = "What should I pack?"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(database_url: str, **extra: str) -> dict[str, str]:
    """The developer's environment minus chatrelay's settings, plus the database to use."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_"))
        and k not in ("PORT", "DATABASE_URL", "REDIS_URL")
    }
    return {
        **clean,
        "DATABASE_URL": database_url,
        "CHATRELAY_PROVIDER": "mock",
        "CHATRELAY_MOCK_DELAY_S": "0",
        **extra,
    }


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def chatrelay(*args: str, environ: dict[str, str], cwd: Path) -> Done:
    """Run `python -m chatrelay ARGS` to the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatrelay",
        *args,
        env=environ,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Done(proc.returncode, stdout.decode(), stderr.decode())


@asynccontextmanager
async def server(environ: dict[str, str], cwd: Path) -> AsyncIterator[str]:
    """`chatrelay serve` in a subprocess, once /healthz answers; stopped on exit."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatrelay",
        "serve",
        "--port",
        str(port),
        env=environ,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = asyncio.create_task(proc.stdout.read())
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            deadline = time.monotonic() + 20
            while True:
                if proc.returncode is not None or output.done():
                    await proc.wait()
                    pytest.fail(f"chatrelay serve exited:\n{(await output).decode()}")
                try:
                    if (await http.get(f"{url}/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "chatrelay serve did not start"
                await asyncio.sleep(0.05)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await output


def streamed_text(response: httpx.Response) -> str:
    """The reply's text from a buffered SSE response."""
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]", data
    return "".join(json.loads(d)["content"] for d in data if d.startswith('{"content"'))


# -- db upgrade -------------------------------------------------------------------------------


async def test_db_upgrade_prints_the_revision(database_url: str, tmp_path: Path) -> None:
    environ = environment(database_url)
    first = await chatrelay("db", "upgrade", environ=environ, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"database at revision {HEAD}"

    engine = create_engine(database_url)
    try:
        assert await current_revision(engine) == HEAD
    finally:
        await engine.dispose()


# -- the server -------------------------------------------------------------------------------


async def test_restarting_the_server_keeps_every_conversation(
    database_url: str, tmp_path: Path
) -> None:
    environ = environment(database_url)
    async with httpx.AsyncClient(timeout=20) as http:
        async with server(environ, tmp_path) as url:
            first = await http.post(f"{url}/ai/stream/chat", json={"messages": [user(FIRST)]})
            assert first.status_code == 200, first.text
            cid = first.headers["x-conversation-id"]
            second = await http.post(
                f"{url}/ai/stream/chat", json={"conversation_id": cid, "messages": [user(SECOND)]}
            )
            assert second.status_code == 200, second.text
            assert second.headers["x-conversation-id"] == cid

        async with server(environ, tmp_path) as url:  # a new process: only the database remains
            stored = await http.get(f"{url}/conversations/{cid}")
            listed = await http.get(f"{url}/conversations")

    assert stored.status_code == 200, stored.text
    conversation = stored.json()
    assert conversation["id"] == cid
    assert conversation["title"] == FIRST
    messages = conversation["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", FIRST),
        ("assistant", streamed_text(first)),
        ("user", SECOND),
        ("assistant", streamed_text(second)),
    ]
    assert all(m["end_reason"] == "completed" for m in messages[1::2])
    assert [c["id"] for c in listed.json()["data"]] == [cid]


# -- conversations list | show | export ----------------------------------------------------------


@dataclass
class Seeded:
    cid: str  # as the HTTP API shows it; the CLI shows and takes the stored one
    replies: list[str]
    environ: dict[str, str]
    cwd: Path


@pytest.fixture
async def seeded(database_url: str, tmp_path: Path) -> Seeded:
    """A two-turn conversation (and an older one), written by the app through HTTP."""
    settings = make_settings(provider="mock", database_url=database_url)
    async with httpx.AsyncClient(timeout=20) as http, serve(settings) as url:
        await stream_chat(http, url, {"messages": [user("An older chat")]})
        first = await stream_chat(http, url, {"messages": [user(FIRST)]})
        cid = first.headers["x-conversation-id"]
        second = await stream_chat(http, url, {"conversation_id": cid, "messages": [user(SECOND)]})
    assert first.status == second.status == 200
    return Seeded(cid, [first.text, second.text], environment(database_url), tmp_path)


def stored(seeded: Seeded) -> str:
    """The conversation's id as stored, in its owner's namespace (auth off: `public`)."""
    return stored_id("public", seeded.cid)


async def run(seeded: Seeded, *args: str) -> Done:
    return await chatrelay(*args, environ=seeded.environ, cwd=seeded.cwd)


MISSING = "no-such-conversation-42"


async def test_conversations_list_show_and_export_read_the_stored_conversation(
    seeded: Seeded,
) -> None:
    """Each command is its own process; they run side by side, as readers of one database.
    They name conversations by their stored ids, whoever's namespace they are in."""
    cid = stored(seeded)
    listed, shown, as_json, as_markdown, unknown = await asyncio.gather(
        run(seeded, "conversations", "list"),
        run(seeded, "conversations", "show", cid),
        run(seeded, "conversations", "export", cid, "--format", "json"),
        run(seeded, "conversations", "export", cid, "--format", "markdown"),
        run(seeded, "conversations", "show", MISSING),
    )
    check_list(listed, seeded)
    check_show(shown, seeded)
    check_json(as_json, seeded)
    check_markdown(as_markdown, seeded)
    check_unknown(unknown)


def check_list(listed: Done, seeded: Seeded) -> None:
    """`list` shows the id, how many messages, and the title, newest first; and, on stderr,
    which database it read."""
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines()[0] == f"database: {shown_url(seeded.environ)}"
    lines = listed.stdout.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(stored(seeded) + "  ")
    assert lines[0].rstrip().endswith(f"  4 messages  {FIRST}"), lines[0]
    assert lines[1].rstrip().endswith("  2 messages  An older chat"), lines[1]


def shown_url(environ: dict[str, str]) -> str:
    """How the commands name the database of `environ`: the tests' URLs have the async driver,
    an absolute SQLite path and no password, so exactly as given."""
    return environ["DATABASE_URL"]


def in_order(text: str, parts: list[str], after: int = 0) -> bool:
    positions = []
    for part in parts:
        after = text.index(part, after)
        positions.append(after)
    return positions == sorted(positions)


def check_show(shown: Done, seeded: Seeded) -> None:
    """`show` prints the transcript: the title, then each turn under its role."""
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith(f"# {FIRST}\n"), text
    assert in_order(
        text,
        [
            *("## user", FIRST, "## assistant", seeded.replies[0]),
            *("## user", SECOND, "## assistant", seeded.replies[1]),
        ],
        after=len(f"# {FIRST}"),
    ), text
    assert "reply ended" not in text  # both replies completed


def check_json(exported: Done, seeded: Seeded) -> None:
    """`export --format json` is everything stored: the messages and each reply's usage."""
    assert exported.returncode == 0, exported.stderr
    body: dict[str, Any] = json.loads(exported.stdout)
    assert body["id"] == stored(seeded)
    assert body["title"] == FIRST
    messages = body["messages"]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", FIRST),
        ("assistant", seeded.replies[0]),
        ("user", SECOND),
        ("assistant", seeded.replies[1]),
    ]
    for reply in messages[1::2]:
        assert reply["end_reason"] == "completed"
        assert reply["model"] == "mock"
        usage = reply["usage"]
        assert set(usage) == {"input_tokens", "output_tokens", "estimated", "cost_usd"}
        assert isinstance(usage["input_tokens"], int) and usage["input_tokens"] > 0
        assert isinstance(usage["output_tokens"], int) and usage["output_tokens"] > 0
    # The second turn was sent with the first as history: it cost more input.
    assert messages[3]["usage"]["input_tokens"] > messages[1]["usage"]["input_tokens"]


def check_markdown(exported: Done, seeded: Seeded) -> None:
    """`export --format markdown` has a heading per turn."""
    assert exported.returncode == 0, exported.stderr
    headings = [line for line in exported.stdout.splitlines() if line.startswith("#")]
    assert headings == [f"# {FIRST}", "## user", "## assistant", "## user", "## assistant"]
    assert in_order(
        exported.stdout, [FIRST, seeded.replies[0], SECOND, seeded.replies[1]], len(f"# {FIRST}")
    )


def check_unknown(done: Done) -> None:
    """An unknown id exits non-zero, naming it."""
    assert done.returncode != 0
    assert MISSING in done.stderr
    assert done.stdout == ""


async def test_export_of_an_unknown_conversation_id_exits_non_zero_naming_it(
    database_url: str, tmp_path: Path
) -> None:
    environ = environment(database_url)
    assert (await chatrelay("db", "upgrade", environ=environ, cwd=tmp_path)).returncode == 0
    done = await chatrelay("conversations", "export", MISSING, environ=environ, cwd=tmp_path)
    check_unknown(done)


async def test_an_empty_database_says_there_is_nothing(database_url: str, tmp_path: Path) -> None:
    environ = environment(database_url)
    assert (await chatrelay("db", "upgrade", environ=environ, cwd=tmp_path)).returncode == 0
    conversations, keys = await asyncio.gather(
        chatrelay("conversations", "list", environ=environ, cwd=tmp_path),
        chatrelay("keys", "list", environ=environ, cwd=tmp_path),
    )
    for done, nothing in ((conversations, "no conversations"), (keys, "no keys")):
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert done.stderr.splitlines() == [f"database: {shown_url(environ)}", nothing]


READERS = [
    ("conversations", "list"),
    ("conversations", "show", MISSING),
    ("conversations", "export", MISSING),
    ("keys", "list"),
    ("keys", "revoke", "abc"),
]


@pytest.mark.parametrize("database_url_set", [False, True], ids=["default", "DATABASE_URL"])
async def test_reading_commands_in_another_directory_name_the_missing_database_and_create_none(
    tmp_path: Path, database_url_set: bool
) -> None:
    """Run where there is no database, each reading command fails naming the file and the
    setting that chooses it, and leaves nothing behind."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environ = environment(f"sqlite:///{tmp_path}/srv/chatrelay.db")
    expected = tmp_path / "srv" / "chatrelay.db"
    if not database_url_set:
        del environ["DATABASE_URL"]
        expected = elsewhere / "data" / "chatrelay.db"
    done = await asyncio.gather(
        *(chatrelay(*args, environ=environ, cwd=elsewhere) for args in READERS)
    )
    for args, result in zip(READERS, done, strict=True):
        assert result.returncode != 0, (args, result)
        assert result.stdout == "", args
        first, *rest = result.stderr.splitlines()
        assert first == f"database: sqlite+aiosqlite:///{expected}", (args, first)
        message = " ".join(rest)
        assert f"no database at {expected}" in message, (args, message)
        assert "DATABASE_URL" in message, (args, message)
        assert "chatrelay db upgrade" in message, (args, message)
    assert list(elsewhere.iterdir()) == []
    assert not (tmp_path / "srv").exists()


async def test_a_database_without_the_schema_is_an_error_not_migrated(tmp_path: Path) -> None:
    """A reading command migrates nothing: a database without chatrelay's tables (the wrong
    one, or never started) is named, with the command that sets it up."""
    async with postgres_database() as url:
        environ = environment(url)
        done = await chatrelay("conversations", "list", environ=environ, cwd=tmp_path)
        engine = create_engine(url)
        try:
            assert await current_revision(engine) is None  # still empty
        finally:
            await engine.dispose()
    assert done.returncode != 0
    assert done.stdout == ""
    assert "has no chatrelay tables yet" in done.stderr
    assert "DATABASE_URL" in done.stderr and "chatrelay db upgrade" in done.stderr


async def test_keys_create_sets_up_a_new_database_and_says_where(tmp_path: Path) -> None:
    """Creating a key is a set-up step (before the first `serve`): it may create the database,
    and names it."""
    environ = environment("")
    del environ["DATABASE_URL"]
    created = await chatrelay("keys", "create", "--name", "ops", environ=environ, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    database = tmp_path / "data" / "chatrelay.db"
    assert created.stderr.splitlines()[0] == f"database: sqlite+aiosqlite:///{database}"
    assert database.is_file()
    listed = await chatrelay("keys", "list", environ=environ, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert " ops " in listed.stdout


async def test_a_password_in_database_url_is_never_shown(tmp_path: Path) -> None:
    environ = environment("postgresql://app:hunter2-secret@127.0.0.1:1/chatrelay")
    done = await asyncio.gather(
        chatrelay("conversations", "list", environ=environ, cwd=tmp_path),
        chatrelay("db", "upgrade", environ=environ, cwd=tmp_path),
    )
    for result in done:
        assert result.returncode != 0
        assert "hunter2" not in result.stdout + result.stderr
        assert result.stderr.startswith(
            "database: postgresql+asyncpg://app:***@127.0.0.1:1/chatrelay\n"
        ), result.stderr
        assert "cannot use the database" in result.stderr or "migrate" in result.stderr, (
            result.stderr
        )


async def test_usage_prints_a_table_of_the_stored_replies_with_a_total(seeded: Seeded) -> None:
    by_model, by_day, bad = await asyncio.gather(
        run(seeded, "usage"),
        run(seeded, "usage", "--group-by", "day", "--from", "2020-01-01"),
        run(seeded, "usage", "--from", "yesterday"),
    )
    assert by_model.returncode == 0, by_model.stderr
    lines = by_model.stdout.splitlines()
    assert lines[0].split() == [
        "model", "messages", "input", "output", "cache_read", "cache_write", "cost_usd"
    ]  # fmt: skip
    assert lines[1].split()[:2] == ["mock", "3"]
    # The mock has no price: its cost is unknown, and the table says how many replies lack one.
    assert lines[1].endswith("- (3 unpriced)")
    assert lines[-1].split()[:2] == ["total", "3"]
    assert by_day.returncode == 0 and by_day.stdout.splitlines()[0].startswith("day")
    assert bad.returncode != 0 and "--from" in bad.stderr
