"""uvicorn's httptools protocol with a deadline on each request's head and body (slowloris).

uvicorn times out only an idle keep-alive connection, and any byte re-arms it: a client that
drips one byte of its headers every few seconds holds a connection, and a request, forever.
Here a connection must deliver a whole request (head and body) within `request_timeout_s` of
its first byte, and a new connection its first request within the same time; otherwise it is
answered 408 (when nothing was sent yet) and closed. A reply being streamed is not limited:
the deadline ends when the request's body is complete.

The close lingers (as nginx's `lingering_close` does): the 408 is followed by a half-close,
and what the client still sends is read and dropped for a moment before the socket closes.
Closing at once with unread bytes in the socket makes the kernel answer with a reset, and a
reset can discard the 408 before the client has read it.

This subclasses uvicorn's protocol class (`uvicorn.protocols.http.httptools_impl`), which
`uvicorn.Config(http=...)` accepts as a documented option; the hooks used (`connection_made`,
`connection_lost`, the parser's `on_message_begin` and `on_message_complete`) are the
protocol's own callbacks, and uvicorn is pinned below its next minor version on purpose
(pyproject.toml); tests/test_slow_clients.py holds the behaviour to it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .error_bodies import project_body
from .errors import RequestTimeout

_TIMEOUT_BODY = orjson.dumps(project_body(RequestTimeout(), request_id=None))
_LINGER_S = 2.0
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class DeadlineProtocol(HttpToolsProtocol):
    request_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._lingering:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.request_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        self._lingering = True
        self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.write_eof()
        self.loop.call_later(_LINGER_S, self.transport.close)


def deadline_protocol(request_timeout_s: float) -> type[DeadlineProtocol]:
    """The protocol class for one server, with its deadline."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {"request_timeout_s": request_timeout_s})
