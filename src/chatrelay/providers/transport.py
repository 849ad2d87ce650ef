"""The HTTP/1.1 transport the SDK clients send through: asyncio protocols and httptools.

The SDKs stay the upstream clients (they build, authenticate and send every request and raise
their status errors); this is only the `httpx2` transport under them, the documented place to
swap how bytes move. It exists because the default one (httpcore2 -> h11 -> anyio) spends more
CPU on each streamed chunk than everything else the relay does with it: anyio arms and cancels
a timeout scope around every socket read, h11 re-validates each chunk, and four generator
layers sit between the socket and the SDK (docs/BENCHMARKS.md has the profile and the gain).

Here a chunk is one `data_received` call feeding httptools (the C parser uvicorn also uses)
and waking the reader; the read timeout is one timer per connection, re-armed only when it
fires. Failures are raised as the `httpx2` exceptions the SDKs already map (connect errors and
timeouts, read timeouts, protocol errors), so everything above behaves as with the default.

Not supported, by design: proxies and HTTP/2; a request body is read whole and sent with its
Content-Length (the SDKs' JSON bodies are small). `sdk.ClientOptions` picks the default
`httpx2` transport instead when a proxy is configured or `CHATRELAY_UPSTREAM_TRANSPORT=httpx`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import httptools
import httpx2

# Reading pauses when a consumer falls this far behind (and resumes once it has taken what
# was buffered), so a slow reader holds a bounded amount of memory, not an unbounded queue.
_HIGH_WATER = 256 * 1024

# The response extension (a callable) by which a reader that has had a reply's last event says
# so: see `_ResponseStream.expect_end`.
EXPECT_END = "chatrelay.expect_end"

# How long a connection whose reply has ended waits, in the background, for the rest of its
# HTTP body (the chunked terminator, nearly always in the same read) before it is closed rather
# than kept for the next request.
BODY_END_WAIT_S = 0.05


class _Connection(asyncio.Protocol):
    """One upstream HTTP/1.1 connection, serving one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._complete = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout: float | None = None
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._until_close = False
        self._keep_alive = False
        self._no_body = False  # the request was HEAD
        self._response = 0  # counts the responses served; a body iterator belongs to one
        self._stray = False  # bytes came after the response: never reuse this connection
        # Set while the pool waits for the body's end of a response its reader has left.
        self._on_end: Callable[[], None] | None = None
        self._end_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection can't be trusted
            self._fail(httpx2.RemoteProtocolError("unexpected data from the upstream"))
            return
        if self._complete:
            self._stray = True  # the response is whole; whatever this is, it is not ours
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:  # junk after a whole response: only the connection is spoilt
                self._stray = True
                return
            self._fail(httpx2.RemoteProtocolError(f"malformed response from the upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._end_soon()
        if self._parser is None or self._complete:
            return
        if self._until_close and self._head is not None and self._head.done():
            self._finish()  # a body without a length ends where the connection does
            return
        self._fail(
            httpx2.RemoteProtocolError(
                "the upstream closed the connection before the response was complete"
            )
        )

    def pause_writing(self) -> None:  # pragma: no cover - requests are small
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second response in the same read: not ours to append
            self._stray = True

    def on_status(self, status: bytes) -> None:
        if not self._complete:
            self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        if self._complete:
            return
        if 100 <= self._parser.get_status_code() < 200:  # interim: wait for the real one
            self._headers = []
            self._reason = b""
            return
        names = {name.lower() for name, _ in self._headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._no_body:  # a HEAD response has headers only, whatever they announce
            self._keep_alive = self._parser.should_keep_alive()
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        if self._complete or 100 <= self._parser.get_status_code() < 200:
            return
        # Asked now: the parser forgets the message's headers once this callback returns.
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # -- the request ---------------------------------------------------------------------

    async def send(self, request: httpx2.Request, body: bytes, read_timeout: float | None) -> None:
        """Write the request and wait for the response head."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._reason = b""
        self._chunks.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._until_close = False
        self._keep_alive = False
        self._no_body = request.method == "HEAD"
        self._response += 1
        self._read_timeout = read_timeout
        self._head = self.loop.create_future()
        url = request.url
        target = url.raw_path
        lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += [name, b": ", value, b"\r\n"]
        lines.append(b"\r\n")
        lines.append(body)
        self._last_read = self.loop.time()
        self.transport.write(b"".join(lines))
        self._arm_timer()
        await self._head
        if self._error is not None:
            raise self._error

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    def extensions(self) -> dict[str, Any]:
        assert self._parser is not None
        return {
            "http_version": b"HTTP/" + self._parser.get_http_version().encode("ascii"),
            "reason_phrase": self._reason,
        }

    def status_code(self) -> int:
        assert self._parser is not None
        return int(self._parser.get_status_code())

    async def body(self) -> AsyncIterator[bytes]:
        chunks = self._chunks
        mine = self._response
        while True:
            if self._response != mine:  # released and serving another request since
                raise httpx2.StreamClosed()
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self._last_read = self.loop.time()  # the silence was ours, not theirs
                    self.transport.resume_reading()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                return
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                # An abandoned iterator may be finalized late, when this connection already
                # serves another response: only ever clear our own waiter.
                if self._waiter is waiter:
                    self._waiter = None

    @property
    def may_still_end(self) -> bool:
        """Whether the response is still arriving as it should, so its end may yet come."""
        ended = self._complete or self._error is not None or self.closed
        return not (ended or self._stray or self._until_close)

    def on_end(self, within: float, callback: Callable[[], None]) -> None:
        """Call `callback` once the response is whole or has failed, or after `within` s."""
        self._on_end = callback
        self._end_timer = self.loop.call_later(within, self._ended)

    @property
    def reusable(self) -> bool:
        return (
            self._complete
            and not self.closed
            and not self._chunks
            and not self._stray
            and self._keep_alive
        )

    def release(self) -> None:
        """The response is done with: forget it (the pool decides whether to keep us)."""
        self._cancel_timer()
        self._parser = None
        self._head = None
        self._chunks.clear()
        self.idle_since = self.loop.time()

    def close(self) -> None:
        self.closed = True
        self._cancel_timer()
        self._on_end = None  # whoever closes us has decided our fate already
        self._cancel_end_timer()
        if self.transport is not None:
            self.transport.close()

    # -- internals ---------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self._complete = True
        self._cancel_timer()
        self._wake()
        self._end_soon()

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._cancel_timer()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        self._wake()
        self._end_soon()
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def _end_soon(self) -> None:
        # Not from inside the parser's callbacks: the rest of the read (stray bytes after the
        # response, say) must be seen before the pool judges whether we can be reused.
        if self._on_end is not None:
            self.loop.call_soon(self._ended)

    def _ended(self) -> None:
        callback, self._on_end = self._on_end, None
        self._cancel_end_timer()
        if callback is not None:
            callback()

    def _cancel_end_timer(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    def _arm_timer(self) -> None:
        if self._read_timeout is not None and self._timer is None:
            self._timer = self.loop.call_at(self._last_read + self._read_timeout, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        # One timer per response, re-armed from the last read only when it fires: a chunk
        # costs a clock read, not a timer.
        self._timer = None
        if self._complete or self._error is not None or self._read_timeout is None:
            return
        if self._paused:  # we stopped reading (a slow consumer): the upstream is not late
            self._timer = self.loop.call_at(self.loop.time() + self._read_timeout, self._on_timer)
            return
        due = self._last_read + self._read_timeout
        if self.loop.time() >= due:
            self._fail(httpx2.ReadTimeout("the upstream sent nothing within the read timeout"))
        else:
            self._timer = self.loop.call_at(due, self._on_timer)


class _ResponseStream(httpx2.AsyncByteStream):
    def __init__(self, pool: RelayTransport, key: tuple[str, str, int], conn: _Connection):
        self._pool = pool
        self._key = key
        self._conn: _Connection | None = conn
        self._end_expected = False

    def expect_end(self) -> None:
        """The reader has had the reply's last event and will read no further.

        Only the body's end (a chunked terminator) may still be on its way: closing the
        response then waits for it in the background, keeping the connection for the next
        request if it comes within `BODY_END_WAIT_S`, instead of holding up the reader or
        throwing the connection away.
        """
        self._end_expected = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        # The connection's own iterator, not a generator around it: one layer less per chunk.
        if self._conn is None:
            raise httpx2.StreamClosed()
        return self._conn.body()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give_back(self._key, conn, wait_for_end=self._end_expected)


class RelayTransport(httpx2.AsyncBaseTransport):
    """A keep-alive pool of `_Connection`s per origin, with a cap on open connections.

    Idle connections count towards the cap; a request that finds the cap reached closes the
    longest-idle connection (of any origin) to make room, or else waits for one to be handed
    back or closed, at most the pool timeout.
    """

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_expiry: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore does with its own
        self._ssl = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._max = max_connections
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._opening = 0  # connections being set up, counted against the cap
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        port = url.port or (443 if scheme == "https" else 80)
        key = (scheme, url.host, port)
        timeouts = request.extensions.get("timeout") or {}
        body = await request.aread()
        if body and b"content-length" not in (name.lower() for name, _ in request.headers.raw):
            request.headers["content-length"] = str(len(body))
            if "transfer-encoding" in request.headers:
                del request.headers["transfer-encoding"]
        conn, fresh = await self._acquire(key, timeouts)
        try:
            await conn.send(request, body, timeouts.get("read"))
        except httpx2.RemoteProtocolError:
            self._drop(conn)
            if fresh:
                raise
            # A kept-alive connection the upstream closed meanwhile: one fresh try, as the
            # default transport does.
            conn = await self._open_connection(key, timeouts)
            try:
                await conn.send(request, body, timeouts.get("read"))
            except BaseException:
                self._drop(conn)
                raise
        except BaseException:
            self._drop(conn)
            raise
        stream = _ResponseStream(self, key, conn)
        return httpx2.Response(
            status_code=conn.status_code(),
            headers=conn.response_headers(),
            stream=stream,
            extensions={**conn.extensions(), EXPECT_END: stream.expect_end},
        )

    async def _acquire(
        self, key: tuple[str, str, int], timeouts: dict[str, float | None]
    ) -> tuple[_Connection, bool]:
        """A kept-alive connection to `key` (False), or a new one (True)."""
        while True:
            if (conn := self._reuse(key)) is not None:
                return conn, False
            if len(self._open) + self._opening < self._max or self._close_longest_idle():
                return await self._open_connection(key, timeouts), True
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeouts.get("pool")):
                    await waiter
            except BaseException as exc:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving: the room goes to the next in line
                if isinstance(exc, TimeoutError):
                    raise httpx2.PoolTimeout(
                        f"all {self._max} upstream connections stayed busy"
                    ) from None
                raise

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._keepalive_expiry:
                return conn
            self._drop(conn)
        return None

    def _close_longest_idle(self) -> bool:
        oldest: tuple[tuple[str, str, int], _Connection] | None = None
        for key, idle in self._idle.items():
            if idle and (oldest is None or idle[0].idle_since < oldest[1].idle_since):
                oldest = (key, idle[0])
        if oldest is None:
            return False
        self._idle[oldest[0]].pop(0)
        self._drop(oldest[1])
        return True

    async def _open_connection(
        self, key: tuple[str, str, int], timeouts: dict[str, float | None]
    ) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            ssl_context: ssl.SSLContext | None = None
            if scheme == "https":
                if self._ssl is None:
                    self._ssl = httpx2.create_ssl_context()
                    # Say so in the handshake: a server that prefers h2 must not pick it.
                    self._ssl.set_alpn_protocols(["http/1.1"])
                ssl_context = self._ssl
            async with asyncio.timeout(timeouts.get("connect")):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop),
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host if ssl_context is not None else None,
                )
        except BaseException as exc:
            self._opening -= 1
            self._wake_one()  # the place this attempt held is free again
            if isinstance(exc, TimeoutError):
                raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
            if isinstance(exc, OSError):
                raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
            raise
        self._opening -= 1
        self._open.add(conn)
        return conn

    def give_back(
        self, key: tuple[str, str, int], conn: _Connection, *, wait_for_end: bool = False
    ) -> None:
        if conn.reusable:
            conn.release()
            self._idle.setdefault(key, []).append(conn)
            self._wake_one()
        elif wait_for_end and conn.may_still_end:
            # Still open and counted against the cap meanwhile: it is a real socket.
            conn.on_end(BODY_END_WAIT_S, lambda: self.give_back(key, conn))
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.release()
        conn.close()
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._drop(conn)
        self._idle.clear()
