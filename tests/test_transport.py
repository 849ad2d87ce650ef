"""RelayTransport (chatrelay.providers.transport) against raw loopback servers and the real SDKs.

Each upstream here is `asyncio.start_server` on 127.0.0.1 writing exact HTTP/1.1 bytes, so a
test controls framing, TCP write boundaries, timing and when the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from chatrelay.providers.transport import RelayTransport
from tests.fakes.anthropic_upstream import FakeAnthropic, Scenario
from tests.fakes.openai_upstream import FakeOpenAI, OpenAIScenario

# -------------------------------------------------------------------------------- helpers


@dataclass
class Request:
    """One request as the upstream received it."""

    line: bytes  # e.g. b"GET /path HTTP/1.1"
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Conn:
    """The upstream's side of one accepted TCP connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int  # 1 for the first accepted connection
    requests: list[Request] = field(default_factory=list)

    async def read_request(self) -> Request | None:
        """The next request (body per Content-Length), or None once the client has closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        line, *lines = head[:-4].split(b"\r\n")
        pairs = (x.partition(b":") for x in lines)
        headers = {n.strip().decode().lower(): v.strip().decode() for n, _, v in pairs}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(line, headers, body)
        self.requests.append(request)
        return request

    async def send(self, *pieces: bytes, gap: float = 0.0) -> None:
        """Write each piece as its own TCP write, `gap` seconds apart."""
        for i, piece in enumerate(pieces):
            if i and gap:
                await asyncio.sleep(gap)
            self.writer.write(piece)
            await self.writer.drain()

    async def wait_eof(self) -> float:
        """Read (and drop) until the client closes; the loop time it did."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        return now()


Handler = Callable[[Conn], Awaitable[None]]


class Upstream:
    """A loopback HTTP/1.1 server: `handler` speaks for each accepted connection."""

    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.conns: list[Conn] = []
        self.active = 0  # connections open right now
        self.peak = 0  # most connections ever open at once
        self._server: asyncio.Server | None = None
        self._port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepted(self) -> int:
        return len(self.conns)

    @property
    def requests(self) -> int:
        return sum(len(conn.requests) for conn in self.conns)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self._port}"

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.conns:
            conn.writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(reader, writer, len(self.conns) + 1)
        self.conns.append(conn)
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # __aexit__ stopping a handler still at work
            pass
        finally:
            self.active -= 1
            writer.close()
            self._tasks.discard(task)


def response(
    body: bytes = b"", status: bytes = b"200 OK", headers: tuple[bytes, ...] = ()
) -> bytes:
    """A whole response with a Content-Length body."""
    head = [b"HTTP/1.1 " + status, b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


def keep_alive(reply: bytes) -> Handler:
    """A handler answering every request on the connection with `reply`, until EOF."""

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(reply)

    return handler


def relay_client(
    max_connections: int = 10,
    *,
    read: float | None = 5.0,
    connect: float | None = 5.0,
    **transport_options: Any,
) -> httpx2.AsyncClient:
    """The client under test: httpx2 over a RelayTransport."""
    return httpx2.AsyncClient(
        transport=RelayTransport(max_connections=max_connections, **transport_options),
        timeout=httpx2.Timeout(5.0, read=read, connect=connect),
        trust_env=False,
    )


def unused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def now() -> float:
    return asyncio.get_running_loop().time()


async def read_all(response: httpx2.Response) -> bytes:
    return b"".join([piece async for piece in response.aiter_raw()])


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Wait until `condition()` holds (polling every 5 ms); fail after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


def anthropic_client(base_url: str) -> anthropic.AsyncAnthropic:
    http = anthropic.DefaultAsyncHttpxClient(transport=RelayTransport(max_connections=10))
    return anthropic.AsyncAnthropic(
        api_key="sk-test", base_url=base_url, http_client=http, max_retries=0
    )


def openai_client(base_url: str) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpxClient(transport=RelayTransport(max_connections=10))
    return openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, http_client=http, max_retries=0)


USER_X: Any = [{"role": "user", "content": "x"}]


# ---------------------------------------------------------------- 1. response framing


async def test_content_length_body_status_reason_headers_and_version() -> None:
    """A Content-Length response arrives exact, with its own reason phrase and repeated headers."""
    writes = (
        b"HTTP/1.1 299 Quite Fine",  # the status line split across TCP writes
        b" Thanks\r\nContent-Length: 11\r\nX-Custom: a b\r\nX-Multi: 1\r\n",
        b"X-Mul",
        b"ti: 2\r\n\r\nhello",
        b" world",
    )

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(*writes, gap=0.005)
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client() as client:
        r = await client.get(up.url + "/x")
    assert r.status_code == 299
    assert r.reason_phrase == "Quite Fine Thanks"
    assert r.http_version == "HTTP/1.1"
    assert r.headers["x-custom"] == "a b"
    assert r.headers.get_list("x-multi") == ["1", "2"]
    assert r.content == b"hello world"


async def test_http_1_0_response_version_is_reported() -> None:
    """An HTTP/1.0 upstream's version is what the response says."""
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    async with Upstream(keep_alive(reply)) as up, relay_client() as client:
        r = await client.get(up.url)
    assert (r.http_version, r.content) == ("HTTP/1.0", b"ok")


async def test_chunked_body_split_across_many_writes_arrives_exact() -> None:
    """A chunked body cut at arbitrary TCP boundaries (inside chunk headers too) is exact."""
    rng = random.Random(1)
    pieces = [rng.randbytes(n) for n in (1, 26, 255, 4096, 70_000, 3)]
    wire = CHUNKED_HEAD + b"".join(chunk(p) for p in pieces) + LAST_CHUNK
    # 7-byte writes through the first 400 bytes (cutting the "1a\r\n" and "ff\r\n" chunk
    # headers), then a few big ones.
    cuts = [*range(0, 400, 7), 400, 40_000, len(wire)]
    writes = [wire[a:b] for a, b in itertools.pairwise(cuts)]

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(*writes, gap=0.001)
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client() as client:
        r = await client.get(up.url)
    assert r.status_code == 200
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"".join(pieces)


async def test_close_delimited_body_arrives_complete() -> None:
    """A body with neither length nor chunking ends where the upstream closes, complete."""
    body = random.Random(2).randbytes(100_000)

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        await conn.send(body[:10], body[10:50_000], body[50_000:], gap=0.01)
        conn.writer.close()

    async with Upstream(handler) as up, relay_client() as client:
        assert (await client.get(up.url)).content == body
        assert (await client.get(up.url)).content == body  # on a new connection
    assert up.accepted == 2


async def test_interim_100_continue_is_skipped() -> None:
    """A 100 Continue before the real response is not mistaken for it."""
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"ok", b"201 Created")
    async with Upstream(keep_alive(reply)) as up, relay_client() as client:
        r = await client.get(up.url)
    assert (r.status_code, r.reason_phrase, r.content) == (201, "Created", b"ok")


async def test_head_response_with_content_length_has_no_body() -> None:
    """A HEAD response's Content-Length describes the GET body: nothing follows the head."""
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    async with Upstream(keep_alive(reply)) as up, relay_client(read=0.3) as client:
        r = await client.head(up.url)
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "5")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"\r\n", id="crlf"),
        pytest.param(b"garbage", id="garbage"),
        pytest.param(response(b"stray"), id="another-response"),
    ],
)
async def test_bytes_after_the_response_do_not_change_it(extra: bytes) -> None:
    """Whatever follows a complete response in the same read is not part of it."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(response(b"one") + extra)
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client() as client:
        assert (await client.get(up.url)).content == b"one"


# ---------------------------------------------------------------- 2. streaming


async def test_streamed_chunks_arrive_as_written_not_at_the_end() -> None:
    """The first chunk reaches the reader before the upstream has written the second."""
    second_written = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD + chunk(b"first"))
        await asyncio.sleep(0.2)
        second_written.set()
        await conn.send(chunk(b"second") + LAST_CHUNK)
        await conn.wait_eof()

    seen: list[tuple[bytes, bool]] = []
    async with (
        Upstream(handler) as up,
        relay_client() as client,
        client.stream("GET", up.url) as r,
    ):
        async for piece in r.aiter_raw():
            seen.append((piece, second_written.is_set()))
    assert seen == [(b"first", False), (b"second", True)]


# ---------------------------------------------------------------- 3. keep-alive


@pytest.mark.parametrize(
    "reply",
    [NO_CONTENT, response(b"ok"), CHUNKED_HEAD + chunk(b"ok") + LAST_CHUNK],
    ids=["204", "content-length", "chunked"],
)
async def test_sequential_requests_share_one_connection(reply: bytes) -> None:
    """Requests in a row to one origin use a single kept-alive TCP connection."""
    async with Upstream(keep_alive(reply)) as up, relay_client() as client:
        for _ in range(3):
            assert (await client.get(up.url)).status_code in (200, 204)
    assert up.accepted == 1
    assert up.requests == 3


@pytest.mark.parametrize(
    "reply",
    [
        response(b"bye", headers=(b"Connection: close",)),
        NO_CONTENT[:-2] + b"Connection: close\r\n\r\n",
    ],
    ids=["content-length", "204"],
)
async def test_connection_close_response_is_not_reused_and_is_closed(reply: bytes) -> None:
    """After `Connection: close` the client hangs up and opens a new connection next time."""
    eofs: list[float] = []

    async def handler(conn: Conn) -> None:
        await keep_alive(reply)(conn)  # serves on: only the client honouring the header counts
        eofs.append(now())

    async with Upstream(handler) as up, relay_client() as client:
        await client.get(up.url)
        done = now()
        await client.get(up.url)
        await eventually(lambda: bool(eofs), 0.1)
        assert eofs[0] - done < 0.1
    assert up.accepted == 2


async def test_connection_closed_by_upstream_while_idle_is_not_reused() -> None:
    """An idle connection the upstream closed is dropped; the next request succeeds anew."""
    closed = asyncio.Event()

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(response(b"one"))
        conn.writer.close()
        await conn.writer.wait_closed()
        closed.set()

    async with Upstream(handler) as up, relay_client() as client:
        await client.get(up.url)
        await asyncio.wait_for(closed.wait(), 1)
        await asyncio.sleep(0.02)  # the FIN reaches the client
        assert (await client.get(up.url)).content == b"one"
    assert up.accepted == 2
    assert [len(c.requests) for c in up.conns] == [1, 1]


async def test_kept_alive_connection_dropped_as_request_arrives_is_retried_once() -> None:
    """A reused connection the upstream closes instead of answering: one fresh try succeeds."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(response(b"ok"))
        if conn.number == 1:
            await conn.read_request()  # the second request: hang up without answering
            conn.writer.transport.abort()

    async with Upstream(handler) as up, relay_client() as client:
        assert (await client.get(up.url)).content == b"ok"
        assert (await client.get(up.url)).content == b"ok"
    assert [len(c.requests) for c in up.conns] == [2, 1]


async def test_fresh_connection_dropped_before_answering_is_an_error_not_a_retry() -> None:
    """A new connection closed without a response raises RemoteProtocolError, once."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        conn.writer.transport.abort()

    async with Upstream(handler) as up, relay_client() as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(up.url)
    assert up.accepted == 1


async def test_idle_connection_past_keepalive_expiry_is_replaced() -> None:
    """After `keepalive_expiry` an idle connection is closed and a new one is opened."""
    eofs: list[float] = []

    async def handler(conn: Conn) -> None:
        await keep_alive(response(b"ok"))(conn)
        eofs.append(now())

    async with Upstream(handler) as up, relay_client(keepalive_expiry=0.1) as client:
        await client.get(up.url)
        await client.get(up.url)  # within the expiry: reused
        assert up.accepted == 1
        await asyncio.sleep(0.15)
        assert (await client.get(up.url)).content == b"ok"
        assert up.accepted == 2
        await eventually(lambda: len(eofs) == 1, 0.1)  # closed, not leaked


async def test_unsolicited_bytes_on_an_idle_connection_make_it_unusable() -> None:
    """Bytes arriving on an idle kept-alive connection: it is dropped, not read as a reply."""

    async def handler(conn: Conn) -> None:
        if conn.number == 1:
            await conn.read_request()
            await conn.send(response(b"one"))
            await asyncio.sleep(0.03)
            await conn.send(response(b"stray"))
            await conn.wait_eof()
        else:
            await keep_alive(response(b"two"))(conn)

    async with Upstream(handler) as up, relay_client() as client:
        assert (await client.get(up.url)).content == b"one"
        await asyncio.sleep(0.06)
        assert (await client.get(up.url)).content == b"two"
    assert up.accepted == 2


async def test_anthropic_sdk_reuses_its_connection_for_the_next_stream() -> None:
    """Two streamed replies in a row go over one TCP connection to the upstream."""
    async with FakeAnthropic() as fake, anthropic_client(fake.base_url) as client:
        for _ in range(2):
            stream = await client.messages.create(
                model="m", max_tokens=9, messages=[{"role": "user", "content": "x"}], stream=True
            )
            assert [e async for e in stream][-1].type == "message_stop"
        assert fake.connections_opened == 1


# ---------------------------------------------------------------- 4. request bodies


@pytest.mark.parametrize("size", [0, 1, 1_000_000])
async def test_post_body_arrives_exact_with_content_length_and_host(size: int) -> None:
    """A POST body reaches the upstream byte-exact, with Content-Length and Host."""
    payload = json.dumps({"text": "héllo ✓", "pad": "x" * size}).encode()

    async with Upstream(keep_alive(response(b"{}"))) as up, relay_client() as client:
        r = await client.post(
            up.url + "/v1/messages?beta=true",
            content=payload,
            headers={"content-type": "application/json", "x-api-key": "k"},
        )
        assert r.status_code == 200
    (request,) = up.conns[0].requests
    assert request.line == b"POST /v1/messages?beta=true HTTP/1.1"
    assert request.headers["host"] == up.url.removeprefix("http://")
    assert request.headers["content-length"] == str(len(payload))
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-api-key"] == "k"
    assert "transfer-encoding" not in request.headers
    assert request.body == payload


async def test_streamed_request_body_is_sent_with_content_length() -> None:
    """A request body given as an async iterator goes out whole, with Content-Length."""

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with Upstream(keep_alive(response())) as up, relay_client() as client:
        await client.post(up.url, content=parts())
    (request,) = up.conns[0].requests
    assert request.body == b'{"a":1}'
    assert request.headers["content-length"] == "7"
    assert "transfer-encoding" not in request.headers


# ---------------------------------------------------------------- 5. errors and timeouts


async def test_connection_refused_is_connect_error() -> None:
    """Nothing listening: httpx2.ConnectError."""
    async with relay_client() as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{unused_port()}/")


async def test_connect_timeout_when_the_listen_backlog_is_full() -> None:
    """A connect that gets no answer within the connect timeout: httpx2.ConnectTimeout."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # never accepted: the queue fills and further SYNs are dropped
        address = listener.getsockname()
        for _ in range(64):
            sock = socket.socket()
            sock.setblocking(False)
            fillers.append(sock)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, address), 0.2)
            except TimeoutError:
                break
        else:
            pytest.skip("the kernel kept accepting connections into a listen(0) backlog")
        async with relay_client(connect=0.2) as client:
            start = now()
            with pytest.raises(httpx2.ConnectTimeout):
                await client.get(f"http://127.0.0.1:{address[1]}/")
            assert 0.15 < now() - start < 1.0
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_no_response_head_is_read_timeout() -> None:
    """An upstream that accepts and never answers: ReadTimeout after the read timeout."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client(read=0.2) as client:
        start = now()
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(up.url)
        assert 0.15 < now() - start < 1.0


async def test_stall_mid_body_is_read_timeout_while_iterating() -> None:
    """Headers and part of the body, then silence: ReadTimeout from the body iterator."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await conn.wait_eof()

    got: list[bytes] = []
    async with (
        Upstream(handler) as up,
        relay_client(read=0.2) as client,
        client.stream("GET", up.url) as r,
    ):
        assert r.status_code == 200
        start = now()
        with pytest.raises(httpx2.ReadTimeout):
            async for piece in r.aiter_raw():
                got.append(piece)
        assert now() - start < 1.0
    assert b"".join(got) == b"0123456789"


async def test_trickling_stream_does_not_time_out() -> None:
    """Bytes every 0.1 s keep a 0.3 s read timeout from firing over more than a second."""
    pieces = [b"%d" % i for i in range(12)]

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(CHUNKED_HEAD)
        await conn.send(*(chunk(p) for p in pieces), gap=0.1)
        await conn.send(LAST_CHUNK)
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client(read=0.3) as client:
        start = now()
        async with client.stream("GET", up.url) as r:
            body = await read_all(r)
        assert now() - start > 1.0
    assert body == b"".join(pieces)


async def test_timed_out_connection_is_closed_and_frees_its_slot() -> None:
    """After a ReadTimeout the connection is closed and the next request gets a new one."""
    eofs: list[float] = []

    async def handler(conn: Conn) -> None:
        if conn.number == 1:
            await conn.read_request()
            eofs.append(await conn.wait_eof())
        else:
            await keep_alive(response(b"ok"))(conn)

    async with Upstream(handler) as up, relay_client(1, read=0.2) as client:
        with pytest.raises(httpx2.ReadTimeout):
            await client.get(up.url)
        timed_out = now()
        assert (await asyncio.wait_for(client.get(up.url), 1)).content == b"ok"
        await eventually(lambda: bool(eofs), 0.1)
        assert eofs[0] - timed_out < 0.1


@pytest.mark.parametrize(
    "partial",
    [
        CHUNKED_HEAD + chunk(b"abc") + b"10\r\npart",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    ],
    ids=["chunked", "content-length"],
)
async def test_upstream_closing_mid_body_is_remote_protocol_error(partial: bytes) -> None:
    """The connection ends before the framed body does: RemoteProtocolError, not a short body."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(partial)
        conn.writer.close()

    async with Upstream(handler) as up, relay_client() as client:
        async with client.stream("GET", up.url) as r:
            with pytest.raises(httpx2.RemoteProtocolError):
                await read_all(r)
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(up.url)


@pytest.mark.parametrize(
    "garbage",
    [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01"],
    ids=["ssh", "bad-status", "tls-hello"],
)
async def test_garbage_instead_of_a_status_line_is_remote_protocol_error(garbage: bytes) -> None:
    """Something that is not HTTP/1.x: RemoteProtocolError, at once."""

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        await conn.send(garbage)
        await conn.wait_eof()

    async with Upstream(handler) as up, relay_client(read=2) as client:
        start = now()
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(up.url)
        assert now() - start < 1.0


# ---------------------------------------------------------------- 6. closing early


def stalling_stream(eof_at: list[float]) -> Handler:
    """A handler sending a first chunk then nothing, noting when the client hangs up."""

    async def handler(conn: Conn) -> None:
        if await conn.read_request() is None:
            return
        await conn.send(CHUNKED_HEAD + chunk(b"first"))
        eof_at.append(await conn.wait_eof())

    return handler


async def test_leaving_a_stream_early_closes_the_connection_promptly() -> None:
    """Exiting `client.stream()` after one chunk closes the TCP connection within 100 ms."""
    eof_at: list[float] = []
    async with Upstream(stalling_stream(eof_at)) as up, relay_client(1) as client:
        async with client.stream("GET", up.url) as r:
            async for piece in r.aiter_raw():
                assert piece == b"first"
                break
        left = now()
        await eventually(lambda: bool(eof_at), 0.1)
        assert eof_at[0] - left < 0.1
        # The only slot is free again.
        async with asyncio.timeout(1), client.stream("GET", up.url) as r:
            assert r.status_code == 200
    assert up.accepted == 2


async def test_cancelling_a_reading_task_closes_the_connection_promptly() -> None:
    """Cancelling the task iterating a body closes the TCP connection within 100 ms."""
    eof_at: list[float] = []
    first = asyncio.Event()

    async def consume(client: httpx2.AsyncClient, url: str) -> None:
        async with client.stream("GET", url) as r:
            async for _ in r.aiter_raw():
                first.set()

    async with Upstream(stalling_stream(eof_at)) as up, relay_client(1) as client:
        task = asyncio.create_task(consume(client, up.url))
        await asyncio.wait_for(first.wait(), 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = now()
        await eventually(lambda: bool(eof_at), 0.1)
        assert eof_at[0] - cancelled < 0.1


async def test_cancelling_while_waiting_for_the_head_closes_and_frees_the_slot() -> None:
    """Cancelled before any response: the connection is closed and its slot reusable."""
    eof_at: list[float] = []

    async def handler(conn: Conn) -> None:
        await conn.read_request()
        if conn.number == 1:
            eof_at.append(await conn.wait_eof())
        else:
            await conn.send(response(b"ok"))
            await conn.wait_eof()

    async with Upstream(handler) as up, relay_client(1) as client:
        task = asyncio.create_task(client.get(up.url))
        await eventually(lambda: up.requests == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = now()
        assert (await asyncio.wait_for(client.get(up.url), 1)).content == b"ok"
        await eventually(lambda: bool(eof_at), 0.1)
        assert eof_at[0] - cancelled < 0.1


# ---------------------------------------------------------------- 7. connection cap


@dataclass
class Held:
    """Responses the upstream holds open: `head` at once, `tail` once `release` allows."""

    head: bytes
    tail: bytes
    close: bool  # the upstream closes the connection after each response
    release: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    in_flight: int = 0
    peak: int = 0  # most responses under way at once

    async def __call__(self, conn: Conn) -> None:
        while await conn.read_request() is not None:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            await conn.send(self.head)
            await self.release.acquire()
            await conn.send(self.tail)
            self.in_flight -= 1
            if self.close:
                return


STREAM_HEAD = CHUNKED_HEAD + chunk(b"start")
STREAM_TAIL = chunk(b"end") + LAST_CHUNK
CLOSING_HEAD = CHUNKED_HEAD[:-2] + b"Connection: close\r\n\r\n" + chunk(b"start")


@pytest.mark.parametrize(
    "held",
    [
        pytest.param(Held(CLOSING_HEAD, STREAM_TAIL, close=True), id="connection-close"),
        pytest.param(
            Held(STREAM_HEAD, STREAM_TAIL, close=False),
            id="chunked-keep-alive",
        ),
        pytest.param(Held(b"", NO_CONTENT, close=False), id="204"),
    ],
)
async def test_connection_cap_holds_a_third_request_until_one_ends(held: Held) -> None:
    """max_connections=2: a third concurrent request waits for a finished one, then runs."""

    async def fetch(client: httpx2.AsyncClient, url: str) -> bytes:
        async with client.stream("GET", url) as r:
            return await read_all(r)

    async with Upstream(held) as up, relay_client(2) as client:
        tasks = [asyncio.create_task(fetch(client, up.url)) for _ in range(3)]
        try:
            await eventually(lambda: up.requests == 2)
            await asyncio.sleep(0.1)
            assert (up.requests, held.in_flight) == (2, 2)
            assert not any(task.done() for task in tasks)
            held.release.release()  # one response ends: the waiting request may go
            await eventually(lambda: up.requests == 3)
            held.release.release()
            held.release.release()
            bodies = await asyncio.wait_for(asyncio.gather(*tasks), 1)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    expected = b"startend" if held.head else b""
    assert bodies == [expected] * 3
    assert held.peak == 2
    if held.close:
        assert up.peak == 2


async def test_idle_connections_do_not_block_another_origin() -> None:
    """max_connections=1: after a request to A, a request to B still goes through."""
    async with (
        Upstream(keep_alive(NO_CONTENT)) as a,
        Upstream(keep_alive(response(b"b"))) as b,
        relay_client(1) as client,
    ):
        assert (await client.get(a.url)).status_code == 204
        assert (await asyncio.wait_for(client.get(b.url), 1)).content == b"b"


# ---------------------------------------------------------------- 8. backpressure

BIG = random.Random(3).randbytes(5 * 1024 * 1024)


def big_sender(progress: list[int]) -> Handler:
    """Sends BIG as fast as the client takes it; `progress[0]` counts bytes handed over."""

    async def handler(conn: Conn) -> None:
        sock = conn.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # no send-side autotuning
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BIG))
        for i in range(0, len(BIG), 65536):
            await conn.send(BIG[i : i + 65536])
            progress[0] = i + 65536
        await conn.wait_eof()

    return handler


async def test_slow_reader_pauses_the_upstream_then_gets_every_byte() -> None:
    """A reader that stalls holds back the upstream (bounded buffering); nothing is lost."""
    progress = [0]
    async with (
        Upstream(big_sender(progress)) as up,
        relay_client() as client,
        client.stream("GET", up.url) as r,
    ):
        await asyncio.sleep(0.5)
        assert progress[0] < 2 * 1024 * 1024, f"{progress[0]} bytes taken without reading"
        body = await read_all(r)
    assert progress[0] >= len(BIG)
    assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()


async def test_slow_reader_longer_than_the_read_timeout_is_not_a_timeout() -> None:
    """Backpressure from a slow reader is not the upstream being silent: no ReadTimeout."""
    progress = [0]
    async with (
        Upstream(big_sender(progress)) as up,
        relay_client(read=0.3) as client,
        client.stream("GET", up.url) as r,
    ):
        await asyncio.sleep(0.6)
        assert await read_all(r) == BIG


# ---------------------------------------------------------------- 9. the real SDKs


async def test_anthropic_sdk_streams_a_reply_through_the_transport() -> None:
    """anthropic's messages.create(stream=True) streams every event to message_stop."""
    async with FakeAnthropic() as fake, anthropic_client(fake.base_url) as client:
        fake.enqueue(Scenario(deltas=["Hel", "lo", " there"], interval=0.01))
        stream = await client.messages.create(
            model="claude-test-1", max_tokens=100, messages=USER_X, stream=True
        )
        events = [event async for event in stream]
        (request,) = fake.requests
    texts = [
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert texts == ["Hel", "lo", " there"]
    assert events[-1].type == "message_stop"
    assert request.body["messages"] == USER_X
    assert request.api_key == "sk-test"


@pytest.mark.parametrize(
    ("status", "error"),
    [(429, anthropic.RateLimitError), (500, anthropic.InternalServerError)],
)
async def test_anthropic_sdk_error_statuses_become_its_exceptions(
    status: int, error: type[anthropic.APIStatusError]
) -> None:
    """An error status reaches the anthropic SDK as its exception, with the body's message."""
    async with FakeAnthropic() as fake, anthropic_client(fake.base_url) as client:
        fake.enqueue(Scenario(status=status, error_message="slow down, please"))
        with pytest.raises(error) as info:
            await client.messages.create(model="m", max_tokens=1, messages=USER_X, stream=True)
    assert info.value.status_code == status
    assert info.value.body["error"]["message"] == "slow down, please"  # type: ignore[index]
    assert "slow down, please" in str(info.value)


async def test_anthropic_sdk_sees_a_dropped_stream_as_remote_protocol_error() -> None:
    """A stream cut mid-body reaches the SDK's reader as httpx2.RemoteProtocolError."""
    texts: list[str] = []
    async with FakeAnthropic() as fake, anthropic_client(fake.base_url) as client:
        fake.enqueue(Scenario(deltas=list("abcd"), drop_after=2))
        with pytest.raises(httpx2.RemoteProtocolError):
            async with client.messages.stream(model="m", max_tokens=1, messages=USER_X) as s:
                async for text in s.text_stream:
                    texts.append(text)
    assert texts == ["a", "b"]


async def test_anthropic_sdk_connect_error_is_api_connection_error() -> None:
    """Nothing listening: the SDK's APIConnectionError, caused by httpx2.ConnectError."""
    async with anthropic_client(f"http://127.0.0.1:{unused_port()}") as client:
        with pytest.raises(anthropic.APIConnectionError) as info:
            await client.messages.create(model="m", max_tokens=1, messages=USER_X)
    assert isinstance(info.value.__cause__, httpx2.ConnectError)


async def test_openai_sdk_streams_a_reply_through_the_transport() -> None:
    """openai's chat.completions.create(stream=True) streams every chunk."""
    async with FakeOpenAI() as fake, openai_client(fake.base_url) as client:
        fake.enqueue(OpenAIScenario(deltas=["Hel", "lo"], interval=0.01))
        stream = await client.chat.completions.create(
            model="gpt-test-1", messages=USER_X, stream=True
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("status", "error"), [(429, openai.RateLimitError), (500, openai.InternalServerError)]
)
async def test_openai_sdk_error_statuses_become_its_exceptions(
    status: int, error: type[openai.APIStatusError]
) -> None:
    """An error status reaches the openai SDK as its exception, with the body's message."""
    async with FakeOpenAI() as fake, openai_client(fake.base_url) as client:
        fake.enqueue(OpenAIScenario(status=status, error_message="slow down, please"))
        with pytest.raises(error) as info:
            await client.chat.completions.create(model="m", messages=USER_X, stream=True)
    assert info.value.status_code == status
    assert "slow down, please" in str(info.value)


# ---------------------------------------------------------------- 10. HTTPS


@pytest.fixture(scope="module")
def ca() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def tls_contexts(ca: Any, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts; the server's certificate names `hostname` only."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_https_body_arrives_over_tls(ca: Any) -> None:
    """An https:// upstream with a certificate the context trusts: the body arrives exact."""
    server_ctx, client_ctx = tls_contexts(ca, "127.0.0.1")
    body = random.Random(4).randbytes(300_000)
    async with (
        Upstream(keep_alive(response(body)), ssl_context=server_ctx) as up,
        relay_client(ssl_context=client_ctx) as client,
    ):
        r1 = await client.get(up.url)
        r2 = await client.get(up.url)
    assert up.url.startswith("https://")
    assert r1.content == body and r2.content == body
    assert up.accepted == 1  # the TLS connection was kept alive


async def test_https_certificate_for_another_host_is_connect_error(ca: Any) -> None:
    """A certificate that does not name the host: httpx2.ConnectError, no request sent."""
    server_ctx, client_ctx = tls_contexts(ca, "upstream.example")
    async with (
        Upstream(keep_alive(response(b"secret")), ssl_context=server_ctx) as up,
        relay_client(ssl_context=client_ctx) as client,
    ):
        with pytest.raises(httpx2.ConnectError):
            await client.get(up.url)
    assert up.requests == 0


async def test_a_request_that_finds_every_connection_busy_gets_a_pool_timeout() -> None:
    """max_connections=1 and a held response: a second request gives up after the pool
    timeout with httpx2.PoolTimeout (it never reaches the upstream), and the held one is fine."""
    held = Held(STREAM_HEAD, STREAM_TAIL, close=False)
    async with (
        Upstream(held) as up,
        relay_client(1) as client,
        client.stream("GET", up.url) as first,
    ):
        started = time.monotonic()
        with pytest.raises(httpx2.PoolTimeout):
            await client.get(up.url, timeout=httpx2.Timeout(5.0, pool=0.2))
        assert 0.15 <= time.monotonic() - started < 1
        assert up.requests == 1
        held.release.release()
        assert await read_all(first) == b"startend"


async def test_https_negotiates_http_1_1_with_a_server_that_prefers_h2(ca: Any) -> None:
    """A server offering h2 first must still be asked for HTTP/1.1 (ALPN): the transport
    speaks nothing else."""
    server_ctx, client_ctx = tls_contexts(ca, "127.0.0.1")
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    negotiated: list[str | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        negotiated.append(writer.get_extra_info("ssl_object").selected_alpn_protocol())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response(b"over http/1.1"))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with relay_client(ssl_context=client_ctx) as client:
            r = await client.get(f"https://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert r.content == b"over http/1.1"
    assert negotiated == ["http/1.1"]


@pytest.mark.parametrize("encoding", [None, b"gzip"])
async def test_the_providers_body_reader_decodes_a_compressed_body(encoding: bytes | None) -> None:
    """`sdk.body_chunks` reads an identity body straight from the transport and still
    decompresses a gzip one: the SSE decoder always gets the text the upstream meant."""
    import gzip

    from chatrelay.providers.sdk import body_chunks

    text = b"event: message_stop\ndata: {}\n\n" * 50
    wire = gzip.compress(text) if encoding else text
    headers = (b"Content-Encoding: " + encoding,) if encoding else ()
    async with (
        Upstream(keep_alive(response(wire, headers=headers))) as up,
        relay_client() as client,
        client.stream("GET", up.url) as r,
    ):
        got = b"".join([piece async for piece in body_chunks(r)])
    assert got == text


async def test_a_body_iterator_kept_past_its_response_never_reads_the_next_one() -> None:
    """Once a response is released, its connection may serve the next request; an iterator
    of the old body still held somewhere raises StreamClosed instead of yielding the new
    response's bytes."""
    from chatrelay.providers.sdk import body_chunks

    async with Upstream(keep_alive(response(b"first"))) as up, relay_client() as client:
        old = await client.send(client.build_request("GET", up.url), stream=True)
        chunks = body_chunks(old)
        assert await chunks.__anext__() == b"first"
        await old.aclose()  # the connection goes back to the pool
        new = await client.send(client.build_request("GET", up.url), stream=True)
        with pytest.raises((httpx2.StreamClosed, StopAsyncIteration)):
            await chunks.__anext__()
        assert await new.aread() == b"first"
    assert up.accepted == 1  # it really was the same connection


# ------------------------------------------------------- 11. a reply's end and its body's end


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.encode(), json.dumps(data).encode())


ANTHROPIC_EVENTS = [
    _sse(
        "message_start",
        {"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 1}}},
    ),
    _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
    ),
    _sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
    ),
    _sse("message_stop", {"type": "message_stop"}),
]
OPENAI_EVENTS = [
    b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


def reply_then_body_end(
    events: list[bytes], *, after: float, end: bytes = LAST_CHUNK, ended_at: list[float]
) -> Handler:
    """A keep-alive handler: each reply's events in one write, then, `after` seconds later (if
    the client is still there), the body's end, noting when it was written."""

    async def handler(conn: Conn) -> None:
        while await conn.read_request() is not None:
            await conn.send(CHUNKED_HEAD + b"".join(chunk(event) for event in events))
            deadline = now() + after
            while now() < deadline:
                if conn.reader.at_eof():  # the client hung up (without sending anything)
                    return
                await asyncio.sleep(0.005)
            ended_at.append(now())
            await conn.send(end)

    return handler


def provider_for(kind: str, url: str) -> Any:
    from chatrelay.providers.anthropic import AnthropicProvider
    from chatrelay.providers.openai import OpenAIProvider

    if kind == "anthropic":
        return AnthropicProvider(anthropic_client(url))
    return OpenAIProvider(openai_client(url + "/v1"), official=False)


async def reply_ends_at(provider: Any) -> float:
    """Stream one reply to its Stop (checking its text); the loop time the Stop came."""
    from chatrelay.events import Stop, TextDelta
    from chatrelay.providers import ChatParams

    params = ChatParams(model="m", messages=USER_X, max_tokens=10)
    text = []
    async with contextlib.aclosing(provider.stream(params)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, Stop):
                assert event.reason in ("end_turn", "stop")
                stopped = now()
    assert text == ["hi"]
    return stopped


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_late_body_end_holds_up_neither_the_reply_nor_the_next_one(kind: str) -> None:
    """The upstream's last event came, its chunked terminator 30 ms later: the reply ends at
    once, and the next request still reuses the connection once the terminator is in."""
    ended_at: list[float] = []
    events = ANTHROPIC_EVENTS if kind == "anthropic" else OPENAI_EVENTS
    handler = reply_then_body_end(events, after=0.03, ended_at=ended_at)
    async with Upstream(handler) as up:
        provider = provider_for(kind, up.url)
        try:
            stopped = await reply_ends_at(provider)
            assert not ended_at  # the reply was whole before its body was
            await eventually(lambda: bool(ended_at))
            await asyncio.sleep(0.01)  # the terminator is read
            assert ended_at[0] > stopped
            await reply_ends_at(provider)
        finally:
            await provider.aclose()
    assert up.accepted == 1


async def test_a_body_end_that_never_comes_costs_the_connection_not_the_reply() -> None:
    """No terminator within the wait: the reply still ends at once, the connection is closed
    soon after (not kept half-read), and the next request opens a new one."""
    ended_at: list[float] = []
    handler = reply_then_body_end(ANTHROPIC_EVENTS, after=5.0, ended_at=ended_at)
    async with Upstream(handler) as up:
        provider = provider_for("anthropic", up.url)
        try:
            stopped = await reply_ends_at(provider)
            await eventually(lambda: up.active == 0, 0.5)
            closed = now()
            assert closed - stopped < 0.3
            await reply_ends_at(provider)
        finally:
            await provider.aclose()
    assert up.accepted == 2
    assert not ended_at


async def test_bytes_after_a_late_body_end_spoil_the_connection() -> None:
    """The terminator came late with junk after it, in one read: the connection is not kept."""
    ended_at: list[float] = []
    junk = LAST_CHUNK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    handler = reply_then_body_end(ANTHROPIC_EVENTS, after=0.02, end=junk, ended_at=ended_at)
    async with Upstream(handler) as up:
        provider = provider_for("anthropic", up.url)
        try:
            await reply_ends_at(provider)
            await eventually(lambda: bool(ended_at))
            await eventually(lambda: up.active == 0, 0.5)
            await reply_ends_at(provider)
        finally:
            await provider.aclose()
    assert up.accepted == 2


async def test_a_connection_waiting_for_its_body_end_is_handed_to_the_next_in_line() -> None:
    """Under a cap of one, a request made while the last response's body end is awaited
    waits for it, then gets the very connection (no new handshake)."""
    from chatrelay.providers.transport import EXPECT_END

    ended_at: list[float] = []
    handler = reply_then_body_end([b"last event"], after=0.03, ended_at=ended_at)
    async with Upstream(handler) as up, relay_client(1) as client:
        async with client.stream("GET", up.url) as r:
            async for piece in r.aiter_raw():
                assert piece == b"last event"
                break
            r.extensions[EXPECT_END]()
        async with asyncio.timeout(1), client.stream("GET", up.url) as r:
            assert ended_at  # it waited for the first body's end
            assert [piece async for piece in r.aiter_raw()] == [b"last event"]
            r.extensions[EXPECT_END]()
    assert up.accepted == 1
