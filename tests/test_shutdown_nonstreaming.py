"""SIGTERM to a real `chatrelay serve` while non-streaming replies run (issue #15).

`/ai/chat` and `/v1/chat/completions` with `stream: false` collect their reply in the request's
own task, not in a hub generation; shutdown drains them as it drains streams: a reply that
finishes within the grace is answered normally, one still running at its end is answered 503
`server_restarting` (the project's error shape, or OpenAI's under /v1) with its partial reply
stored, a new request during the drain is 503 at once, and the process exits about as soon as
the grace is over.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from .processes import Process, chatrelay_env, launch_chatrelay

GRACE_S = 2
WORD_DELAY_S = 0.02


def body(words: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "go"}],
        "metadata": {"mock": {"words": words, "delay_s": WORD_DELAY_S}},
        **extra,
    }


def stored_reply(database: Path, conversation: str) -> tuple[str, str]:
    """The content and end reason of a conversation's assistant reply."""
    with sqlite3.connect(database) as db:
        [(content, reason)] = db.execute(
            "SELECT m.content, m.end_reason FROM messages m JOIN conversations c"
            " ON c.id = m.conversation_id WHERE m.role = 'assistant' AND c.id LIKE ?",
            (f"%.{conversation}",),
        ).fetchall()
    return str(content), str(reason)


async def test_sigterm_drains_non_streaming_replies(tmp_path: Path) -> None:
    database = tmp_path / "chat.db"
    env = chatrelay_env(
        DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        CHATRELAY_AUTH="none",
        CHATRELAY_SHUTDOWN_GRACE_S=str(GRACE_S),
        CHATRELAY_LOG_FORMAT="text",
    )
    started: list[Process] = []
    try:
        process, port, _ = await launch_chatrelay("chatrelay", env, tmp_path, started, set())
        url = f"http://127.0.0.1:{port}"
        async with (
            httpx.AsyncClient(base_url=url, timeout=30) as client,
            httpx.AsyncClient(base_url=url, timeout=30) as idle,
        ):
            assert (await idle.get("/healthz")).status_code == 200  # a kept-alive connection
            # 8 s replies (longer than the grace) on both surfaces, and a 1 s one.
            slow_chat = asyncio.create_task(
                client.post("/ai/chat", json=body(400, conversation_id="slow"))
            )
            slow_v1 = asyncio.create_task(
                client.post("/v1/chat/completions", json={**body(400), "stream": False})
            )
            await asyncio.sleep(0.5)
            quick = asyncio.create_task(
                client.post("/ai/chat", json=body(50, conversation_id="quick"))
            )
            await asyncio.sleep(0.1)
            process.send(signal.SIGTERM)
            terminated = time.monotonic()
            await asyncio.sleep(0.3)

            # During the drain, a new request (on a connection opened before) is refused.
            refused = await idle.post("/ai/chat", json=body(5))
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "server_restarting"

            answered = await asyncio.wait_for(asyncio.gather(slow_chat, slow_v1, quick), 15)
            chat_cut, v1_cut, quick_done = answered
            code = await process.wait(GRACE_S + 5)
            took = time.monotonic() - terminated
            print(f"shutdown took {took:.2f} s with a {GRACE_S} s grace")

        # Finished within the grace: the normal answer.
        assert quick_done.status_code == 200, quick_done.text
        assert quick_done.json()["stop_reason"] == "end_turn"
        # Cut at the grace's end: 503 server_restarting, in each surface's error shape.
        assert chat_cut.status_code == 503, chat_cut.text
        error = chat_cut.json()["error"]
        assert error["code"] == "server_restarting"
        assert error["request_id"] == chat_cut.headers["x-request-id"]
        assert v1_cut.status_code == 503, v1_cut.text
        assert v1_cut.json() == {
            "error": {
                "message": "The server is restarting; send the request again in a moment",
                "type": "api_error",
                "param": None,
                "code": "server_restarting",
            }
        }
        # The partial reply is stored as a cut stream's is; the quick one whole.
        content, reason = stored_reply(database, "slow")
        assert reason == "server_restarting"
        assert 0 < len(content.split()) < 400
        assert stored_reply(database, "quick")[1] == "completed"
        assert code == 0, f"exit code {code}"
        assert took < GRACE_S + 2, f"shutdown took {took:.1f} s with a {GRACE_S} s grace"
        assert "Traceback" not in process.output()
    finally:
        for process in started:
            code = await process.stop()
            print(f"----- {process.name} (exit {code}) -----\n{process.output()}")
