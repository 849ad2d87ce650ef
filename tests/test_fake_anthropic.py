"""Prove tests/fakes/anthropic_upstream.py against the REAL anthropic SDK (2.x, on httpx2)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx2
import pytest
import pytest_asyncio

from tests.fakes.anthropic_upstream import FakeAnthropic, Scenario

MODEL = "claude-test-1"
MSGS = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as f:
        yield f


@pytest_asyncio.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake.base_url, max_retries=0
    ) as c:
        yield c


def _stream(client: anthropic.AsyncAnthropic, **kw):
    return client.messages.stream(model=MODEL, max_tokens=100, messages=MSGS, **kw)


async def _create(client: anthropic.AsyncAnthropic, **kw):
    return await client.messages.create(
        model=MODEL, max_tokens=100, messages=MSGS, stream=True, **kw
    )


# ---------------------------------------------------------------- happy path


@pytest.mark.asyncio
async def test_stream_helper_full_text_usage_and_recording(fake, client):
    async with _stream(client) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert texts == ["Hello", ", ", "world", "!"]
    assert final.content[0].text == "Hello, world!"
    assert final.stop_reason == "end_turn"
    assert final.model == MODEL
    assert final.usage.input_tokens == 10
    assert final.usage.output_tokens == 4
    assert stream.request_id == "req_fake_1"

    (rec,) = fake.requests
    assert await rec.wait_closed(1)
    assert rec.method == "POST" and rec.path == "/v1/messages"
    assert rec.headers["authorization"] == "Bearer test-key"
    assert rec.api_key == "test-key"
    assert "anthropic-version" in rec.headers
    assert rec.body["stream"] is True and rec.body["model"] == MODEL
    assert rec.outcome == "complete" and rec.deltas_sent == 4
    assert rec.finished_at is not None and rec.finished_at >= rec.received_at
    assert rec.disconnected_at is None


@pytest.mark.asyncio
async def test_create_stream_event_sequence_with_pings(fake, client):
    fake.enqueue(
        Scenario(
            deltas=["a", "b", "c"],
            ping_every=1,
            stop_reason="max_tokens",
            output_tokens=42,
            input_tokens=7,
            model="claude-echo",
        )
    )
    async with await _create(client) as stream:
        events = [e async for e in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # pings are on the wire but swallowed by the SDK
    assert events[0].message.model == "claude-echo"
    assert events[0].message.usage.input_tokens == 7
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "abc"
    assert events[-2].delta.stop_reason == "max_tokens"
    assert events[-2].usage.output_tokens == 42


@pytest.mark.asyncio
async def test_queue_then_default(fake, client):
    fake.default = Scenario(deltas=["d"])
    fake.enqueue(Scenario(deltas=["q1"]), Scenario(deltas=["q2"]))
    got = []
    for _ in range(3):
        async with _stream(client) as s:
            got.append(await s.get_final_text())
    assert got == ["q1", "q2", "d"]
    assert fake.pending_scenarios == 0


@pytest.mark.asyncio
async def test_non_streaming_create_gets_json_message(fake, client):
    msg = await client.messages.create(model=MODEL, max_tokens=10, messages=MSGS)
    assert msg.content[0].text == "Hello, world!"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens == 4


# ---------------------------------------------------------------- raw wire format


async def _raw_exchange(port: int, request: bytes, *, pieces: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    step = max(1, len(request) // pieces)
    for i in range(0, len(request), step):  # the request arrives in several TCP chunks
        writer.write(request[i : i + step])
        await writer.drain()
        await asyncio.sleep(0.002)
    data = b""
    try:
        while b"0\r\n\r\n" not in data and not (b"content-length" in data.lower() and b"}" in data):
            chunk = await asyncio.wait_for(reader.read(65536), 2)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
        await writer.wait_closed()
    return data


def _post(path: str, body: dict, headers: str = "x-api-key: k2\r\n") -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\n{headers}anthropic-version: 2023-06-01\r\n"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    ).encode() + raw


def _dechunk(body: bytes) -> tuple[bytes, bool]:
    out, pos = b"", 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol], 16)
        if size == 0:
            return out, body[eol:] == b"\r\n\r\n"
        out += body[eol + 2 : eol + 2 + size]
        assert body[eol + 2 + size : eol + 4 + size] == b"\r\n"
        pos = eol + 4 + size


@pytest.mark.asyncio
async def test_raw_wire_format_x_api_key_prefix_path_and_split_request(fake):
    req = _post("/anthropic/v1/messages", {"model": "m", "stream": True, "max_tokens": 5})
    data = await _raw_exchange(fake.port, req, pieces=7)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    hdrs = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert hdrs["content-type"] == "text/event-stream; charset=utf-8"
    assert hdrs["transfer-encoding"] == "chunked"
    assert hdrs["request-id"] == "req_fake_1"
    payload, clean_end = _dechunk(body)
    assert clean_end  # zero-length chunk right after message_stop
    frames = payload.decode().split("\n\n")
    assert frames[-1] == ""
    types = []
    for frame in frames[:-1]:
        ev, data_line = frame.split("\n")
        assert ev.startswith("event: ") and data_line.startswith("data: ")
        obj = json.loads(data_line[6:])
        assert ev[7:] == obj["type"]  # every event line names data.type
        types.append(obj["type"])
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types[2:-3] == ["content_block_delta"] * 4
    assert fake.requests[0].api_key == "k2"


@pytest.mark.asyncio
async def test_unknown_path_gets_404_json_error(fake):
    data = await _raw_exchange(fake.port, _post("/v1/complete", {"model": "m"}))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    err = json.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "not_found_error"
    assert err["request_id"] == "req_fake_1"
    assert fake.requests[0].outcome == "not_found"
    assert fake.pending_scenarios == 0


# ---------------------------------------------------------------- HTTP errors


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "exc_cls", "err_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
@pytest.mark.parametrize("api", ["stream", "create"])
async def test_http_error_status_raises_sdk_class(fake, client, status, exc_cls, err_type, api):
    fake.enqueue(Scenario(status=status, error_message="nope", retry_after="7", retry_after_ms="5"))
    with pytest.raises(exc_cls) as info:
        if api == "stream":
            async with _stream(client):  # the request is sent in __aenter__
                pytest.fail("must raise on enter")
        else:
            await _create(client)
    e = info.value
    assert e.status_code == status
    assert e.type == err_type
    assert e.request_id == "req_fake_1"
    assert e.body["error"]["message"] == "nope"
    assert e.response.headers["retry-after"] == "7"
    assert e.response.headers["retry-after-ms"] == "5"
    assert fake.requests[0].outcome == "http_error"


@pytest.mark.asyncio
async def test_sdk_retries_after_529_on_same_fake(fake):
    fake.enqueue(Scenario(status=529, retry_after_ms="1"), Scenario(deltas=["ok"]))
    async with (
        anthropic.AsyncAnthropic(api_key="test-key", base_url=fake.base_url, max_retries=1) as c,
        _stream(c) as s,
    ):
        assert await s.get_final_text() == "ok"
    assert [r.headers["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]
    assert [r.outcome for r in fake.requests] == ["http_error", "complete"]


@pytest.mark.asyncio
async def test_x_should_retry_false_via_extra_headers(fake):
    fake.enqueue(Scenario(status=529, extra_headers={"x-should-retry": "false"}))
    async with anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake.base_url, max_retries=2
    ) as c:
        with pytest.raises(anthropic.OverloadedError):
            await _create(c)
    assert len(fake.requests) == 1


# ---------------------------------------------------------------- mid-stream failures


@pytest.mark.asyncio
async def test_error_event_after_n_deltas(fake, client):
    fake.enqueue(Scenario(deltas=list("abcdef"), error_event_after=2, error_message="Overloaded"))
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with _stream(client) as s:
            async for t in s.text_stream:
                texts.append(t)
    assert texts == ["a", "b"]
    e = info.value
    assert type(e) is anthropic.APIStatusError  # the bare class, status 200
    assert e.status_code == 200
    assert e.type == "overloaded_error"
    rec = fake.requests[0]
    assert rec.outcome == "error_event" and rec.deltas_sent == 2


@pytest.mark.asyncio
async def test_error_event_with_create(fake, client):
    fake.enqueue(Scenario(deltas=list("abc"), error_event_after=1, error_type="api_error"))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with await _create(client) as stream:
            async for _ in stream:
                pass
    assert info.value.type == "api_error"


@pytest.mark.asyncio
async def test_truncate_after_ends_without_message_stop(fake, client):
    fake.enqueue(Scenario(deltas=list("abcd"), truncate_after=2))
    async with _stream(client) as s:
        texts = [t async for t in s.text_stream]
        final = await s.get_final_message()
    assert texts == ["a", "b"]
    assert final.stop_reason is None  # SDK raises nothing; only the missing stop tells

    fake.enqueue(Scenario(deltas=list("abcd"), truncate_after=3))
    async with await _create(client) as stream:
        types = [e.type async for e in stream]
    assert "message_stop" not in types and "message_delta" not in types
    assert types.count("content_block_delta") == 3
    assert [r.outcome for r in fake.requests] == ["truncated", "truncated"]
    # the body ended cleanly, so the connection was kept alive and reused
    assert fake.requests[0].connection_id == fake.requests[1].connection_id


@pytest.mark.asyncio
async def test_drop_after_raises_transport_error(fake, client):
    fake.enqueue(Scenario(deltas=list("abcd"), drop_after=2))
    texts: list[str] = []
    with pytest.raises(httpx2.TransportError) as info:
        async with _stream(client) as s:
            async for t in s.text_stream:
                texts.append(t)
    assert isinstance(info.value, httpx2.RemoteProtocolError)
    assert not isinstance(info.value, anthropic.APIError)
    assert texts == ["a", "b"]
    rec = fake.requests[0]
    assert rec.outcome == "dropped" and rec.disconnected_at is None


# ---------------------------------------------------------------- stall, client close, timing


@pytest.mark.asyncio
async def test_stall_then_stream_close_is_noticed_within_100ms(fake, client):
    fake.enqueue(Scenario(deltas=list("abcdef"), stall_after=2))
    async with _stream(client) as s:
        texts = []
        async for t in s.text_stream:
            texts.append(t)
            if len(texts) == 2:
                break
        await asyncio.sleep(0.05)  # really stalled: the fake holds the connection open
        rec = fake.requests[0]
        assert not rec.is_done() and rec.deltas_sent == 2
        closed_at = time.monotonic()
        await s.close()
    assert await rec.wait_closed(1)
    assert rec.outcome == "client_gone"
    assert rec.disconnected_at is not None
    assert rec.disconnected_at - closed_at < 0.1
    assert rec.finished_at is None
    assert fake.open_connections == 0


@pytest.mark.asyncio
async def test_stall_then_create_stream_close(fake, client):
    fake.enqueue(Scenario(deltas=list("abc"), stall_after=0, first_token_delay=0.0))
    stream = await _create(client)
    first = [await stream.__anext__(), await stream.__anext__()]
    assert [e.type for e in first] == ["message_start", "content_block_start"]
    closed_at = time.monotonic()
    await stream.close()
    rec = fake.requests[0]
    assert await rec.wait_closed(1)
    assert rec.disconnected_at is not None and rec.disconnected_at - closed_at < 0.1
    assert rec.deltas_sent == 0


@pytest.mark.asyncio
async def test_client_timeout_during_headers_delay_is_a_disconnect(fake):
    fake.enqueue(Scenario(headers_delay=5.0))
    async with anthropic.AsyncAnthropic(
        api_key="test-key", base_url=fake.base_url, max_retries=0, timeout=0.1
    ) as c:
        with pytest.raises(anthropic.APITimeoutError):
            await _create(c)
    rec = fake.requests[0]
    assert await rec.wait_closed(1)
    assert rec.outcome == "client_gone" and rec.disconnected_at is not None


@pytest.mark.asyncio
async def test_delays_and_interval(fake, client):
    fake.enqueue(
        Scenario(deltas=list("abcd"), headers_delay=0.1, first_token_delay=0.1, interval=0.05)
    )
    t0 = time.monotonic()
    async with _stream(client) as s:
        t_enter = time.monotonic()
        stamps = [time.monotonic() async for _ in s.text_stream]
    assert t_enter - t0 >= 0.1
    assert stamps[0] - t_enter >= 0.09
    assert stamps[-1] - stamps[0] >= 3 * 0.05 - 0.01
    assert stamps[-1] - t0 < 1.0


@pytest.mark.asyncio
async def test_stop_closes_stalled_connections(fake, client):
    fake.enqueue(Scenario(stall_after=1))
    with pytest.raises(httpx2.TransportError):
        async with _stream(client) as s:
            async for _ in s.text_stream:
                await fake.stop()
    rec = fake.requests[0]
    assert rec.is_done()
    assert rec.outcome == "server_closed" and rec.disconnected_at is None


# ---------------------------------------------------------------- keep-alive, concurrency


@pytest.mark.asyncio
async def test_keep_alive_sequential_requests_share_one_connection(fake, client):
    async with _stream(client) as s:
        assert await s.get_final_text() == "Hello, world!"
    async with await _create(client) as stream:
        n = len([e async for e in stream if e.type == "content_block_delta"])
    assert n == 4
    assert [r.outcome for r in fake.requests] == ["complete", "complete"]
    assert fake.requests[0].connection_id == fake.requests[1].connection_id
    assert fake.connections_opened == 1


@pytest.mark.asyncio
async def test_50_concurrent_streams_each_get_full_text(fake, client):
    n = 50
    fake.enqueue(
        *(Scenario(deltas=[f"s{i}-{k} " for k in range(20)], interval=0.002) for i in range(n))
    )

    async def one() -> tuple[str, str]:
        async with _stream(client) as s:
            text = "".join([t async for t in s.text_stream])
            assert s.request_id is not None
            return s.request_id, text

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 10)
    by_id = {r.request_id: r for r in fake.requests}
    assert len(by_id) == n
    for request_id, text in results:
        rec = by_id[request_id]
        assert rec.scenario is not None
        assert text == "".join(rec.scenario.deltas)
        assert rec.outcome == "complete"


# ---------------------------------------------------------------- in_thread, standalone


def test_in_thread_with_sync_client():
    with FakeAnthropic.in_thread(default=Scenario(deltas=["x", "y"])) as fake:
        with anthropic.Anthropic(api_key="test-key", base_url=fake.base_url, max_retries=0) as c:
            with c.messages.stream(model=MODEL, max_tokens=5, messages=MSGS) as s:
                assert s.get_final_text() == "xy"
            fake.enqueue(Scenario(deltas=list("abc"), stall_after=1))
            with c.messages.stream(model=MODEL, max_tokens=5, messages=MSGS) as s:
                assert next(iter(s.text_stream)) == "a"
                closed_at = time.monotonic()
        rec = fake.requests[-1]
        assert rec.wait(1)  # threading.Event, from this (non-loop) thread
        assert rec.disconnected_at is not None and rec.disconnected_at - closed_at < 0.1
    with pytest.raises(RuntimeError):
        _ = fake.base_url  # stopped


@pytest.mark.asyncio
async def test_in_thread_awaited_from_another_loop():
    with FakeAnthropic.in_thread() as fake:
        fake.enqueue(Scenario(stall_after=1))
        async with anthropic.AsyncAnthropic(
            api_key="test-key", base_url=fake.base_url, max_retries=0
        ) as c:
            async with _stream(c) as s:
                async for _ in s.text_stream:
                    break
            (rec,) = await fake.wait_for_requests(1)
            assert await rec.wait_closed(1)  # polls, since we're not on the fake's loop
            assert rec.outcome == "client_gone"


def test_standalone_main_subprocess():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.anthropic_upstream",
            "--port",
            "0",
            "--deltas",
            "5",
            "--interval",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.split()[-1]
        assert base_url.startswith("http://127.0.0.1:")
        with (
            anthropic.Anthropic(api_key="k", base_url=base_url, max_retries=0) as c,
            c.messages.stream(model=MODEL, max_tokens=5, messages=MSGS) as s,
        ):
            assert s.get_final_text() == "lorem ipsum dolor sit amet "
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert "served 1 requests" in err
