"""The Server-Sent Events edge: the seed's wire format and the response that streams it.

Wire contract (from the seed guide; a frontend written against it must work unchanged):

    id: 1                              <- every frame carries an increasing sequence id
    event: start                       <- named frames carry extra information and never
    data: {"stream_id": ..., ...}         a "content" key, so content-only readers skip them

    id: 2
    data: {"content": "Hel"}           <- one frame per upstream text delta, in order

    id: 7
    data: {"error": "...", "code": "overloaded"}   <- only when the reply failed

    id: 8
    event: end
    data: {"reason": "completed", "stop_reason": "end_turn", "usage": {...}}

    id: 9
    data: [DONE]

    : ping                             <- a comment while nothing else flows (heartbeat)

`EventStreamResponse` is hand-written rather than taken from sse-starlette or FastAPI's SSE:
it is the product's hot path (one `send` per delta, no per-event objects), it cancels the
producer the moment the client disconnects (which closes the upstream request), and its
heartbeat interval is a setting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"


def frame(seq: int, data: bytes, event: str | None = None) -> bytes:
    """One SSE frame with its sequence id; `data` must be a single line (JSON is)."""
    if event is None:
        return b"id: %d\ndata: %b\n\n" % (seq, data)
    return b"event: %b\nid: %d\ndata: %b\n\n" % (event.encode(), seq, data)


def content_frame(seq: int, text: str) -> bytes:
    return b'id: %d\ndata: {"content":%b}\n\n' % (seq, orjson.dumps(text))


def json_frame(seq: int, payload: Mapping[str, Any], event: str | None = None) -> bytes:
    return frame(seq, orjson.dumps(payload), event)


def done_frame(seq: int) -> bytes:
    return b"id: %d\ndata: [DONE]\n\n" % seq


class EventStreamResponse(Response):
    """Streams pre-encoded SSE frames, with heartbeats, and stops its producer on disconnect."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        heartbeat_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.frames = frames
        self.heartbeat_s = heartbeat_s
        self.status_code = 200
        self.background = None
        self.body = b""
        # No content-length: the body is chunked and ends when the reply does.
        self.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                # nginx (and proxies that copy it) buffer responses unless told not to.
                "x-accel-buffering": "no",
                **(headers or {}),
            }.items()
        ]
        self.client_disconnected = False
        self._last_write = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        producer = asyncio.current_task()
        assert producer is not None
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        self._last_write = loop.time()
        watcher = loop.create_task(self._watch_disconnect(receive, producer))
        heartbeat = loop.create_task(self._heartbeat(send, loop))
        try:
            async for chunk in self.frames:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._last_write = loop.time()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self.client_disconnected:
                raise
            producer.uncancel()  # we cancelled ourselves: the client is gone, nothing to report
        finally:
            watcher.cancel()
            heartbeat.cancel()
            # Closes the producer chain (and so the upstream request) if it is still suspended.
            await self.frames.aclose()  # type: ignore[attr-defined]

    async def _watch_disconnect(self, receive: Receive, producer: asyncio.Task[Any]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.client_disconnected = True
                producer.cancel()
                return

    async def _heartbeat(self, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        # Comment lines keep PaaS proxies (Railway, Heroku: ~55-60 s idle limits) from
        # cutting a stream that is waiting for a slow first token or a stalled upstream.
        while True:
            await asyncio.sleep(self._last_write + self.heartbeat_s - loop.time())
            if loop.time() - self._last_write >= self.heartbeat_s:
                await send({"type": "http.response.body", "body": PING, "more_body": True})
                self._last_write = loop.time()
