"""A Python client of chatrelay's stream (`POST /ai/stream/chat`): one reply as typed events.

    async with AsyncChatClient("http://127.0.0.1:8000", key=None) as client:
        async with client.stream("Hello!") as reply:
            async for event in reply:
                if isinstance(event, Text):
                    print(event.text, end="", flush=True)
        print(reply.end_reason, reply.usage, reply.conversation_id)

    with ChatClient("http://127.0.0.1:8000") as client:      # the same, without asyncio
        print(client.stream("Hello!").text())

- Events: `Start` (model, stream and conversation ids), `Text`, `Thinking`, `Error` (an
  error *frame*: the reply failed; it is followed by `End`), `End` (reason, usage). The
  iteration ends at `[DONE]`.
- When the connection drops mid-stream (reset, proxy cut, read timeout), the stream is resumed
  with `GET /ai/stream/{id}` and `Last-Event-ID`, up to `max_retries` times in a row with
  exponential backoff; frames already seen are never yielded again (they are recognised by
  their `id`). A stream that cannot be resumed raises `ResumeFailed`.
- The POST carries an `Idempotency-Key`, so if it is cut before its answer arrived it is sent
  again without starting (and paying for) a second reply.
- `stop()` cancels the generation on the server; the stream then ends with `End` whose
  `reason` is `"stopped"`.
- An HTTP error answer (401, 409, 422, 429...) raises `APIError` with the server's `code`.

`ChatClient` is a thin synchronous facade: it runs an `AsyncChatClient` on an event loop of
its own, in a background thread, so both share one implementation of the protocol.
"""

from __future__ import annotations

from .events import (
    DEFAULT_URL,
    APIError,
    ChatRelayError,
    ConnectionFailed,
    End,
    Error,
    Event,
    ProtocolError,
    ResumeFailed,
    Start,
    StreamError,
    Text,
    Thinking,
    Usage,
)
from .streams import AsyncChatClient, AsyncChatStream
from .sync import ChatClient, ChatStream

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "AsyncChatClient",
    "AsyncChatStream",
    "ChatClient",
    "ChatRelayError",
    "ChatStream",
    "ConnectionFailed",
    "End",
    "Error",
    "Event",
    "ProtocolError",
    "ResumeFailed",
    "Start",
    "StreamError",
    "Text",
    "Thinking",
    "Usage",
]
