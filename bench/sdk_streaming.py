"""CPU cost per relayed text delta of the anthropic SDK's streaming APIs.

Starts the fake upstream (tests/fakes/anthropic_upstream.py) in a SUBPROCESS, so its CPU
is not counted, then in this process runs N concurrent streams per mode and reports
``time.process_time()`` of this process divided by the number of text deltas received.
Nothing is subtracted: the figure includes request building, connection handling, SSE
decoding, JSON parsing and model construction, amortized over the deltas.

Modes:
  sdk-stream-text   client.messages.stream(); iterate stream.text_stream
  sdk-create-events client.messages.create(stream=True); iterate the events and take the
                    text of content_block_delta/text_delta events
  sdk-raw-bytes     client.messages.with_streaming_response.create(stream=True); iterate
                    response.http_response.aiter_bytes() with a minimal hand-written SSE parser
                    (json.loads only on content_block_delta frames). Keeps the SDK's auth,
                    base URL, headers and retries for the request itself.
  sdk-raw-lines     as sdk-raw-bytes, via http_response.aiter_lines() and a line parser
  httpx2-raw-bytes  baseline: a plain httpx2.AsyncClient POST + the same byte parser

Usage (from the repo root):
  python bench/sdk_streaming.py --streams 200 --deltas 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anthropic
import httpx2
from anthropic.types import MessageParam, RawContentBlockDeltaEvent, TextDelta

from loadgen import raise_nofile_limit  # a sibling script: bench/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-bench"
MESSAGES: list[MessageParam] = [{"role": "user", "content": "bench"}]
API_KEY = "bench-key"


# ------------------------------------------------------------------ minimal SSE parsers


class UpstreamError(Exception):
    pass


class ByteSSEParser:
    """Minimal Anthropic SSE parser over raw bytes; json.loads only on content_block_delta."""

    __slots__ = ("buf", "stopped")

    def __init__(self) -> None:
        self.buf = b""
        self.stopped = False

    def feed(self, chunk: bytes) -> list[str]:
        buf = self.buf + chunk if self.buf else chunk
        if b"\r" in buf:  # tolerate CRLF framing (Anthropic sends LF)
            buf = buf.replace(b"\r\n", b"\n")
        frames = buf.split(b"\n\n")
        self.buf = frames.pop()
        out: list[str] = []
        for f in frames:
            if f.startswith(b"event: content_block_delta"):
                delta = json.loads(f[f.index(b"data:") + 5 :])["delta"]
                if delta["type"] == "text_delta":
                    out.append(delta["text"])
            elif f.startswith(b"event: message_stop"):
                self.stopped = True
            elif f.startswith(b"event: error"):
                raise UpstreamError(f[f.index(b"data:") + 5 :].decode())
        return out


class LineSSEParser:
    """The same over decoded lines (aiter_lines)."""

    __slots__ = ("event", "stopped")

    def __init__(self) -> None:
        self.event = ""
        self.stopped = False

    def feed_line(self, line: str) -> str | None:
        if not line:
            self.event = ""
        elif line.startswith("event:"):
            self.event = line[6:].strip()
            if self.event == "message_stop":
                self.stopped = True
        elif line.startswith("data:"):
            if self.event == "content_block_delta":
                delta = json.loads(line[5:])["delta"]
                if delta["type"] == "text_delta":
                    return delta["text"]  # type: ignore[no-any-return]
            elif self.event == "error":
                raise UpstreamError(line[5:])
        return None


# ------------------------------------------------------------------ one stream per mode


async def sdk_stream_text(client: anthropic.AsyncAnthropic, _: httpx2.AsyncClient) -> int:
    n = 0
    async with client.messages.stream(model=MODEL, max_tokens=1000, messages=MESSAGES) as s:
        async for _text in s.text_stream:
            n += 1
    return n


async def sdk_create_events(client: anthropic.AsyncAnthropic, _: httpx2.AsyncClient) -> int:
    n = 0
    stream = await client.messages.create(
        model=MODEL, max_tokens=1000, messages=MESSAGES, stream=True
    )
    async with stream:
        async for ev in stream:
            if isinstance(ev, RawContentBlockDeltaEvent) and isinstance(ev.delta, TextDelta):
                _text = ev.delta.text
                n += 1
    return n


async def sdk_raw_bytes(client: anthropic.AsyncAnthropic, _: httpx2.AsyncClient) -> int:
    n = 0
    parser = ByteSSEParser()
    async with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=1000, messages=MESSAGES, stream=True
    ) as resp:
        async for chunk in resp.http_response.aiter_bytes():
            n += len(parser.feed(chunk))
    assert parser.stopped
    return n


async def sdk_raw_lines(client: anthropic.AsyncAnthropic, _: httpx2.AsyncClient) -> int:
    n = 0
    parser = LineSSEParser()
    async with client.messages.with_streaming_response.create(
        model=MODEL, max_tokens=1000, messages=MESSAGES, stream=True
    ) as resp:
        async for line in resp.http_response.aiter_lines():
            if parser.feed_line(line) is not None:
                n += 1
    assert parser.stopped
    return n


_RAW_HEADERS = {
    "authorization": f"Bearer {API_KEY}",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "accept": "application/json",
}


async def httpx2_raw_bytes(_: anthropic.AsyncAnthropic, http: httpx2.AsyncClient) -> int:
    n = 0
    parser = ByteSSEParser()
    body = {"model": MODEL, "max_tokens": 1000, "messages": MESSAGES, "stream": True}
    async with http.stream("POST", "/v1/messages", headers=_RAW_HEADERS, json=body) as r:
        r.raise_for_status()
        async for chunk in r.aiter_bytes():
            n += len(parser.feed(chunk))
    assert parser.stopped
    return n


Runner = Callable[[anthropic.AsyncAnthropic, httpx2.AsyncClient], Awaitable[int]]
MODES: dict[str, Runner] = {
    "sdk-stream-text": sdk_stream_text,
    "sdk-create-events": sdk_create_events,
    "sdk-raw-bytes": sdk_raw_bytes,
    "sdk-raw-lines": sdk_raw_lines,
    "httpx2-raw-bytes": httpx2_raw_bytes,
}


# ------------------------------------------------------------------ fake subprocess


def start_fake(deltas: int, interval: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.anthropic_upstream",
            "--port",
            "0",
            "--deltas",
            str(deltas),
            "--interval",
            str(interval),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"fake did not start: {line!r}")
    return proc, line.split()[-1]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of another process (Linux /proc), for the fake's CPU column."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ------------------------------------------------------------------ measurement


async def run_mode(
    name: str, runner: Runner, base_url: str, streams: int, rounds: int, fake_pid: int | None
) -> dict[str, float]:
    limits = httpx2.Limits(
        max_connections=max(1000, streams), max_keepalive_connections=max(100, streams)
    )
    http_for_sdk = anthropic.DefaultAsyncHttpxClient(limits=limits)
    client = anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=base_url, max_retries=0, http_client=http_for_sdk
    )
    raw = httpx2.AsyncClient(base_url=base_url, limits=limits, timeout=600)
    cpu_per_delta: list[float] = []
    walls: list[float] = []
    fake_per_delta: list[float] = []
    expected = None
    try:
        for rnd in range(rounds + 1):  # round 0 warms up the connection pool and imports
            fake0 = proc_cpu_seconds(fake_pid) if fake_pid else None
            c0, w0 = time.process_time(), time.perf_counter()
            counts = await asyncio.gather(*(runner(client, raw) for _ in range(streams)))
            c1, w1 = time.process_time(), time.perf_counter()
            fake1 = proc_cpu_seconds(fake_pid) if fake_pid else None
            total = sum(counts)
            if expected is None:
                expected = counts[0]
            if any(c != expected for c in counts):
                raise SystemExit(f"{name}: uneven delta counts {set(counts)}")
            if rnd == 0:
                continue
            cpu_per_delta.append((c1 - c0) / total * 1e6)
            walls.append(w1 - w0)
            if fake0 is not None and fake1 is not None:
                fake_per_delta.append((fake1 - fake0) / total * 1e6)
    finally:
        await client.close()
        await raw.aclose()
    return {
        "median": statistics.median(cpu_per_delta),
        "min": min(cpu_per_delta),
        "wall": statistics.median(walls),
        "deltas": float(streams * (expected or 0)),
        "fake": statistics.median(fake_per_delta) if fake_per_delta else float("nan"),
    }


async def amain(args: argparse.Namespace) -> None:
    proc = None
    if args.url:
        base_url, fake_pid = args.url, None
    else:
        proc, base_url = start_fake(args.deltas, args.interval)
        fake_pid = proc.pid
    try:
        results = {}
        for name in args.modes:
            results[name] = await run_mode(
                name, MODES[name], base_url, args.streams, args.rounds, fake_pid
            )
            r = results[name]
            print(f"  {name}: {r['median']:.1f} µs/delta (min {r['min']:.1f})", file=sys.stderr)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    print()
    print(
        f"anthropic {anthropic.__version__}, httpx2 {httpx2.__version__}, "
        f"Python {sys.version.split()[0]}; {args.streams} concurrent streams × "
        f"{args.deltas} deltas, interval {args.interval}s; median of {args.rounds} rounds "
        f"after 1 warm-up round"
    )
    print()
    print("| mode | CPU µs/delta (median) | min | wall s/round | deltas/s | fake CPU µs/delta |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['median']:.1f} | {r['min']:.1f} | {r['wall']:.2f} | "
            f"{r['deltas'] / r['wall']:,.0f} | {r['fake']:.1f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=200, help="concurrent streams per round")
    p.add_argument("--deltas", type=int, default=200, help="text deltas per stream")
    p.add_argument("--interval", type=float, default=0.0, help="fake's seconds between deltas")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per mode")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--url", help="use an already running fake at this base URL")
    args = p.parse_args()
    raise_nofile_limit()
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
