"""Loopback fake of the Anthropic Messages streaming API (``POST /v1/messages``).

Written on a raw :class:`asyncio.Protocol` per connection, so that it

* notices at once when the client goes away, even while a response is stalled and
  nothing is being written (``eof_received`` / ``connection_lost``), and
* stays cheap enough to push thousands of concurrent streams on a small machine:
  frames are pre-encoded bytes (delta frames are cached per delta list), one
  ``transport.write`` per frame, timing with ``loop.call_soon``/``loop.call_later``
  (no task per stream), no per-frame logging, and write flow control is honoured.

Also ``POST /v1/messages/count_tokens``, answered ``{"input_tokens": fake.count_tokens}``.

Wire format (see docs in ``/work/shared/reference/wire-formats.md`` §1): HTTP/1.1 with
keep-alive, ``200`` + ``content-type: text/event-stream; charset=utf-8`` +
``request-id: req_fake_<n>`` + ``transfer-encoding: chunked``; every SSE frame has an
``event:`` line equal to ``data.type``; message_start → content_block_start →
content_block_delta… → content_block_stop → message_delta → message_stop, then the
zero-length chunk. Error statuses get Anthropic's JSON error body with Content-Length.

Usage::

    async with FakeAnthropic() as fake:
        fake.enqueue(Scenario(deltas=["a", "b"], interval=0.01))
        client = anthropic.AsyncAnthropic(api_key="k", base_url=fake.base_url)

    with FakeAnthropic.in_thread() as fake:   # own loop in a daemon thread
        ...

Standalone (for benchmarks)::

    python -m tests.fakes.anthropic_upstream --port 9100 --deltas 100 --interval 0.04
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from tests.fakes.prompt_cache import PromptCache

__all__ = [
    "FakeAnthropic",
    "RecordedRequest",
    "Scenario",
    "ToolUse",
    "error_type_for_status",
    "main",
]


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass
class Scenario:
    """How the fake answers one request. All ``*_after`` counts are numbers of deltas sent."""

    deltas: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    interval: float = 0.0  # seconds between content_block_delta frames (0: next loop turn)
    first_token_delay: float = 0.0  # after message_start+content_block_start, before 1st delta
    headers_delay: float = 0.0  # before the response status line is sent
    # != 200: Anthropic's JSON error body for that status, with Content-Length, no stream.
    status: int = 200
    error_message: str = "fake error"
    retry_after: str | None = None  # 'retry-after' header value on error responses
    retry_after_ms: str | None = None  # 'retry-after-ms' header value on error responses
    # After N deltas send `event: error` and end the body (no message_stop).
    error_event_after: int | None = None
    error_type: str = "overloaded_error"  # error.type of the in-stream error event
    # After N deltas end the body cleanly (zero-length chunk), no message_delta/message_stop.
    truncate_after: int | None = None
    # After N deltas abort the TCP connection mid-body (transport.abort()).
    drop_after: int | None = None
    # After N deltas send nothing more; keep the connection open until the client goes away.
    stall_after: int | None = None
    ping_every: int | None = None  # send `event: ping` after every N deltas
    stop_reason: str = "end_turn"
    input_tokens: int = 10
    output_tokens: int | None = None  # default: len(deltas)
    model: str | None = None  # echoed in message_start; default: the request's model
    # Extra response headers (any status), e.g. {"x-should-retry": "false"}.
    extra_headers: dict[str, str] = field(default_factory=dict)
    # A thinking block (index 0) sent before the text block (then index 1), as extended
    # thinking streams it: thinking_delta frames, a signature_delta, content_block_stop.
    thinking: list[str] = field(default_factory=list)
    # tool_use blocks sent after the text (none: no text block at all when `deltas` is
    # empty), each input_json_delta piece a step of its own, `interval` apart.
    tool_calls: list[ToolUse] = field(default_factory=list)
    # Prompt cache counts in message_start's usage (left out when None, as older models do).
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


@dataclass
class ToolUse:
    """One tool_use block: its id, name and the pieces of its input's JSON text."""

    id: str
    name: str
    pieces: list[str]


@dataclass(eq=False)
class RecordedRequest:
    """One request the fake received, and what became of its response."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]  # parsed JSON ({} if absent or not JSON)
    received_at: float  # time.monotonic() when the whole request had arrived
    finished_at: float | None = None  # when the fake finished sending the full response
    # When the client closed the connection while this response was still being sent or
    # was stalled (None if the response ended before the client went away).
    disconnected_at: float | None = None
    deltas_sent: int = 0
    request_id: str = ""  # the `request-id` header sent back ("req_fake_<n>")
    connection_id: int = 0  # same number for requests served on one kept-alive connection
    scenario: Scenario | None = None  # None for requests the fake rejected (404, bad JSON)
    # "complete" | "error_event" | "truncated" | "dropped" | "http_error" | "not_found"
    # | "bad_request" | "client_gone" | "server_closed" ("" while still in progress)
    outcome: str = ""
    # Set when the response ends for any reason (finished, dropped, client gone, fake stopped).
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @property
    def api_key(self) -> str | None:
        """The key from `authorization: Bearer ...` or `x-api-key`."""
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return self.headers.get("x-api-key")

    def is_done(self) -> bool:
        return self.done.is_set()

    async def wait_closed(self, timeout: float | None = 5.0) -> bool:  # noqa: ASYNC109
        """Wait until the response has ended. Works from the fake's loop or any other loop.

        Returns True if it ended, False on timeout.
        """
        if self.done.is_set():
            return True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always called from a coroutine
            running = None
        try:
            if running is not None and running is self._loop:
                await asyncio.wait_for(self._closed.wait(), timeout)
            else:  # another thread's loop: poll the thread-safe event (cheap, 2 ms steps)
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self.done.is_set():
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
                    await asyncio.sleep(0.002)
        except TimeoutError:
            return False
        return True

    def wait(self, timeout: float | None = 5.0) -> bool:
        """Blocking, thread-safe wait (do not call it on the fake's own loop thread)."""
        return self.done.wait(timeout)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type_for_status(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


# --------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------

_TERMINATOR = b"0\r\n\r\n"
_MAX_HEAD = 64 * 1024


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(event_type: str, data: dict[str, Any]) -> bytes:
    """One SSE frame wrapped in one HTTP chunk."""
    return _chunk(f"event: {event_type}\ndata: {_dumps(data)}\n\n".encode())


_PING = _sse("ping", {"type": "ping"})
_BLOCK_START = _sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_MESSAGE_STOP_END = _sse("message_stop", {"type": "message_stop"}) + _TERMINATOR


def _delta_frame(text: str, index: int = 0) -> bytes:
    return _sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        },
    )


def _tool_steps(calls: list[ToolUse], first_index: int) -> list[bytes]:
    """The frames of tool_use blocks, one step per input piece (the block's start with its
    first piece, the stop with the next block's start)."""
    steps: list[bytes] = []
    text = first_index - 1  # the text block before them, if any
    stop = {"type": "content_block_stop", "index": text}
    pending = _sse("content_block_stop", stop) if text >= 0 else b""
    for offset, call in enumerate(calls):
        index = first_index + offset
        block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
        start = {"type": "content_block_start", "index": index, "content_block": block}
        empty = {"type": "input_json_delta", "partial_json": ""}
        head = (
            pending
            + _sse("content_block_start", start)
            + _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": empty},
            )
        )
        pieces = call.pieces or [""]
        for number, piece in enumerate(pieces):
            delta = {"type": "input_json_delta", "partial_json": piece}
            frame = _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
            steps.append((head if number == 0 else b"") + frame)
        pending = _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    return steps


def _thinking_block(pieces: list[str]) -> bytes:
    """A whole thinking block at index 0, as extended thinking streams it."""
    start = {"type": "thinking", "thinking": "", "signature": ""}
    frames = [
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start},
        )
    ]
    for piece in pieces:
        delta = {"type": "thinking_delta", "thinking": piece}
        frames.append(
            _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        )
    signature = {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}
    frames.append(
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": signature})
    )
    frames.append(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    return b"".join(frames)


def _start_usage(sc: Scenario, cache: PromptCache | None, body: dict[str, Any]) -> dict[str, int]:
    if cache is not None:  # counted as the cache saw this request
        return {**cache.usage(body), "output_tokens": 1}
    usage = {"input_tokens": sc.input_tokens, "output_tokens": 1}
    if sc.cache_read_input_tokens is not None:
        usage["cache_read_input_tokens"] = sc.cache_read_input_tokens
    if sc.cache_creation_input_tokens is not None:
        usage["cache_creation_input_tokens"] = sc.cache_creation_input_tokens
    return usage


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------------------------
# Per-connection protocol
# --------------------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One client connection: parses HTTP/1.1 requests, serves one response at a time."""

    def __init__(self, fake: FakeAnthropic, conn_id: int) -> None:
        self._fake = fake
        self._id = conn_id
        self._loop = fake._loop_or_raise()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._lost = False
        self._paused = False
        self._server_closing = False
        self._keep_alive = True
        # the response in progress
        self._rec: RecordedRequest | None = None
        self._sc: Scenario | None = None
        self._frames: tuple[bytes, ...] = ()
        self._last_index = 0  # of the last content block: what the end closes
        self._i = 0
        self._timer: asyncio.Handle | None = None
        self._resume_step = False  # a step is waiting for resume_writing()

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._fake._conns.add(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._rec is None:
            self._process()

    def eof_received(self) -> bool:
        # The client closed its side. HTTP clients don't half-close, so treat it as gone.
        self._client_gone()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._client_gone()
        self._fake._conn_closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._resume_step and self._rec is not None:
            self._resume_step = False
            self._step()

    # -- request parsing --------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and start the next complete request in the buffer, if any."""
        if self._rec is not None or self._lost or self._transport is None:
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._transport.abort()
            return
        try:
            head = bytes(buf[:end]).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
        except ValueError:
            self._transport.abort()
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._transport.abort()  # the SDK always sends Content-Length
            return
        body_start = end + 4
        if len(buf) < body_start + length:
            return  # wait for the rest of the body
        raw_body = bytes(buf[body_start : body_start + length])
        del buf[: body_start + length]

        conn_hdr = headers.get("connection", "").lower()
        self._keep_alive = not (
            "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
        )
        self._fake._handle(self, method, target, headers, raw_body)

    # -- response machinery -----------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def _begin(self, rec: RecordedRequest, sc: Scenario) -> None:
        self._rec = rec
        self._sc = sc
        self._i = 0
        if sc.headers_delay > 0:
            self._timer = self._loop.call_later(sc.headers_delay, self._send_head)
        else:
            self._send_head()

    def _send_head(self) -> None:
        self._timer = None
        rec, sc = self._rec, self._sc
        assert rec is not None and sc is not None
        if sc.status != 200:
            self._send_error_response(rec, sc.status, sc.error_message, sc)
            return
        if rec.body.get("stream") is not True:
            self._send_message_json(rec, sc)
            return
        headers = [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
            ("request-id", rec.request_id),
            ("cache-control", "no-cache"),
            ("connection", "keep-alive" if self._keep_alive else "close"),
            *sc.extra_headers.items(),
        ]
        self._write(_head(200, headers))
        self._write(
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake_" + rec.request_id[9:],
                        "type": "message",
                        "role": "assistant",
                        "model": sc.model or rec.body.get("model") or "claude-fake",
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": _start_usage(sc, self._fake.cache, rec.body),
                    },
                },
            )
        )
        if sc.thinking:
            self._write(_thinking_block(sc.thinking))
            start = {"type": "text", "text": ""}
            self._write(
                _sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": 1, "content_block": start},
                )
            )
            self._frames = tuple(_delta_frame(text, 1) for text in sc.deltas)
            self._last_index = 1
        elif sc.deltas or not sc.tool_calls:
            self._write(_BLOCK_START)
            self._frames = self._fake._delta_frames(sc.deltas)
            self._last_index = 0
        else:
            self._frames = ()
            self._last_index = -1
        if sc.tool_calls:
            steps = _tool_steps(sc.tool_calls, self._last_index + 1)
            self._frames = (*self._frames, *steps)
            self._last_index += len(sc.tool_calls)
        if sc.first_token_delay > 0:
            self._timer = self._loop.call_later(sc.first_token_delay, self._step)
        else:
            self._step()

    def _step(self) -> None:
        """Send the next delta (or end the stream). Runs once per delta."""
        self._timer = None
        rec, sc = self._rec, self._sc
        if rec is None or sc is None or self._lost:
            return
        if self._paused:
            self._resume_step = True
            return
        i = self._i
        if sc.error_event_after is not None and i >= sc.error_event_after:
            err = {"type": "error", "error": {"type": sc.error_type, "message": sc.error_message}}
            self._write(_sse("error", err) + _TERMINATOR)
            self._finish("error_event")
            return
        if sc.truncate_after is not None and i >= sc.truncate_after:
            self._write(_TERMINATOR)
            self._finish("truncated")
            return
        if sc.drop_after is not None and i >= sc.drop_after:
            assert self._transport is not None
            self._finish("dropped", reuse=False)
            self._transport.abort()
            return
        if sc.stall_after is not None and i >= sc.stall_after:
            return  # nothing more; ended by the client going away or by stop()
        frames = self._frames
        if i >= len(frames):
            out = len(frames) if sc.output_tokens is None else sc.output_tokens
            index = self._last_index
            self._write(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
            self._write(
                _sse(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": sc.stop_reason, "stop_sequence": None},
                        "usage": {"output_tokens": out},
                    },
                )
            )
            self._write(_MESSAGE_STOP_END)  # message_stop + zero-length chunk in one write
            self._finish("complete")
            return
        self._write(frames[i])
        i += 1
        self._i = i
        rec.deltas_sent = i
        if sc.ping_every and i % sc.ping_every == 0:
            self._write(_PING)
        if sc.interval > 0:
            self._timer = self._loop.call_later(sc.interval, self._step)
        else:
            self._timer = self._loop.call_soon(self._step)

    def _send_error_response(
        self, rec: RecordedRequest, status: int, message: str, sc: Scenario | None
    ) -> None:
        body = _dumps(
            {
                "type": "error",
                "error": {"type": error_type_for_status(status), "message": message},
                "request_id": rec.request_id,
            }
        ).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("request-id", rec.request_id),
            ("connection", "keep-alive" if self._keep_alive else "close"),
        ]
        if sc is not None:
            if sc.retry_after is not None:
                headers.append(("retry-after", sc.retry_after))
            if sc.retry_after_ms is not None:
                headers.append(("retry-after-ms", sc.retry_after_ms))
            headers.extend(sc.extra_headers.items())
        self._write(_head(status, headers) + body)
        if rec.outcome == "":
            rec.outcome = "http_error"
        self._finish(rec.outcome)

    def _send_message_json(self, rec: RecordedRequest, sc: Scenario) -> None:
        """Non-streaming request: the whole Message as JSON."""
        text = "".join(sc.deltas)
        body = _dumps(
            {
                "id": "msg_fake_" + rec.request_id[9:],
                "type": "message",
                "role": "assistant",
                "model": sc.model or rec.body.get("model") or "claude-fake",
                "content": ([{"type": "text", "text": text}] if text or not sc.tool_calls else [])
                + [
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": json.loads("".join(call.pieces) or "{}"),
                    }
                    for call in sc.tool_calls
                ],
                "stop_reason": sc.stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": sc.input_tokens,
                    "output_tokens": len(sc.deltas)
                    if sc.output_tokens is None
                    else sc.output_tokens,
                },
            }
        ).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("request-id", rec.request_id),
            ("connection", "keep-alive" if self._keep_alive else "close"),
            *sc.extra_headers.items(),
        ]
        self._write(_head(200, headers) + body)
        rec.deltas_sent = len(sc.deltas)
        self._finish("complete")

    def _send_count(self, rec: RecordedRequest, input_tokens: int) -> None:
        """`POST /v1/messages/count_tokens`: `{"input_tokens": N}`."""
        self._rec = rec
        body = _dumps({"input_tokens": input_tokens}).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("request-id", rec.request_id),
            ("connection", "keep-alive" if self._keep_alive else "close"),
        ]
        self._write(_head(200, headers) + body)
        self._finish("complete")

    def _reject(self, rec: RecordedRequest, status: int, message: str, outcome: str) -> None:
        self._rec = rec
        rec.outcome = outcome
        self._send_error_response(rec, status, message, None)

    def _finish(self, outcome: str, *, reuse: bool = True) -> None:
        rec = self._rec
        assert rec is not None
        rec.finished_at = time.monotonic()
        rec.outcome = outcome
        self._rec = None
        self._sc = None
        self._frames = ()
        self._fake._mark_done(rec)
        if not reuse:
            return
        if not self._keep_alive:
            assert self._transport is not None
            self._transport.close()
        elif self._buf:
            self._loop.call_soon(self._process)  # a pipelined request is waiting

    def _client_gone(self) -> None:
        rec = self._rec
        if rec is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._server_closing:
            rec.outcome = "server_closed"
        else:
            rec.disconnected_at = time.monotonic()
            rec.outcome = "client_gone"
        self._rec = None
        self._sc = None
        self._frames = ()
        self._fake._mark_done(rec)

    def _shutdown(self) -> None:
        self._server_closing = True
        if self._transport is not None and not self._transport.is_closing():
            if self._rec is not None:
                self._transport.abort()
            else:
                self._transport.close()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeAnthropic:
    """A loopback HTTP/1.1 server speaking the Anthropic Messages streaming wire format."""

    # Requests to any other path get a 404 (a subclass serves another API).
    path_suffix = "/v1/messages"
    # `POST /v1/messages/count_tokens` answers `{"input_tokens": count_tokens}` (no scenario).
    count_path = "/v1/messages/count_tokens"
    count_tokens = 42

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Scenario | None = None,
        *,
        keep_requests: int | None = None,
    ) -> None:
        """`keep_requests`: keep only about that many most recent `requests` (long benchmarks)."""
        self.host = host
        self.port = port
        self.default = default if default is not None else Scenario()
        self.requests: list[RecordedRequest] = []
        self._queue: deque[Scenario] = deque()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conns: set[_Conn] = set()
        self._drained: asyncio.Event | None = None  # set by stop() while waiting for closes
        self._n_requests = 0
        self._n_conns = 0
        self._frame_cache: dict[tuple[str, ...], tuple[bytes, ...]] = {}
        self.connections_opened = 0  # total TCP connections accepted
        self.requests_received = 0  # total requests, even those trimmed by keep_requests
        self._keep = keep_requests
        # Set, requests are counted by a prompt cache that follows their cache_control.
        self.cache: PromptCache | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            self._new_conn, self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close every open connection (in-flight responses are aborted)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._conns):
            conn._shutdown()
        if self._conns:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 2.0)
            self._drained = None
        await server.wait_closed()

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    @contextlib.contextmanager
    def in_thread(
        cls, host: str = "127.0.0.1", port: int = 0, default: Scenario | None = None
    ) -> Iterator[FakeAnthropic]:
        """Run the fake on its own event loop in a daemon thread; yield it started."""
        fake = cls(host, port, default)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name=f"FakeAnthropic-{id(fake):x}", daemon=True
        )
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(fake.start(), loop).result(10)
            yield fake
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            if not thread.is_alive():
                loop.close()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://{self.host}:{self.port}"

    # -- scripting ----------------------------------------------------------------------------
    def enqueue(self, *scenarios: Scenario) -> None:
        """The next requests take these in order; when the queue is empty, `default` is used.

        Thread-safe (deque append), so it may be called from a test thread with `in_thread`.
        """
        self._queue.extend(scenarios)

    def reset(self) -> None:
        """Forget recorded requests and queued scenarios."""
        self._queue.clear()
        self.requests.clear()

    @property
    def pending_scenarios(self) -> int:
        return len(self._queue)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    async def wait_for_requests(
        self,
        n: int = 1,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> list[RecordedRequest]:
        """Wait (from any loop, so by polling) until at least `n` requests have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(self.requests)} of {n} requests received")
            await asyncio.sleep(0.002)  # may run on another thread's loop
        return self.requests[:n]

    # -- internals ----------------------------------------------------------------------------
    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("not started")
        return self._loop

    def _new_conn(self) -> _Conn:
        self._n_conns += 1
        self.connections_opened += 1
        return _Conn(self, self._n_conns)

    def _conn_closed(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if not self._conns and self._drained is not None:
            self._drained.set()

    def _delta_frames(self, deltas: list[str]) -> tuple[bytes, ...]:
        key = tuple(deltas)
        frames = self._frame_cache.get(key)
        if frames is None:
            if len(self._frame_cache) > 256:
                self._frame_cache.clear()
            frames = tuple(_delta_frame(t) for t in deltas)
            self._frame_cache[key] = frames
        return frames

    def _mark_done(self, rec: RecordedRequest) -> None:
        rec.done.set()
        rec._closed.set()

    def _handle(
        self, conn: _Conn, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> None:
        self._n_requests += 1
        path = target.split("?", 1)[0]
        body: dict[str, Any] = {}
        bad_json = False
        if raw:
            try:
                parsed = json.loads(raw)
                if isinstance(parsed, dict):
                    body = parsed
                else:
                    bad_json = True
            except ValueError:
                bad_json = True
        rec = RecordedRequest(
            method=method,
            path=target,
            headers=headers,
            body=body,
            received_at=time.monotonic(),
            request_id=f"req_fake_{self._n_requests}",
            connection_id=conn._id,
            _loop=self._loop,
        )
        self.requests_received = self._n_requests
        self.requests.append(rec)
        if self._keep is not None and len(self.requests) > 2 * self._keep:
            del self.requests[: len(self.requests) - self._keep]
        if method == "POST" and path.endswith(self.count_path) and not bad_json:
            conn._send_count(rec, self.count_tokens)
            return
        if method != "POST" or not path.endswith(self.path_suffix):
            conn._reject(rec, 404, f"Not found: {method} {path}", "not_found")
            return
        if bad_json:
            conn._reject(rec, 400, "request body is not a JSON object", "bad_request")
            return
        sc = self._queue.popleft() if self._queue else self.default
        rec.scenario = sc
        conn._begin(rec, sc)


# --------------------------------------------------------------------------------------------
# Standalone entry point
# --------------------------------------------------------------------------------------------

_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")


def make_deltas(n: int) -> list[str]:
    """`n` short word deltas ("lorem ", "ipsum ", ...)."""
    return [_WORDS[i % len(_WORDS)] + " " for i in range(n)]


def _raise_nofile_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass


async def serve_until_signalled(fake: FakeAnthropic) -> None:
    """Serve until SIGINT/SIGTERM (the standalone entry points of the fakes)."""
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"{type(fake).__name__} listening on {fake.base_url}", flush=True)
    await stop.wait()
    await fake.stop()
    print(f"served {fake.requests_received} requests", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake Anthropic Messages streaming upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    p.add_argument("--deltas", type=int, default=100, help="text deltas per response")
    p.add_argument("--interval", type=float, default=0.04, help="seconds between deltas")
    p.add_argument("--first-token-delay", type=float, default=0.0)
    p.add_argument("--headers-delay", type=float, default=0.0)
    p.add_argument("--ping-every", type=int, default=None)
    p.add_argument("--status", type=int, default=200)
    args = p.parse_args(argv)

    _raise_nofile_limit()
    default = Scenario(
        deltas=make_deltas(args.deltas),
        interval=args.interval,
        first_token_delay=args.first_token_delay,
        headers_delay=args.headers_delay,
        ping_every=args.ping_every,
        status=args.status,
    )

    asyncio.run(
        serve_until_signalled(FakeAnthropic(args.host, args.port, default, keep_requests=1000))
    )


if __name__ == "__main__":
    main()
