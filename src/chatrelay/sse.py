"""The streaming response: pre-encoded Server-Sent Event frames, whatever the surface.

`EventStreamResponse` is hand-written rather than taken from sse-starlette or FastAPI's SSE:
it is the product's hot path (one `send` per delta, no per-event objects), it cancels the
producer the moment the client disconnects (which closes the upstream request), and its
heartbeat interval is a setting. The frames themselves are each surface's (surfaces/).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

PING = b": ping\n\n"
# The heartbeat for OpenAI's SDKs: a comment line alone. Their SSE decoder dispatches an event
# at every blank line once an `id:` has been seen (the last event id is kept, as the spec says),
# so `PING`'s blank line after a frame with an id reads as an event with empty data, which
# they fail to parse as JSON. A comment line needs no blank line after it.
LINE_PING = b": ping\n"
RAW_SEND = "chatrelay.raw_send"  # the scope key of the server's own `send` (see app.py)


class EventStreamResponse(Response):
    """Streams pre-encoded SSE frames, with heartbeats, and stops its producer on disconnect."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncGenerator[bytes, None],
        *,
        heartbeat_s: float,
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,  # FastAPI reads this default when it documents the route
        ping: bytes = PING,
    ) -> None:
        self.frames = frames
        self.heartbeat_s = heartbeat_s
        self.ping = ping
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
        # The start went through the middleware; the body, one message per delta, need not.
        send = scope.get(RAW_SEND, send)
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
            await self.frames.aclose()

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
                await send({"type": "http.response.body", "body": self.ping, "more_body": True})
                self._last_write = loop.time()
