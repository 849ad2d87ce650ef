"""Cheap load generator for bench/relay_bench.py: raw asyncio, one connection per stream.

Not meant to be run by hand (relay_bench.py starts it), but it can be::

    python bench/loadgen.py streams --port 8000 --target relay --mode sustained \
        --concurrency 100 --stream-seconds 4 --arrival-seconds 10 --deltas 100 --out r.json
    python bench/loadgen.py disconnect --relay-port 8000 --fake-port 9200 --tries 1000

`streams`: a minimal HTTP/1.1 client written on :class:`asyncio.Protocol` (uvloop when it is
installed): one TCP connection per stream, a POST with Content-Length, the chunked response
de-chunked and split into SSE frames incrementally. Every content frame is timestamped with
``time.perf_counter()`` at the ``data_received`` that brought it; only per-stream aggregates
are kept (time to first token, duration, largest gap, count), so the cost per delta is a few
byte searches. Against chatrelay (``--target relay``) it counts ``data: {"content"`` frames and
ends at ``data: [DONE]``; against the fake upstream directly (``--target direct``) it counts
``event: content_block_delta`` frames and ends at ``event: message_stop``.

Several processes can share one level: each takes the streams whose index ``i`` satisfies
``i % procs == shard``, and all start their schedules at the same wall-clock ``--start-at``.

`disconnect`: the upstream-closed-on-client-disconnect check. It runs the fake upstream
(tests/fakes/anthropic_upstream.FakeAnthropic) on its own event loop, so that the fake's
``RecordedRequest.disconnected_at`` and the client's close time come from the same clock
(``time.monotonic()``) and no cross-process signalling is needed. The chatrelay server under
test is started by relay_bench.py with ``ANTHROPIC_BASE_URL`` pointing at ``--fake-port``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Error codes of a stream (None: it completed with the expected number of deltas).
E_CONNECT = "connect"
E_STATUS = "status"
E_ERROR_FRAME = "error_frame"
E_SHORT = "short"
E_CLOSED = "closed_early"
E_TIMEOUT = "timeout"

_RELAY_CONTENT = b'data: {"content"'
_RELAY_DONE = b"data: [DONE]"
_RELAY_ERROR = b'data: {"error"'
_DIRECT_CONTENT = b"event: content_block_delta"
_DIRECT_DONE = b"event: message_stop"
_DIRECT_ERROR = b"event: error"


def raise_nofile_limit() -> None:
    """C=2,000 means 4,000+ sockets across the processes: lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop comes with chatrelay's dependencies
        return asyncio.new_event_loop()


def relay_request(host: str, port: int, text: str) -> bytes:
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    head = (
        f"POST /ai/stream/chat HTTP/1.1\r\nhost: {host}:{port}\r\n"
        "content-type: application/json\r\naccept: text/event-stream\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def direct_request(host: str, port: int, text: str) -> bytes:
    body = json.dumps(
        {
            "model": "claude-bench",
            "max_tokens": 1024,
            "stream": True,
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: {host}:{port}\r\n"
        "x-api-key: bench-key\r\nanthropic-version: 2023-06-01\r\n"
        "content-type: application/json\r\naccept: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class SSEClient(asyncio.Protocol):
    """One streamed response: de-chunks, splits frames, timestamps content frames."""

    __slots__ = (
        "_body_left",
        "_buf",
        "_chunk_left",
        "_content",
        "_done_marker",
        "_error_marker",
        "_headers_done",
        "_on_content",
        "_request",
        "_sse",
        "close_after",
        "done",
        "error",
        "finished",
        "max_gap",
        "n",
        "t_end",
        "t_first",
        "t_last",
        "transport",
    )

    def __init__(
        self,
        request: bytes,
        relay: bool,
        done: asyncio.Future[None],
        close_after: int | None = None,
        on_content: Callable[[SSEClient], None] | None = None,
    ) -> None:
        self._request = request
        self._content = _RELAY_CONTENT if relay else _DIRECT_CONTENT
        self._done_marker = _RELAY_DONE if relay else _DIRECT_DONE
        self._error_marker = _RELAY_ERROR if relay else _DIRECT_ERROR
        self.done = done
        self.close_after = close_after
        self._on_content = on_content
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._sse = b""
        self._headers_done = False
        self._chunk_left = -1  # bytes (payload + CRLF) left in the current chunk; -1: size line
        self._body_left = -1  # content-length bodies (error responses)
        self.n = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.t_end = 0.0
        self.max_gap = 0.0
        self.error: str | None = None
        self.finished = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        transport.write(self._request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._finish(E_CLOSED if self.error is None else self.error)

    def eof_received(self) -> bool:
        return False

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self._buf + data if self._buf else data
        if not self._headers_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            head = buf[:end]
            buf = buf[end + 4 :]
            self._headers_done = True
            status = head[9:12]
            if status != b"200":
                self.error = f"{E_STATUS}_{status.decode('latin-1', 'replace')}"
                self._finish(self.error)
                return
            if b"chunked" not in head.lower():
                self.error = f"{E_STATUS}_not_chunked"
                self._finish(self.error)
                return
        pos = 0
        size = len(buf)
        while pos < size and not self.finished:
            left = self._chunk_left
            if left < 0:  # a chunk-size line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                n = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if n == 0:
                    self._end_of_body()
                    return
                self._chunk_left = n + 2
                continue
            take = min(left, size - pos)
            payload = min(take, left - 2)  # the chunk's trailing CRLF is not payload
            if payload > 0:
                self._frames(buf[pos : pos + payload], now)
            pos += take
            left -= take
            self._chunk_left = left if left else -1
        self._buf = buf[pos:] if pos < size else b""

    # -- SSE frames ---------------------------------------------------------------------------
    def _frames(self, payload: bytes, now: float) -> None:
        sse = self._sse + payload if self._sse else payload
        if b"\n\n" not in sse:
            self._sse = sse
            return
        frames = sse.split(b"\n\n")
        self._sse = frames.pop()
        content = self._content
        for frame in frames:
            if content in frame:
                n = self.n + 1
                self.n = n
                if n == 1:
                    self.t_first = now
                else:
                    gap = now - self.t_last
                    if gap > self.max_gap:
                        self.max_gap = gap
                self.t_last = now
                if self._on_content is not None:
                    self._on_content(self)
                    if self.finished:
                        return
            elif self._done_marker in frame:
                self.t_end = now
            elif self._error_marker in frame:
                self.error = E_ERROR_FRAME

    def _end_of_body(self) -> None:
        if self.error is None and self.t_end == 0.0:
            self.error = E_CLOSED  # the body ended without [DONE] / message_stop
        self._finish(self.error)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.error = error
        if self.transport is not None and error is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def timeout(self) -> None:
        if not self.finished:
            self._finish(E_TIMEOUT)
            if self.transport is not None:
                self.transport.abort()


# ------------------------------------------------------------------------------ streams


async def run_streams(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    relay = args.target == "relay"
    host, port = args.host, args.port
    make = relay_request if relay else direct_request
    if args.mode == "burst":
        total = args.concurrency
        rate = float("inf")
    else:
        rate = args.concurrency / args.stream_seconds  # C streams open at once
        total = round(rate * args.arrival_seconds)
    mine = list(range(args.shard, total, args.procs))
    # A common schedule origin across processes: wall clock -> this process's clocks.
    lag = max(0.0, args.start_at - time.time()) if args.start_at else 0.0
    t0_perf = time.perf_counter() + lag
    t0_loop = loop.time() + lag
    records: list[list[Any]] = []
    tasks: set[asyncio.Task[None]] = set()
    all_done = loop.create_future()
    remaining = [len(mine)]
    if not mine:
        all_done.set_result(None)

    async def one(i: int) -> None:
        t_start = time.perf_counter()
        done: asyncio.Future[None] = loop.create_future()
        proto = SSEClient(make(host, port, f"bench {i}"), relay, done)
        handle = loop.call_later(args.stream_timeout, proto.timeout)
        try:
            try:
                connect = loop.create_connection(lambda: proto, host, port)
                await asyncio.wait_for(connect, args.stream_timeout)
            except (OSError, TimeoutError) as exc:
                proto.error = f"{E_CONNECT}_{type(exc).__name__}"
                proto.finished = True
            if not proto.finished:
                await done
        finally:
            handle.cancel()
            if proto.transport is not None and not proto.transport.is_closing():
                proto.transport.close()
        error = proto.error
        if error is None and proto.n != args.deltas:
            error = E_SHORT
        ttft = proto.t_first - t_start if proto.n else None
        dur = proto.t_end - t_start if proto.t_end else None
        records.append(
            [
                round(t_start - t0_perf, 6),
                None if ttft is None else round(ttft, 6),
                None if dur is None else round(dur, 6),
                round(proto.max_gap, 6),
                proto.n,
                error,
            ]
        )

    def spawn(i: int) -> None:
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(finished)

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a bug in this file
            print(f"loadgen: stream task failed: {task.exception()!r}", file=sys.stderr)
        remaining[0] -= 1
        if remaining[0] == 0 and not all_done.done():
            all_done.set_result(None)

    cpu0 = time.process_time()
    if args.mode == "burst":
        loop.call_at(t0_loop, lambda: [spawn(i) for i in mine])
    else:
        for i in mine:
            loop.call_at(t0_loop + i / rate, spawn, i)
    await all_done
    wall = time.perf_counter() - t0_perf
    cpu = time.process_time() - cpu0
    return {
        "target": args.target,
        "mode": args.mode,
        "shard": args.shard,
        "procs": args.procs,
        "streams": len(mine),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        # [start offset s, ttft s, duration s, largest gap s, deltas, error]
        "records": records,
    }


# --------------------------------------------------------------------------- disconnect


async def wait_http_ok(host: str, port: int, path: str = "/healthz", wait_s: float = 20.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            writer.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port}{path} not ready")
        await asyncio.sleep(0.1)


async def run_disconnect(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.fakes.anthropic_upstream import FakeAnthropic, Scenario, make_deltas

    loop = asyncio.get_running_loop()
    host = args.host
    # Long enough that no stream can end on its own before the client goes away.
    scenario = Scenario(deltas=make_deltas(2000), interval=args.interval)
    fake = FakeAnthropic(host, args.fake_port, scenario)
    await fake.start()
    by_marker: dict[str, Any] = {}
    scanned = [0]

    def find(marker: str) -> Any:
        reqs = fake.requests
        while scanned[0] < len(reqs):
            rec = reqs[scanned[0]]
            scanned[0] += 1
            for message in rec.body.get("messages", []):
                content = message.get("content")
                if isinstance(content, str) and content.startswith("disconnect-check "):
                    by_marker[content] = rec
        return by_marker.pop(marker, None)

    results: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> None:
        async with sem:
            marker = f"disconnect-check {i}"
            done: asyncio.Future[None] = loop.create_future()
            closed_at = [0.0]

            def on_content(proto: SSEClient) -> None:
                if proto.n >= args.read_deltas and not proto.finished:
                    closed_at[0] = time.monotonic()
                    proto.finished = True  # we leave: nothing after this is an error
                    assert proto.transport is not None
                    proto.transport.close()  # FIN, as a browser tab or a client going away
                    if not done.done():
                        done.set_result(None)

            proto = SSEClient(
                relay_request(host, args.relay_port, marker), True, done, None, on_content
            )
            handle = loop.call_later(10.0, proto.timeout)
            try:
                await loop.create_connection(lambda: proto, host, args.relay_port)
                await done
            except OSError as exc:
                proto.error = f"{E_CONNECT}_{type(exc).__name__}"
            finally:
                handle.cancel()
            entry: dict[str, Any] = {"try": i, "latency_ms": None, "outcome": None}
            if not closed_at[0]:
                entry["outcome"] = f"client_{proto.error or 'no_deltas'}"
                results.append(entry)
                return
            rec = None
            deadline = time.monotonic() + 2.0
            while rec is None and time.monotonic() < deadline:
                rec = find(marker)
                if rec is None:
                    await asyncio.sleep(0.005)
            if rec is None:
                entry["outcome"] = "no_upstream_request"
            else:
                await rec.wait_closed(args.wait)
                entry["outcome"] = rec.outcome or "still_open"
                if rec.disconnected_at is not None:
                    entry["latency_ms"] = round((rec.disconnected_at - closed_at[0]) * 1000, 3)
            results.append(entry)

    try:
        await wait_http_ok(host, args.relay_port)
        # Warm up (first-request imports, upstream pool) outside the counted tries.
        await asyncio.gather(*(one(-1 - k) for k in range(min(5, args.tries))))
        results.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(args.tries)))
        wall = time.perf_counter() - t0
    finally:
        await fake.stop()
    lat = sorted(r["latency_ms"] for r in results if r["latency_ms"] is not None)
    within = sum(1 for r in results if r["latency_ms"] is not None and r["latency_ms"] <= 100.0)
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "tries": args.tries,
        "within_100ms": within,
        "closed": len(lat),
        "latency_ms_p50": _pct(lat, 50),
        "latency_ms_p99": _pct(lat, 99),
        "latency_ms_max": lat[-1] if lat else None,
        "outcomes": outcomes,
        "concurrency": args.concurrency,
        "read_deltas": args.read_deltas,
        "wall_s": round(wall, 3),
    }


def _pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return None
    k = max(0, min(len(values) - 1, -(-len(values) * p // 100) - 1))
    return values[int(k)]


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("streams", help="one level of streams against chatrelay or the fake")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--target", choices=["relay", "direct"], required=True)
    s.add_argument("--mode", choices=["sustained", "burst"], required=True)
    s.add_argument("--concurrency", type=int, required=True, help="C: streams open at once")
    s.add_argument("--stream-seconds", type=float, default=4.0, help="a stream's nominal length")
    s.add_argument("--arrival-seconds", type=float, default=10.0, help="sustained: arrivals for")
    s.add_argument("--deltas", type=int, default=100, help="deltas a complete stream carries")
    s.add_argument("--stream-timeout", type=float, default=30.0)
    s.add_argument("--procs", type=int, default=1)
    s.add_argument("--shard", type=int, default=0)
    s.add_argument("--start-at", type=float, default=0.0, help="wall-clock start (time.time())")
    s.add_argument("--out", required=True)
    d = sub.add_parser("disconnect", help="upstream closed when the client goes away?")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--relay-port", type=int, required=True)
    d.add_argument("--fake-port", type=int, required=True)
    d.add_argument("--tries", type=int, default=1000)
    d.add_argument("--concurrency", type=int, default=50)
    d.add_argument("--read-deltas", type=int, default=3)
    d.add_argument("--interval", type=float, default=0.01, help="fake's seconds between deltas")
    d.add_argument("--wait", type=float, default=2.0, help="seconds to wait for the close")
    d.add_argument("--out", required=True)
    args = p.parse_args(argv)

    raise_nofile_limit()
    gc.collect()
    gc.freeze()  # nothing allocated so far is garbage: keep the collector off it
    # The in-process fake of `disconnect` asserts asyncio.Transport: stock loop there.
    loop = new_loop() if args.cmd == "streams" else asyncio.new_event_loop()
    try:
        coro = run_streams(args) if args.cmd == "streams" else run_disconnect(args)
        result = loop.run_until_complete(coro)
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    tmp = f"{args.out}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(result, f, separators=(",", ":"))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
