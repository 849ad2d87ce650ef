"""The Server-Sent Events edge: the seed's wire format and the response that streams it.

Wire contract (from the seed guide; a frontend written against it must work unchanged):

    id: 1                              <- every frame carries an increasing sequence id
    event: start                       <- named frames carry extra information and never
    data: {"stream_id": ..., ...}         a "content" key, so content-only readers skip them
                                          (sent once the answering model is known)
    id: 2
    event: thinking                    <- extended thinking, only when the request asked
    data: {"thinking": "..."}

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
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .context import request_id
from .error_bodies import seed_frame_payload
from .errors import ChatRelayError, InstanceLost, ServerRestarting, StreamIncomplete
from .events import TextDelta, ThinkingDelta, Usage
from .relay import Answering, End

if TYPE_CHECKING:
    from .chat import ChatJob


def usage_dict(usage: Usage | None) -> dict[str, int | None]:
    return {
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
    }


PING = b": ping\n\n"
RAW_SEND = "chatrelay.raw_send"  # the scope key of the server's own `send` (see app.py)
DONE_SUFFIX = b"data: [DONE]\n\n"  # how every stream's last frame ends


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


async def seed_frames(job: ChatJob) -> AsyncGenerator[bytes, None]:
    """A job's reply in the seed's wire format: start, content..., [error], end, [DONE]."""
    seq = 0
    async with aclosing(job.events()) as events:
        async for event in events:
            seq += 1
            kind = type(event)
            if kind is TextDelta:
                yield content_frame(seq, event.text)  # type: ignore[union-attr]
            elif kind is ThinkingDelta:
                yield json_frame(seq, {"thinking": event.text}, "thinking")  # type: ignore[union-attr]
            elif kind is Answering:
                yield json_frame(seq, start_payload(job, event), "start")  # type: ignore[arg-type]
            else:
                end: End = event  # type: ignore[assignment]
                if end.error is not None:
                    yield json_frame(seq, error_payload(end))
                    seq += 1
                yield json_frame(
                    seq,
                    {
                        "reason": "error" if end.error else "completed",
                        "stop_reason": end.stop_reason,
                        "usage": usage_dict(end.usage),
                    },
                    "end",
                )
                yield done_frame(seq + 1)


# How a generation that did not reach its own end tells its readers why (a Stop, or a
# reader that left, ends with no error).
_CANCELLED_ERRORS: dict[str, Callable[[], ChatRelayError]] = {
    "server_restarting": lambda: ServerRestarting(
        "The server is restarting; resume this stream or send the message again."
    ),
    "instance_lost": InstanceLost,
    "stream_incomplete": StreamIncomplete,
}


def cancelled_frames(reason: str, seq: int) -> list[bytes]:
    """The last frames of a stream that was stopped, abandoned or cut by its server (or, for
    one reader, whose frames could not all be delivered: `stream_incomplete`)."""
    frames = []
    error = _CANCELLED_ERRORS.get(reason)
    if error is not None:
        frames.append(json_frame(seq, seed_frame_payload(error(), request_id=None)))
        seq += 1
    end = {
        "reason": "error" if error else reason,
        "stop_reason": None,
        "usage": usage_dict(None),
    }
    frames += [json_frame(seq, end, "end"), done_frame(seq + 1)]
    return frames


def start_payload(job: ChatJob, answering: Answering) -> dict[str, Any]:
    spec = answering.target.spec
    payload: dict[str, Any] = {
        "stream_id": job.stream_id,
        "model": spec.alias,
        "provider": spec.provider,
        "conversation_id": job.conversation_id,
    }
    if job.turn is not None and job.turn.omitted:
        payload["history_omitted"] = job.turn.omitted
    if answering.fallback_from:
        payload["requested_model"] = job.requested_model
        payload["fallback_from"] = list(answering.fallback_from)
    if job.warnings:
        payload["warnings"] = job.warnings
    return payload


def error_payload(end: End) -> dict[str, Any]:
    """The seed's error frame: a message safe to show, a machine code, maybe a retry hint."""
    assert end.error is not None
    return seed_frame_payload(end.error, request_id=request_id.get())


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
                await send({"type": "http.response.body", "body": PING, "more_body": True})
                self._last_write = loop.time()
