"""One behaviour table, run over every streaming surface (issue 16).

Each surface is one row of `SURFACES`: how to POST a chat to it, and how to read its frames
into what a user sees (text, an error code, a finish reason, the end marker). Each behaviour
is one test, parametrized over the rows, and asserts only what crosses the HTTP API:

- completed: the whole reply, then the surface's end marker;
- stopped: `POST /ai/stream/{X-Stream-ID}/stop` half-way ends the stream at once;
- resumed: after a dropped connection, `GET /ai/stream/{id}` with `Last-Event-ID` gives the
  rest, in that surface's own format, with no gap and no duplicate;
- drained: SIGTERM to a real `chatrelay serve` ends a running stream after the shutdown grace
  with the surface's error frame (`server_restarting`) and end marker; the process exits;
- failed: an upstream failure half-way ends the stream with the surface's error frame and
  end marker, and it never looks complete;
- counted: `chatrelay_active_streams` is 1 while the stream runs and 0 after it.

The contract this holds every surface to, whatever its wire format: every frame carries an
SSE `id:` line (OpenAI's and Anthropic's SDKs ignore it; Anthropic's frames of one event
share its id), and a stream is resumed in the format of the surface that started it. A new
surface (the Responses API) is one more `Surface` row: its path, its request body and its
frame reader.

Everything runs against the mock provider (`metadata.mock`), in-process on a real uvicorn
(`conftest.serve`) except the drain, which needs a process to send SIGTERM to.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import make_settings, serve
from .processes import Process, chatrelay_env, running_chatrelay
from .test_operations import samples, value

# --- reading SSE frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One SSE frame as it was on the wire: its `id:` and `event:` lines (None when absent)."""

    id: str | None
    event: str | None
    data: str

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            raise AssertionError(f"frame data is not JSON: {self}") from None


async def frames_of(response: httpx.Response) -> AsyncGenerator[Frame, None]:
    """The frames of an SSE response, in order; comments (`: ping`) are skipped, and a frame
    not closed by a blank line when the body ends is dropped, as an EventSource drops it."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if fields or data:
                yield Frame(fields.get("id"), fields.get("event"), "\n".join(data))
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, rest = line.partition(":")
            rest = rest[1:] if rest.startswith(" ") else rest
            if name == "data":
                data.append(rest)
            else:
                fields[name] = rest


# What a user sees in a frame, whatever the surface: ("text", piece), ("error", code),
# ("finish", reason) or ("end", "") for the end marker. Frames with none (a start frame, a
# role chunk, a usage chunk) read as [].
Seen = tuple[str, str]
TEXT, ERROR, FINISH, END = "text", "error", "finish", "end"


def read_seed(frame: Frame) -> list[Seen]:
    """`/ai/stream/chat`: `{"content"}` frames, `{"error", "code"}` frames, named `start`,
    `thinking` and `end` frames, then `data: [DONE]`."""
    if frame.event is None:
        if frame.data == "[DONE]":
            return [(END, "")]
        payload = frame.json()
        if isinstance(payload, dict) and list(payload) == ["content"]:
            return [(TEXT, payload["content"])]
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return [(ERROR, payload["code"])]
    elif frame.event == "end":
        return [(FINISH, frame.json()["reason"])]
    elif frame.event in ("start", "thinking"):
        frame.json()
        return []
    raise AssertionError(f"not a frame of /ai/stream/chat: {frame}")


def read_openai(frame: Frame) -> list[Seen]:
    """`/v1/chat/completions`: `chat.completion.chunk` objects, an error chunk
    `{"error": {...}}`, then `data: [DONE]`; no `event:` names (the SDKs read only `data:`)."""
    if frame.event is None:
        if frame.data == "[DONE]":
            return [(END, "")]
        payload = frame.json()
        if isinstance(payload, dict) and list(payload) == ["error"]:
            return [(ERROR, payload["error"]["code"])]
        if isinstance(payload, dict) and payload.get("object") == "chat.completion.chunk":
            seen: list[Seen] = []
            for choice in payload["choices"]:
                if choice["delta"].get("content"):
                    seen.append((TEXT, choice["delta"]["content"]))
                if choice["finish_reason"] is not None:
                    seen.append((FINISH, choice["finish_reason"]))
            return seen
    raise AssertionError(f"not a chat.completion.chunk frame of /v1/chat/completions: {frame}")


def read_anthropic(frame: Frame) -> list[Seen]:
    """`/v1/messages`: Anthropic's named events, each `event:` equal to its data's `type`;
    a reply ends with `message_delta` (its stop reason) and `message_stop`, or with
    `event: error`, which is its end (the SDK raises it; nothing follows)."""
    payload = frame.json() if frame.event is not None else None
    if not isinstance(payload, dict) or payload.get("type") != frame.event:
        raise AssertionError(f"not an event of /v1/messages: {frame}")
    if frame.event == "content_block_delta":
        delta = payload["delta"]
        return [(TEXT, delta["text"])] if delta["type"] == "text_delta" else []
    if frame.event == "message_delta":
        return [(FINISH, payload["delta"]["stop_reason"])]
    if frame.event == "message_stop":
        return [(END, "")]
    if frame.event == "error":
        return [(ERROR, payload["error"]["type"]), (END, "")]
    if frame.event in ("message_start", "content_block_start", "content_block_stop", "ping"):
        return []
    raise AssertionError(f"not an event of /v1/messages: {frame}")


def read_responses(frame: Frame) -> list[Seen]:
    """`/v1/responses`: named events (`event:` is the data's `type`), each numbered by its
    `sequence_number`; the last is `response.completed`, `response.incomplete` or
    `response.failed` (no `[DONE]`: the Responses API sends none)."""
    payload = frame.json()
    kind = payload.get("type") if isinstance(payload, dict) else None
    if (
        frame.event is None
        or kind != frame.event
        or not isinstance(payload.get("sequence_number"), int)
    ):
        raise AssertionError(f"not an event of /v1/responses: {frame}")
    if kind == "response.output_text.delta":
        return [(TEXT, payload["delta"])]
    if kind in ("response.completed", "response.incomplete"):
        return [(FINISH, payload["response"]["status"]), (END, "")]
    if kind == "response.failed":
        return [(ERROR, payload["response"]["error"]["code"]), (END, "")]
    if kind.startswith("response."):
        return []
    raise AssertionError(f"not an event of /v1/responses: {frame}")


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """One streaming surface: how to ask it for a reply, and how to read its frames."""

    name: str
    path: str
    body: Callable[[list[dict[str, Any]], dict[str, Any]], dict[str, Any]]
    read: Callable[[Frame], list[Seen]]  # raises AssertionError on a frame of another format
    # The finish reason the surface shows for each outcome ("completed", "stopped", "error"),
    # or None if it shows none (then its error frame says it all).
    finish: Mapping[str, str | None]
    # How the surface says each of chatrelay's error codes, where its own vocabulary differs.
    codes: Mapping[str, str] = field(default_factory=dict)
    # Several frames of one event share its id (a block's stop and the next one's start).
    shared_ids: bool = False


SURFACES = [
    Surface(
        name="seed",
        path="/ai/stream/chat",
        body=lambda messages, mock: {"messages": messages, "metadata": {"mock": mock}},
        read=read_seed,
        finish={"completed": "completed", "stopped": "stopped", "error": "error"},
    ),
    Surface(
        name="openai",
        path="/v1/chat/completions",
        body=lambda messages, mock: {
            "model": "mock",
            "messages": messages,
            "stream": True,
            "metadata": {"mock": mock},
        },
        read=read_openai,
        # A stopped reply ends as OpenAI's own streams end when cut short on purpose.
        finish={"completed": "stop", "stopped": "stop", "error": None},
    ),
    Surface(
        name="anthropic",
        path="/v1/messages",
        body=lambda messages, mock: {
            "model": "mock",
            "max_tokens": 4096,
            "messages": messages,
            "stream": True,
            "metadata": {"mock": mock},
        },
        read=read_anthropic,
        finish={"completed": "end_turn", "stopped": "end_turn", "error": None},
        # Anthropic's error types: both mean "come back in a moment".
        codes={"overloaded": "overloaded_error", "server_restarting": "overloaded_error"},
        shared_ids=True,
    ),
    Surface(
        name="responses",
        path="/v1/responses",
        body=lambda messages, mock: {
            "model": "mock",
            "input": messages,
            "stream": True,
            "metadata": {"mock": mock},
        },
        read=read_responses,
        # A stopped response is one cancelled as the client asked.
        finish={"completed": "completed", "stopped": "cancelled", "error": None},
        shared_ids=True,
    ),
]

each_surface = pytest.mark.parametrize("surface", SURFACES, ids=[s.name for s in SURFACES])

MESSAGES = [{"role": "user", "content": "Tell me something"}]


def reply_of(words: int) -> str:
    """A mock reply of `words` pieces ("w0 ", "w1 ", ..., "wN"), so the text is known."""
    return " ".join(f"w{i}" for i in range(words))


def mock(words: int, delay_s: float, **more: Any) -> dict[str, Any]:
    return {"reply": reply_of(words), "delay_s": delay_s, **more}


@dataclass
class Reading:
    """The frames one client read of one stream, and what the surface says they show."""

    surface: Surface
    frames: list[Frame] = field(default_factory=list)
    seen: list[list[Seen]] = field(default_factory=list)  # one list per frame

    def add(self, frame: Frame) -> None:
        self.seen.append(self.surface.read(frame))
        self.frames.append(frame)

    def of(self, kind: str) -> list[str]:
        return [value for seen in self.seen for k, value in seen if k == kind]

    @property
    def text(self) -> str:
        return "".join(self.of(TEXT))

    @property
    def ended(self) -> bool:
        return bool(self.seen) and (END, "") in self.seen[-1]

    def assert_ends(self, outcome: str, code: str | None = None) -> None:
        """It ends as the surface ends `outcome`: an error frame with `code` (if given)
        after the last text, the surface's finish reason, then the end marker, once, last."""
        name = self.surface.name
        code = self.surface.codes.get(code, code) if code is not None else None
        ends = [i for i, seen in enumerate(self.seen) if (END, "") in seen]
        assert ends == [len(self.frames) - 1], (
            f"{name}: the end marker must be the last frame, once; the last frames were"
            f" {self.frames[-3:]}"
        )
        assert self.of(ERROR) == ([code] if code else []), f"{name}: {self.frames[-4:]}"
        finish = self.surface.finish[outcome]
        assert self.of(FINISH) == ([] if finish is None else [finish]), (
            f"{name}: {self.frames[-4:]}"
        )
        if code is not None:
            error_at = next(i for i, seen in enumerate(self.seen) if (ERROR, code) in seen)
            assert all(k != TEXT for seen in self.seen[error_at:] for k, _ in seen), (
                f"{name}: text after the error frame"
            )


@asynccontextmanager
async def posted(
    client: httpx.AsyncClient,
    url: str,
    surface: Surface,
    mock_options: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[Frame]]]:
    """POST a chat to `surface`; the 200 response and its frames. Leaving the block before
    the end drops the connection."""
    body = surface.body(MESSAGES, mock_options)
    async with client.stream(
        "POST", f"{url}{surface.path}", json=body, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
        assert response.status_code == 200, f"{surface.name}: {response.text}"
        assert response.headers["content-type"].startswith("text/event-stream")
        async with aclosing(frames_of(response)) as frames:
            yield response, frames


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh in-process server with the mock provider (each test counts its own streams)."""
    settings = make_settings(
        provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/chat.db"
    )
    async with serve(settings) as base:
        yield base


# --- the behaviours ----------------------------------------------------------------------------


@each_surface
async def test_completed(surface: Surface, client: httpx.AsyncClient, url: str) -> None:
    reading = Reading(surface)
    async with asyncio.timeout(10), posted(client, url, surface, mock(20, 0.002)) as (_, frames):
        async for frame in frames:
            reading.add(frame)
    assert reading.text == reply_of(20)
    reading.assert_ends("completed")


@each_surface
async def test_stopped(surface: Surface, client: httpx.AsyncClient, url: str) -> None:
    words, delay = 100, 0.02  # 2 s of reply
    reading = Reading(surface)
    async with asyncio.timeout(10), posted(client, url, surface, mock(words, delay)) as (r, frames):
        stream_id = r.headers["x-stream-id"]
        stop: httpx.Response | None = None
        asked_at = 0.0
        async for frame in frames:
            reading.add(frame)
            if stop is None and len(reading.of(TEXT)) == 5:
                asked_at = time.monotonic()
                stop = await client.post(f"{url}/ai/stream/{stream_id}/stop")
        ended_at = time.monotonic()
    assert stop is not None and stop.status_code == 200, stop and stop.text
    assert stop.json() == {"stream_id": stream_id, "status": "stopped"}
    reading.assert_ends("stopped")
    # It ended at the Stop, well before the reply would have: with part of the text only.
    assert ended_at - asked_at < 0.5, f"{surface.name}: ended {ended_at - asked_at:.2f} s later"
    assert reply_of(words).startswith(reading.text)
    assert 5 <= len(reading.of(TEXT)) < words / 2


@each_surface
async def test_resumed_after_a_dropped_connection(
    surface: Surface, client: httpx.AsyncClient, url: str
) -> None:
    words = 40
    before, after = Reading(surface), Reading(surface)
    async with asyncio.timeout(10):
        # A grace to resume in: OpenAI's clients never resume, so theirs is 0 unless asked.
        grace = {"x-resume-grace": "10"}
        async with posted(client, url, surface, mock(words, 0.02), grace) as (response, frames):
            stream_id = response.headers["x-stream-id"]
            async for frame in frames:
                before.add(frame)
                if len(before.of(TEXT)) == 5:
                    break  # the connection drops here, mid-reply
        missing = [f for f in before.frames if f.id is None]
        assert not missing, (
            f"{surface.name}: frames without an SSE `id:` line, so a client cannot say where"
            f" to resume: {missing[:2]}"
        )
        last_id = before.frames[-1].id
        assert last_id is not None
        async with client.stream(
            "GET", f"{url}/ai/stream/{stream_id}", headers={"last-event-id": last_id}
        ) as resumed:
            if resumed.status_code != 200:
                await resumed.aread()
            assert resumed.status_code == 200, f"{surface.name}: {resumed.text}"
            async for frame in frames_of(resumed):
                after.add(frame)  # in the format of the surface that started the stream
    assert after.frames, f"{surface.name}: the resume gave no frame"
    ids = [f.id for f in before.frames + after.frames]
    assert None not in ids, f"{surface.name}: resumed frames without an `id:` line"
    numbers = [int(i) for i in ids if i is not None]
    if surface.shared_ids:
        # Frames of one event share its id: the ids never go back, skip none, and the resume
        # starts after the last id read.
        assert numbers == sorted(numbers), f"{surface.name}: ids go back: {ids}"
        assert sorted(set(numbers)) == list(range(numbers[0], numbers[-1] + 1)), (
            f"{surface.name}: ids across the drop must run on with no gap: {ids}"
        )
        assert int(after.frames[0].id or 0) > int(last_id), (
            f"{surface.name}: the resume repeats frames of id {last_id}: {ids}"
        )
        if surface.name == "responses":
            # Its own numbering, too, runs on across the drop with no gap and no duplicate.
            order = [f.json()["sequence_number"] for f in before.frames + after.frames]
            assert order == list(range(len(order))), f"{surface.name}: sequence numbers {order}"
    else:
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (
            f"{surface.name}: ids across the drop must run on with no gap and no duplicate: {ids}"
        )
    assert before.text + after.text == reply_of(words)
    after.assert_ends("completed")


@each_surface
async def test_failed_half_way_upstream(
    surface: Surface, client: httpx.AsyncClient, url: str
) -> None:
    words = 20
    reading = Reading(surface)
    failing = mock(words, 0.005, fail_after=3, fail_code="overloaded")
    async with asyncio.timeout(10), posted(client, url, surface, failing) as (_, frames):
        async for frame in frames:
            reading.add(frame)
    assert reading.text == "w0 w1 w2 "  # the three pieces before the failure, then nothing
    reading.assert_ends("error", code="overloaded")


@each_surface
async def test_counted_in_the_active_streams_gauge_while_it_runs(
    surface: Surface, client: httpx.AsyncClient, url: str
) -> None:
    async def active() -> float:
        return value(samples((await client.get(f"{url}/metrics")).text), "chatrelay_active_streams")

    assert await active() == 0
    reading = Reading(surface)
    async with asyncio.timeout(10), posted(client, url, surface, mock(30, 0.03)) as (_, frames):
        async for frame in frames:
            reading.add(frame)
            if len(reading.of(TEXT)) == 3:
                assert await active() == 1, f"{surface.name}: a running stream is not counted"
    reading.assert_ends("completed")
    for _ in range(100):  # its bookkeeping may finish just after the end marker
        if (now := await active()) == 0:
            break
        await asyncio.sleep(0.02)
    assert now == 0, f"{surface.name}: still counted 2 s after its end marker"


# --- drained on SIGTERM (a real process) -------------------------------------------------------

GRACE_S = 1.0


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[tuple[Process, str]]:
    env = chatrelay_env(
        CHATRELAY_PROVIDER="mock",
        CHATRELAY_SHUTDOWN_GRACE_S=str(GRACE_S),
        CHATRELAY_LOG_FORMAT="text",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
    )
    async with running_chatrelay(env, tmp_path) as running:
        yield running


@each_surface
async def test_drained_on_sigterm(
    surface: Surface, client: httpx.AsyncClient, process: tuple[Process, str]
) -> None:
    server, url = process
    words = 400  # 10 s of reply, far longer than the grace
    reading = Reading(surface)
    terminated: float | None = None
    async with asyncio.timeout(15), posted(client, url, surface, mock(words, 0.025)) as (_, frames):
        async for frame in frames:
            reading.add(frame)
            if terminated is None and len(reading.of(TEXT)) == 5:
                server.send(signal.SIGTERM)
                terminated = time.monotonic()
        ended_at = time.monotonic()
    assert terminated is not None, f"{surface.name}: ended before any SIGTERM: {reading.frames}"
    code = await server.wait(terminated + GRACE_S + 2 - time.monotonic())
    took = time.monotonic() - terminated
    reading.assert_ends("error", code="server_restarting")
    # The stream ran on for the grace, then was ended; the reply was cut, not completed.
    assert GRACE_S - 0.3 < ended_at - terminated < GRACE_S + 1.5, (
        f"{surface.name}: ended {ended_at - terminated:.2f} s after SIGTERM, grace {GRACE_S} s"
    )
    assert reply_of(words).startswith(reading.text) and len(reading.of(TEXT)) < words
    # The process is gone within the grace and a bit, cleanly.
    assert code == 0, f"exit code {code} {took:.2f} s after SIGTERM (grace {GRACE_S} s)"
