"""`chatrelay serve` as a user runs it: a subprocess, configured by its environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

# The seed guide's frontend request, as curl would send it.
GUIDE_BODY = {
    "messages": [{"role": "user", "content": "Hello, are you streaming?"}],
    "max_tokens": 2048,
    "temperature": 0.7,
    "conversation_id": "video-call-42",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env(**extra: str) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CHATRELAY_", "ANTHROPIC_", "OPENAI_")) and k != "PORT"
    }
    return {**clean, "CHATRELAY_MOCK_DELAY_S": "0.001", **extra}


def chatrelay(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatrelay", *args]


class Server:
    """A `chatrelay serve` subprocess; `output` holds what it printed once it has exited."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.output = ""


@contextmanager
def running(args: list[str], environ: dict[str, str], port: int, cwd: Path) -> Iterator[Server]:
    proc = subprocess.Popen(
        args, env=environ, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = Server(proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        server.output = proc.communicate(timeout=10)[0]


def test_serve_with_no_key_answers_the_guides_request_from_the_mock(tmp_path: Path) -> None:
    port = free_port()
    with running(chatrelay("serve", "--port", str(port)), env(), port, tmp_path) as server:
        response = httpx.post(
            f"http://127.0.0.1:{port}/ai/stream/chat", json=GUIDE_BODY, timeout=10
        )
    output = server.output
    assert response.status_code == 200
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert any(d.startswith('{"content":"Hello! "}') for d in data)
    assert "provider=mock" in output and "model=mock" in output


def test_serve_takes_its_port_from_PORT_like_railway_sets_it(tmp_path: Path) -> None:
    port = free_port()
    with running(chatrelay("serve"), env(PORT=str(port)), port, tmp_path):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["status"] == "ok"


def test_settings_come_from_a_dotenv_file_too(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(f"PORT={port}\nCHATRELAY_PROVIDER=mock\n")
    with running(chatrelay("serve"), env(), port, tmp_path):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_anthropic_without_a_key_refuses_to_start_and_says_what_to_set(tmp_path: Path) -> None:
    result = subprocess.run(
        chatrelay("serve", "--port", str(free_port())),
        env=env(CHATRELAY_PROVIDER="anthropic"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0
    assert "ANTHROPIC_API_KEY" in result.stderr
    assert "CHATRELAY_PROVIDER=mock" in result.stderr


def test_an_invalid_setting_is_named(tmp_path: Path) -> None:
    result = subprocess.run(
        chatrelay("serve"),
        env=env(CHATRELAY_HEARTBEAT_S="soon"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0
    assert "CHATRELAY_HEARTBEAT_S" in result.stderr


def test_version_and_help() -> None:
    result = subprocess.run(chatrelay("--help"), capture_output=True, text=True, check=True)
    assert "serve" in result.stdout
    version = subprocess.run(chatrelay("--version"), capture_output=True, text=True, check=True)
    assert "0.1.0" in version.stdout


def test_a_bad_models_file_stops_the_server_naming_the_line(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[models.claude]\nprovider = "anthropic"\nmodel = claude-sonnet-5-5\n')
    result = subprocess.run(
        chatrelay("serve", "--port", str(free_port())),
        env=env(CHATRELAY_MODELS_FILE=str(models)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode != 0
    assert f"{models}: Invalid value (at line 3, column 9)" in result.stderr


def test_the_example_models_file_is_valid(tmp_path: Path) -> None:
    from chatrelay.models import load_models_file

    example = Path(__file__).parent.parent / "models.example.toml"
    specs, default = load_models_file(example)
    assert default in specs
    assert all(name in specs for spec in specs.values() for name in spec.fallbacks)


def test_a_database_that_cannot_be_migrated_stops_the_server_saying_why(tmp_path: Path) -> None:
    """`chatrelay serve` migrates in a child process first; when that fails, the server does
    not start, and the user sees the migration's own error."""
    import sqlite3

    db = tmp_path / "future.db"
    with sqlite3.connect(db) as connection:  # a schema from a newer chatrelay than this one
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        connection.execute("INSERT INTO alembic_version VALUES ('9999')")
    done = subprocess.run(
        chatrelay("serve", "--port", str(free_port())),
        env=env(DATABASE_URL=f"sqlite+aiosqlite:///{db}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "could not migrate the database" in done.stderr
    assert "9999" in done.stderr
