"""`chatrelay chat` as a user runs it: a subprocess talking to a `chatrelay serve` subprocess."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .processes import Process, chatrelay_env, free_port, start_chatrelay

USAGE = re.compile(r"\[mock, (\d+) input \+ (\d+) output tokens, conversation (\S+)\]")


def mock_reply(question: str) -> str:
    return f"Hello! This is a mock AI response to: “{question}”. The streaming is working!"


def environ(**settings: str) -> dict[str, str]:
    return chatrelay_env(PYTHONIOENCODING="utf-8", **settings)


@dataclass
class Live:
    """A `chatrelay serve` subprocess: its URL and its working directory."""

    url: str
    workdir: Path

    def messages(self, conversation: str, count: int) -> list[dict[str, Any]]:
        """The stored messages, once there are `count` (the reply is stored as its stream
        ends, which may be a moment after the client has exited)."""
        deadline = time.monotonic() + 10
        while True:
            response = httpx.get(f"{self.url}/conversations/{conversation}", timeout=5)
            messages: list[dict[str, Any]] = response.json().get("messages", [])
            if len(messages) >= count or time.monotonic() > deadline:
                return messages
            time.sleep(0.05)


def _stop(process: Process) -> None:
    process.send(signal.SIGTERM)
    try:
        process.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.send(signal.SIGKILL)
        process.proc.wait(timeout=10)


@contextmanager
def serving(workdir: Path, **settings: str) -> Iterator[Live]:
    """A server on a free port, healthy; stopped (and waited for) afterwards."""
    for _ in range(3):
        port = free_port()
        process = start_chatrelay("chat-server", port, environ(**settings), workdir)
        try:
            _wait_healthy(process, port)
            break
        except AssertionError:
            _stop(process)
            if "address already in use" not in process.output().lower():
                raise
    else:  # pragma: no cover - three port races in a row
        pytest.fail("no free port for the server")
    try:
        yield Live(f"http://127.0.0.1:{port}", workdir)
    finally:
        _stop(process)


def _wait_healthy(process: Process, port: int) -> None:
    listening = f"Uvicorn running on http://127.0.0.1:{port} "
    deadline = time.monotonic() + 30
    while True:
        assert process.alive, f"the server exited:\n{process.output()}"
        if listening in process.output():
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
        assert time.monotonic() < deadline, f"the server did not start:\n{process.output()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("chat-server")
    with serving(
        workdir,
        CHATRELAY_MOCK_DELAY_S="0.001",
        DATABASE_URL=f"sqlite+aiosqlite:///{workdir}/chat.db",
    ) as live:
        yield live


def chatrelay(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatrelay", *args]


def chat(
    live: Live, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`chatrelay chat --url <server> ARGS`, to its end; `stdin` is piped when given."""
    return subprocess.run(
        chatrelay("chat", "--url", live.url, *args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        env=env or environ(),
        cwd=live.workdir,
    )


def test_a_question_is_streamed_to_stdout(server: Live) -> None:
    result = chat(server, "Hello", "there")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        mock_reply("Hello there") + "\n",
        "",
    )


def test_verbose_shows_the_usage_and_c_continues_the_conversation(server: Live) -> None:
    first = chat(server, "-v", "First question")
    assert first.returncode == 0, first.stderr
    usage = USAGE.fullmatch(first.stderr.strip())
    assert usage is not None, first.stderr
    assert int(usage[1]) > 0 and int(usage[2]) == len(mock_reply("First question").split(" "))
    conversation = usage[3]
    second = chat(server, "-c", conversation, "Second question")
    assert second.returncode == 0, second.stderr
    assert second.stdout == mock_reply("Second question") + "\n"
    messages = server.messages(conversation, 4)
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "First question"),
        ("assistant", mock_reply("First question")),
        ("user", "Second question"),
        ("assistant", mock_reply("Second question")),
    ]


def test_a_piped_stdin_is_the_question(server: Live) -> None:
    piped = chat(server, stdin="Piped\nquestion\n")
    # With a question on the command line, stdin is left alone (a script's must not block).
    given = chat(server, "Argument", stdin="not read")
    assert (piped.returncode, piped.stdout) == (0, mock_reply("Piped question") + "\n")
    assert (given.returncode, given.stdout) == (0, mock_reply("Argument") + "\n")


def _read_until(fd: int, enough: Callable[[bytes], bool], limit_s: float) -> bytes:
    data = b""
    deadline = time.monotonic() + limit_s
    while not enough(data):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {data!r} after {limit_s} s"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"stdout closed after {data!r}"
            data += chunk
    return data


def test_ctrl_c_stops_the_generation_on_the_server_and_exits_130(server: Live) -> None:
    conversation = f"ctrl-c-{uuid.uuid4().hex[:8]}"
    long_reply = json.dumps({"mock": {"words": 5000, "delay_s": 0.01}})  # 50 s if not stopped
    # A child inherits an ignored SIGINT (e.g. tests run in a background job): undo that.
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    args = ["--url", server.url, "-c", conversation, "--param", f"metadata={long_reply}"]
    proc = subprocess.Popen(
        chatrelay("chat", *args, "Tell me a long story"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environ(),
        cwd=server.workdir,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) if ignored else None,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # The reply arrives as it is generated: its first words are there long before its end.
        printed = _read_until(proc.stdout.fileno(), lambda d: d.count(b" ") >= 5, 20)
        proc.send_signal(signal.SIGINT)
        interrupted_at = time.monotonic()
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert time.monotonic() - interrupted_at < 5
    shown = (printed + rest).decode()
    assert shown.endswith("\n") and shown.startswith("Hello! This is a mock")
    assert "[stopped]" in err.decode()
    question, reply = server.messages(conversation, 2)
    assert (
        question["content"] == "Tell me a long story"
        and reply["role"] == "assistant"
        and reply["end_reason"] == "stopped"
    )
    assert reply["content"].startswith(shown.rstrip("\n"))  # what was shown, and no more than
    assert len(reply["content"].split(" ")) < 5000  # a little past it: the rest was never made


def test_interactive_mode_continues_one_conversation(server: Live) -> None:
    result = chat(server, "-i", "-v", stdin="First turn\n\nSecond turn\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == mock_reply("First turn") + "\n" + mock_reply("Second turn") + "\n"
    conversations = {match[3] for match in USAGE.finditer(result.stderr)}
    assert len(USAGE.findall(result.stderr)) == 2 and len(conversations) == 1, result.stderr
    messages = server.messages(conversations.pop(), 4)
    assert [m["content"] for m in messages if m["role"] == "user"] == ["First turn", "Second turn"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]


def test_a_failed_reply_or_refused_request_exits_1_with_the_reason_on_stderr(
    server: Live,
) -> None:
    failed = chat(server, "--param", 'metadata={"mock":{"fail_after":2}}', "Hi")
    refused = chat(server, "--model", "nope", "Hi")
    assert failed.returncode == 1
    assert failed.stdout == "Hello! This \n"  # the text so far, then the line ended
    assert "error: The AI provider is overloaded" in failed.stderr
    assert "(overloaded)" in failed.stderr
    assert refused.returncode == 1 and refused.stdout == ""
    assert "unknown_model, HTTP 400" in refused.stderr


def test_an_unreachable_server_is_reported(tmp_path: Path) -> None:
    result = chat(Live(f"http://127.0.0.1:{free_port()}", tmp_path), "Hi")
    assert result.returncode == 1
    assert "error: cannot reach http://127.0.0.1:" in result.stderr


def test_a_key_opens_a_server_with_api_key_auth(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    created = subprocess.run(
        chatrelay("keys", "create", "--name", "t"),
        env=environ(DATABASE_URL=database),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = created.stdout.strip()
    assert key.startswith("crk_")
    with serving(tmp_path, CHATRELAY_AUTH="api_key", DATABASE_URL=database) as live:
        without = chat(live, "Hi")
        with_option = chat(live, "--key", key, "Hi")
        with_variable = chat(live, "-v", "Hi", env=environ(CHATRELAY_KEY=key))
    assert without.returncode == 1
    assert "unauthorized, HTTP 401" in without.stderr and "--key" in without.stderr
    assert (with_option.returncode, with_option.stdout) == (0, mock_reply("Hi") + "\n")
    assert (with_variable.returncode, with_variable.stdout) == (0, mock_reply("Hi") + "\n")
    assert USAGE.search(with_variable.stderr)
    for result in (without, with_option, with_variable):
        assert key not in result.stdout + result.stderr
