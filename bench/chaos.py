"""Chaos run: minutes of mixed traffic against two chatrelay instances behind nginx while the
instances are killed and restarted and Redis is restarted at random; then a check that no
reply was lost, no stream silently cut, no conversation left inconsistent or locked.

    python bench/chaos.py                        # 3 minutes: bench/results/chaos.json + docs
    python bench/chaos.py --minutes 2 --seed 7   # the same mix of choices for the same seed
    python bench/chaos.py --minutes 0.5 --no-doc --keep-workdir   # a short try, logs kept
    python bench/chaos.py --render bench/results/chaos.json       # only rewrite the docs

Not part of `make test`: it takes minutes and its faults are random. Run it from the repo root
with the venv's Python; it needs nginx, redis-server and PostgreSQL's binaries (as `make test`).

What runs, every server on a free loopback port (work dir under /tmp):
  * a private PostgreSQL and a private redis-server (tests/servers.py), never the shared
    127.0.0.1:5432 and :6379 other work uses; Redis keeps nothing on disk, so each restart
    loses every stream it held;
  * the fake Anthropic upstream, steered by each prompt (bench/chaos_upstream.py): every reply's
    text is known before it is asked for, so streams and stored replies are held to it exactly;
  * two `chatrelay serve` instances, `a` and `b`, sharing them (CHATRELAY_AUTH=none, a short
    resume grace and conversation lock timeout), behind nginx's round robin
    (tests/processes.py); every restart of an instance is a new incarnation (`a2`, `a3`...) on
    the same port, with its own log;
  * this process: the clients and the fault injector.

Traffic: `--clients` tasks, each taking a conversation (a new one, or one parked earlier) and
sending its next message, a few turns per conversation, mixed: plain streams read to `[DONE]`;
streams the client drops once or twice and resumes (`GET /ai/stream/{id}`, `Last-Event-ID`)
after a pause, through nginx, so often on the other instance; streams stopped half-way
(`POST /ai/stream/{id}/stop`, also through nginx); streams whose upstream fails half-way; and
`/v1/chat/completions` streams, in a conversation (`metadata.conversation_id`) or stateless.
A connection cut by a fault is resumed the same way (`/v1` streams cannot be). A refused turn
(409 busy, 503) is parked and sent again later; after a failed reply the client sends the same
message again or moves on to a new one, as people do.

Faults (`--faults`, one every `--fault-every` seconds on average, seeded): `kill` SIGKILLs an
instance while the other is up and restarts it a few seconds later; `redis` kills Redis and
starts it again, empty, after up to 4 s; `term` (not by default) is a graceful restart.

Checks, after the traffic and a quiet spell:
  * every stream ended with `end` `completed` and exactly its expected text, or with an explicit
    end: an error frame then `end` (`reason: error`) then `[DONE]`, a stop we asked for, or a
    failure the client could see (refused, connection cut on /v1, resume refused);
    never a completed-looking stream with a text that is short, different or gapped (frame ids
    must follow each other across resumes), never a stream that hangs;
  * every conversation, as `GET /conversations/{id}` gives it: a reply the client saw completed
    is stored completed with exactly that text; a reply it saw stopped or failed is stored
    with that end and that text; a stored completed reply has its prompt's expected text; no
    two user messages in a row (a failed or interrupted reply in between is fine, none is not),
    no user message without a reply at the end, no message stored twice;
  * no conversation stays locked: after the conversation lock timeout (plus a margin) a new
    message to each one is accepted (no 409 `conversation_busy`) and completes.

Exit status 0 when nothing was lost or inconsistent, 1 when something was (the summary and the
JSON list each kind with examples: stream ids, turns, the faults around them), 2 when the
cluster itself could not be run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from chaos_upstream import ReplySpec  # a sibling script: bench/ is on sys.path
from relay_bench import git_commit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import (  # noqa: E402 - needs ROOT on sys.path
    Process,
    chatrelay_env,
    free_port,
    launch_nginx,
    start_chatrelay,
    wait_healthy,
)
from tests.servers import PrivatePostgres, PrivateRedis, private_postgres  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "chaos.json"
DOC = ROOT / "docs" / "BENCHMARKS.md"
MARK_START = "<!-- bench:chaos:start (generated by bench/chaos.py; edits are lost) -->"
MARK_END = "<!-- bench:chaos:end -->"

# The instances' settings that the checks depend on.
LOCK_S = 15.0  # CHATRELAY_CONVERSATION_LOCK_S: a crashed stream's lock is taken over after this
GRACE_S = 6.0  # CHATRELAY_RESUME_GRACE_S: a dropped stream waits this long for its resume
HEARTBEAT_S = 5.0  # CHATRELAY_HEARTBEAT_S
SHUTDOWN_GRACE_S = 3.0  # CHATRELAY_SHUTDOWN_GRACE_S (the `term` fault)

# The clients.
READ_TIMEOUT_S = 4 * HEARTBEAT_S  # silence longer than this (no heartbeat either) is a cut
RESUME_WINDOW_S = 30.0  # how long a client keeps trying to resume after a cut
MAX_RESUMES = 12  # per stream
STREAM_LIMIT_S = 150.0  # a stream not ended by then hangs (a problem)
POST_TRIES = 6  # a request nobody answered is sent again (same Idempotency-Key), for ~9 s
TAKEOVER_MARGIN_S = 10.0  # beyond LOCK_S, for the final lock check

# The traffic mix (relative weights) and the faults (relative weights).
KINDS = {"chat": 40, "drop": 20, "stop": 10, "fail": 8, "v1": 11, "v1_stateless": 11}
FAULTS = {"kill": 2, "redis": 1, "term": 1}
DEFAULT_FAULTS = "kill,redis"

# What a problem is, in a sentence (the JSON and the docs name them).
PROBLEMS = {
    "truncated": "a stream ended `completed` with only the start of its text",
    "wrong_text": "a stream's text is not (a prefix of) the text its upstream sent",
    "gap": "frame ids skipped or repeated across a stream's connections",
    "error_without_frame": "a stream ended with reason `error` but no error frame before it",
    "no_end_frame": "a stream reached `[DONE]` without an `end` frame",
    "unexpected_end": "a stream ended with a reason nobody asked for (e.g. `stopped`)",
    "stop_contradiction": "a Stop's answer (`stopped`/`finished`) contradicts how the stream ended",
    "v1_silent_end": "a /v1 stream ended without `[DONE]`, or with it but without finish or error",
    "hung": f"a stream did not end within {STREAM_LIMIT_S:.0f} s",
    "lost_reply": "the client saw `completed`; no reply of that stream is stored",
    "reply_differs": "the stored reply's end or text differs from what the client saw end",
    "ended_reply_missing": "the client saw the stream stopped or failed; nothing of it is stored",
    "stored_text_wrong": "a stored `completed` reply does not have its prompt's text",
    "missing_reply": "a user message with no reply after it (the next message, or nothing)",
    "double_reply": "a second reply right after a completed one",
    "conversation_missing": "a conversation with accepted turns cannot be read",
    "stuck_lock": f"still 409 `conversation_busy` {LOCK_S + TAKEOVER_MARGIN_S:.0f} s after the run",
    "probe_failed": "the final message to a conversation was accepted but did not complete",
    "stale_generating": "a reply still `generating` after its conversation went on",
}


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_difference(got: str, want: str) -> int:
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return index
    return min(len(got), len(want))


# -- the cluster ------------------------------------------------------------------------------
@dataclass
class Instance:
    name: str  # "a" or "b"
    port: int
    process: Process | None = None
    incarnation: int = 0
    up: bool = False

    @property
    def label(self) -> str:
        return f"{self.name}{self.incarnation}"


@dataclass
class Fault:
    kind: str  # kill, redis, term
    target: str  # the incarnation killed, or "redis"
    at: float  # seconds since the start of the traffic
    down_s: float = 0.0  # how long it was away (until healthy again)
    note: str = ""

    @property
    def until(self) -> float:
        return self.at + self.down_s

    def describe(self) -> str:
        return f"{self.kind} {self.target} at {self.at:.1f} s (down {self.down_s:.1f} s)"


class Cluster:
    """PostgreSQL, Redis, the upstream, two chatrelay instances and nginx."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Process] = []  # every process, for the final stop
        self.stack = contextlib.ExitStack()
        self.postgres: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.redis_up = False
        self.instances = [Instance("a", 0), Instance("b", 0)]
        self.labels: dict[str, str] = {}  # X-Chatrelay-Instance -> incarnation label
        self.failed_starts: list[str] = []  # incarnations that exited at startup, and why
        self.env: dict[str, str] = {}
        self.url = ""

    async def start(self) -> None:
        log("starting PostgreSQL and Redis (private, free ports)")
        self.postgres = await asyncio.to_thread(self.stack.enter_context, private_postgres())
        self.redis = PrivateRedis(self.workdir / "redis")
        self.redis.root.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.redis.start)
        self.stack.callback(self.redis.stop)
        self.redis_up = True

        port = free_port()
        upstream = Process(
            "upstream",
            [sys.executable, str(ROOT / "bench" / "chaos_upstream.py"), "--port", str(port)],
            dict(os.environ),
            ROOT,
            self.workdir / "upstream.log",
        )
        self.started.append(upstream)
        await self._wait_output(upstream, f"listening on http://127.0.0.1:{port}", 20)

        self.env = chatrelay_env(
            CHATRELAY_PROVIDER="anthropic",
            ANTHROPIC_API_KEY="sk-ant-chaos",
            ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}",
            CHATRELAY_AUTH="none",
            DATABASE_URL=self.postgres.url,
            REDIS_URL=self.redis.url,
            CHATRELAY_REDIS_PREFIX="chaos",
            CHATRELAY_RESUME_GRACE_S=str(GRACE_S),
            CHATRELAY_CONVERSATION_LOCK_S=str(LOCK_S),
            CHATRELAY_HEARTBEAT_S=str(HEARTBEAT_S),
            CHATRELAY_SHUTDOWN_GRACE_S=str(SHUTDOWN_GRACE_S),
            CHATRELAY_LOG_FORMAT="json",
            CHATRELAY_LOG_LEVEL="info",
        )
        avoid = {port, self.redis.port, self.postgres.port}
        for instance in self.instances:
            instance.port = free_port()
            while instance.port in avoid:
                instance.port = free_port()
            avoid.add(instance.port)
        log("starting chatrelay instances a and b")
        await asyncio.gather(*(self.start_instance(i) for i in self.instances))
        _, nginx_port = await launch_nginx(
            self.workdir / "nginx", [i.port for i in self.instances], self.started, avoid
        )
        self.url = f"http://127.0.0.1:{nginx_port}"
        log(f"nginx at {self.url}, instances on ports {[i.port for i in self.instances]}")

    @staticmethod
    async def _wait_output(process: Process, text: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while text not in process.output():
            if not process.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} did not start:\n{process.output()[-2000:]}")
            await asyncio.sleep(0.05)

    async def start_instance(self, instance: Instance, tries: int = 10) -> None:
        """A new incarnation on the instance's own port (nginx knows only those two), tried
        again a second later while it exits at startup; every failed start is recorded."""
        for attempt in range(tries):
            instance.incarnation += 1
            label = instance.label
            process = start_chatrelay(
                f"chatrelay-{label}", instance.port, self.env, self.workdir / label
            )
            self.started.append(process)
            try:
                health = await wait_healthy(process, instance.port, limit_s=90)
            except AssertionError as exc:
                await process.stop(2)
                self.failed_starts.append(f"{label}: {startup_error(process.output())}")
                if attempt == tries - 1:
                    raise RuntimeError(
                        f"instance {label} did not start: {clip(str(exc), 2000)}"
                    ) from None
                await asyncio.sleep(1)
                continue
            instance.process = process
            self.labels[health["instance"]] = label
            instance.up = True
            return

    def label_of(self, response: httpx.Response) -> str:
        instance_id = response.headers.get("x-chatrelay-instance", "")
        if instance_id in self.labels:
            return self.labels[instance_id]
        # A JSON answer (a Stop's) has no instance header: nginx says which port answered.
        upstream = response.headers.get("x-test-upstream", "").split(",")[-1].strip()
        for instance in self.instances:
            if upstream.endswith(f":{instance.port}"):
                return instance.label
        return "?"

    async def stop_redis(self) -> None:
        assert self.redis is not None
        self.redis_up = False
        await asyncio.to_thread(self.redis.stop)

    async def start_redis(self) -> None:
        assert self.redis is not None
        await asyncio.to_thread(self.redis.start)
        self.redis_up = True

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("[ab]*/server-*.log"))

    async def close(self) -> None:
        await asyncio.gather(*(p.stop(5) for p in self.started if p.alive), return_exceptions=True)
        await asyncio.to_thread(self.stack.close)


def startup_error(output: str) -> str:
    """The last line of the exception an instance died of at startup (its JSON log)."""
    for line in reversed(output.splitlines()):
        with contextlib.suppress(ValueError, AttributeError):
            entry = json.loads(line)
            text = entry.get("exception") or entry.get("message") or ""
            if "Traceback" in text:
                return clip(text.strip().splitlines()[-1], 200)
    return clip(output.strip().splitlines()[-1] if output.strip() else "no output", 200)


# -- reading streams --------------------------------------------------------------------------
@dataclass(slots=True)
class Frame:
    id: int | None
    event: str
    data: str

    @property
    def done(self) -> bool:
        return self.data == "[DONE]"

    def payload(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


async def sse_frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """The complete SSE frames of a response (a frame cut half-way is never yielded)."""
    event, data, frame_id = "", [], None
    async for line in response.aiter_lines():
        if not line:
            if data or event:
                yield Frame(frame_id, event or "message", "\n".join(data))
            event, data, frame_id = "", [], None
            continue
        if line.startswith(":"):
            continue  # a heartbeat
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            frame_id = int(value) if value.isdigit() else -1


@dataclass
class StreamRecord:
    """One stream as its client lived it."""

    n: int
    kind: str  # see KINDS, or "probe"
    spec: ReplySpec
    conversation: str | None
    started: float
    ended: float = 0.0
    stream_id: str | None = None
    text: str = ""
    outcome: str = ""  # completed, stopped, error:<code>, disconnected, refused:<x>, cut, ...
    end_reason: str | None = None
    error_code: str | None = None
    served: list[str] = field(default_factory=list)  # incarnations: the POST's, then resumes'
    resumes: int = 0
    drops: int = 0  # the client's own
    cuts: list[str] = field(default_factory=list)  # connections lost to faults
    stop: dict[str, Any] | None = None
    retry_after: float | None = None  # a refusal's Retry-After
    stored: str | None = None  # the stored reply of its stream, as the final check found it
    issues: list[tuple[str, str]] = field(default_factory=list)  # stream-level problems

    @property
    def expected(self) -> str:
        return self.spec.text

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "kind": self.kind,
            "turn": self.spec.turn,
            "conversation": self.conversation,
            "stream_id": self.stream_id,
            "outcome": self.outcome,
            "served_by": self.served,
            "resumes": self.resumes,
            "cuts": self.cuts,
            "stop": self.stop,
            "started_s": round(self.started, 2),
            "ended_s": round(self.ended, 2),
            "chars": len(self.text),
            "expected_chars": len(self.expected),
            "stored": self.stored,
        }


class SeedState:
    """What a client has of one /ai/stream/chat stream, over all its connections."""

    def __init__(self) -> None:
        self.last_id = 0
        self.text: list[str] = []
        self.contents = 0
        self.error: dict[str, Any] | None = None
        self.error_id: int | None = None
        self.end: dict[str, Any] | None = None
        self.end_id: int | None = None
        self.done = False
        self.issues: list[tuple[str, str]] = []

    def take(self, frame: Frame) -> bool:
        """Take one frame; True if it carried text."""
        if frame.id is None or frame.id < 0:
            self.issues.append(("gap", f"a frame without an id: {clip(frame.data, 60)}"))
        elif frame.id <= self.last_id:
            self.issues.append(("gap", f"frame {frame.id} again after {self.last_id}"))
            return False  # as chatrelay.js does: a frame seen once is not shown twice
        elif frame.id != self.last_id + 1:
            self.issues.append(("gap", f"frame {frame.id} right after {self.last_id}"))
        if frame.id is not None and frame.id > self.last_id:
            self.last_id = frame.id
        if frame.done:
            self.done = True
            return False
        payload = frame.payload()
        if frame.event == "end":
            self.end, self.end_id = (payload if isinstance(payload, dict) else {}), frame.id
        elif frame.event == "message" and isinstance(payload, dict):
            if "content" in payload:
                self.text.append(str(payload["content"]))
                self.contents += 1
                return True
            if "error" in payload:
                self.error, self.error_id = payload, frame.id
        return False


# -- the clients ------------------------------------------------------------------------------
class Refused(Exception):
    """A request answered with an error status: the client knows it was not served."""

    def __init__(self, outcome: str, retry_after: float | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.retry_after = retry_after


@dataclass
class Conversation:
    id: str
    planned: int  # turns to send
    turns: int = 0  # new messages sent so far (the next one's number)
    not_before: float = 0.0
    again: tuple[str, ReplySpec] | None = None  # a message to send again, and how
    refused_since: float | None = None
    records: list[StreamRecord] = field(default_factory=list)

    def records_accepted(self) -> bool:
        return any(r.stream_id for r in self.records)


class Traffic:
    """The clients: conversations, streams, resumes, Stops; every stream recorded."""

    def __init__(self, cluster: Cluster, clients: int, seed: int, t0: float) -> None:
        self.cluster = cluster
        self.clients = clients
        self.seed = seed
        self.t0 = t0
        self.records: list[StreamRecord] = []
        self.conversations: dict[str, Conversation] = {}
        self.parked: list[Conversation] = []
        self.stateless = 0
        self.errors: list[str] = []  # the clients' own failures (harness errors)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=5, read=READ_TIMEOUT_S, write=10, pool=30),
            limits=httpx.Limits(
                max_connections=4 * clients + 20, max_keepalive_connections=clients
            ),
        )

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- the client loop ----------------------------------------------------------------------
    async def client(self, number: int, deadline: float) -> None:
        rng = random.Random(f"{self.seed}:client:{number}")
        while self.now() < deadline:
            kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
            if kind == "v1_stateless":
                self.stateless += 1
                spec = self._spec(rng, f"v{self.seed}-{self.stateless}", kind)
                await self.run(kind, spec, None, rng)
                await asyncio.sleep(rng.uniform(0.05, 0.4))
                continue
            conversation = self._conversation(rng)
            if conversation is None:
                await asyncio.sleep(0.2)
                continue
            if conversation.again is not None:
                kind, spec = conversation.again
            else:
                spec = self._spec(rng, f"{conversation.id}.{conversation.turns}", kind)
            record = await self.run(kind, spec, conversation.id, rng)
            conversation.records.append(record)
            self._after_turn(conversation, kind, spec, record, rng)
            if record.outcome.startswith(("refused", "unanswered")):
                # As a client should: Retry-After (capped), else a moment, before the next try.
                await asyncio.sleep(min(record.retry_after or 1.0, 5.0))

    def _conversation(self, rng: random.Random) -> Conversation | None:
        """A parked conversation that may go on, else a new one."""
        now = self.now()
        for index, conversation in enumerate(self.parked):
            if conversation.not_before <= now:
                return self.parked.pop(index)
        if len(self.parked) > 4 * self.clients:
            return None  # many waiting on their locks: wait with them rather than pile up
        number = len(self.conversations) + 1
        conversation = Conversation(f"chaos-{self.seed}-{number}", planned=rng.randint(2, 6))
        self.conversations[conversation.id] = conversation
        return conversation

    def _spec(self, rng: random.Random, turn: str, kind: str) -> ReplySpec:
        words = rng.randint(12, 60)
        fail = rng.randint(1, words - 2) if kind == "fail" else None
        return ReplySpec(turn, words, rng.choice((20, 30, 40, 60)), fail)

    def _after_turn(
        self,
        conversation: Conversation,
        kind: str,
        spec: ReplySpec,
        record: StreamRecord,
        rng: random.Random,
    ) -> None:
        outcome = record.outcome
        now = self.now()
        if outcome.startswith(("refused", "unanswered")):
            # Not taken (or not known to be): the same message later; busy: the lock may be a
            # crashed stream's, taken over after the lock timeout.
            conversation.again = (kind, spec)
            conversation.refused_since = conversation.refused_since or now
            if now - conversation.refused_since > LOCK_S + TAKEOVER_MARGIN_S:
                return  # given up; the final lock check will tell whether it was stuck
            conversation.not_before = now + (record.retry_after or 2.0)
            self.parked.append(conversation)
            return
        conversation.refused_since = None
        failed = outcome in ("cut", "unresumable", "resume_timeout", "disconnected", "hung") or (
            outcome.startswith("error:") and outcome != "error:overloaded"
        )
        if failed and rng.random() < 0.5:
            conversation.again = (kind, spec)  # "send the message again"
        else:
            conversation.again = None
            conversation.turns += 1
        if conversation.turns < conversation.planned:
            conversation.not_before = now + rng.uniform(0.05, 0.5)
            self.parked.append(conversation)

    # -- one stream ---------------------------------------------------------------------------
    async def run(
        self, kind: str, spec: ReplySpec, conversation: str | None, rng: random.Random
    ) -> StreamRecord:
        record = StreamRecord(len(self.records) + 1, kind, spec, conversation, self.now())
        self.records.append(record)
        try:
            async with asyncio.timeout(STREAM_LIMIT_S):
                if kind.startswith("v1"):
                    await self._v1(record)
                else:
                    await self._seed(record, rng)
        except Refused as refused:
            record.outcome = refused.outcome
            record.retry_after = refused.retry_after
        except TimeoutError:
            record.outcome = "hung"
            record.issues.append(("hung", f"not ended after {STREAM_LIMIT_S:.0f} s"))
        except Exception as exc:  # a bug of this script, not of the servers: said, not hidden
            record.outcome = "client_error"
            self.errors.append(f"stream #{record.n}: {type(exc).__name__}: {exc}")
        record.ended = self.now()
        return record

    async def _post(self, record: StreamRecord, path: str, body: dict[str, Any]) -> httpx.Response:
        """The request, sent again while it gets no answer at all (same Idempotency-Key)."""
        headers = {"idempotency-key": f"{record.spec.turn}#{record.n}"}
        delay = 0.3
        for attempt in range(POST_TRIES):
            request = self.http.build_request(
                "POST", f"{self.cluster.url}{path}", json=body, headers=headers
            )
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError as exc:
                what = f"unanswered:{type(exc).__name__}"
            else:
                if response.status_code == 200:
                    return response
                content = await response.aread()
                await response.aclose()
                if response.status_code in (502, 504):  # nginx found no instance to answer
                    what = f"unanswered:{response.status_code}"
                else:
                    code: Any = response.status_code
                    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
                        code = json.loads(content)["error"].get("code") or code
                    retry_after = response.headers.get("retry-after", "")
                    wait = float(retry_after) if retry_after.isdigit() else None
                    raise Refused(f"refused:{code}", wait)
            if attempt < POST_TRIES - 1:
                await asyncio.sleep(delay)
                delay *= 2
        raise Refused(what)

    async def _seed(self, record: StreamRecord, rng: random.Random) -> None:
        """A /ai/stream/chat stream, resumed after every drop and cut, until `[DONE]`."""
        spec, kind = record.spec, record.kind
        body: dict[str, Any] = {"messages": [{"role": "user", "content": spec.prompt()}]}
        if record.conversation is not None:
            body["conversation_id"] = record.conversation
        drops: list[int] = []  # after how many content frames the client lets go
        if kind == "drop":
            drops = sorted(rng.sample(range(1, spec.words - 1), rng.choice((1, 1, 2))))
        stop_at = rng.randint(2, max(2, spec.words // 2)) if kind == "stop" else None
        stopping: asyncio.Task[None] | None = None

        response = await self._post(record, "/ai/stream/chat", body)
        record.stream_id = response.headers.get("x-stream-id")
        record.served.append(self.cluster.label_of(response))
        state = SeedState()
        try:
            while True:
                until = drops[0] if drops else None
                how = "ended"
                try:
                    async for frame in sse_frames(response):
                        if not state.take(frame):
                            if state.done:
                                break
                            continue
                        if stop_at is not None and stopping is None and state.contents >= stop_at:
                            stopping = asyncio.create_task(self._stop(record))
                        if until is not None and state.contents >= until:
                            how = "dropped"
                            break
                    if state.done:
                        how = "done"
                except httpx.TransportError as exc:
                    how = "cut"
                    record.cuts.append(f"{type(exc).__name__} after frame {state.last_id}")
                finally:
                    await response.aclose()
                if how == "done":
                    break
                if how == "ended":
                    record.cuts.append(f"ended without [DONE] after frame {state.last_id}")
                if how == "dropped":
                    drops.pop(0)
                    record.drops += 1
                    await asyncio.sleep(rng.uniform(0.1, 0.5 * GRACE_S))
                resumed = await self._resume(record, state.last_id)
                if resumed is None:
                    break
                response = resumed
        finally:
            if stopping is not None:
                await asyncio.wait({stopping}, timeout=20)
            record.text = "".join(state.text)
            record.issues += state.issues
        if state.done:
            self._judge_seed(record, state)
        else:  # the client was told it failed (404, nobody answering): what it has must fit
            self._check_prefix(record)

    async def _resume(self, record: StreamRecord, after: int) -> httpx.Response | None:
        """GET /ai/stream/{id} after frame `after`, tried again while nobody answers it."""
        if record.resumes >= MAX_RESUMES:
            record.outcome = "resume_limit"
            return None
        deadline = time.monotonic() + RESUME_WINDOW_S
        delay = 0.2
        url = f"{self.cluster.url}/ai/stream/{record.stream_id}"
        while True:
            request = self.http.build_request("GET", url, headers={"last-event-id": str(after)})
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TransportError:
                pass
            else:
                if response.status_code == 200:
                    record.resumes += 1
                    record.served.append(self.cluster.label_of(response))
                    return response
                await response.aread()
                await response.aclose()
                if response.status_code == 404:
                    record.outcome = "unresumable"  # the client is told: the stream is gone
                    return None
                if response.status_code not in (502, 503, 504):
                    record.outcome = f"resume_refused:{response.status_code}"
                    return None
            if time.monotonic() > deadline:
                record.outcome = "resume_timeout"
                return None
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _stop(self, record: StreamRecord) -> None:
        url = f"{self.cluster.url}/ai/stream/{record.stream_id}/stop"
        stop: dict[str, Any] = {"at_s": round(self.now(), 2)}
        record.stop = stop
        try:
            response = await self.http.post(url, timeout=15)
        except httpx.TransportError as exc:
            stop["answer"] = type(exc).__name__
            return
        finally:
            stop["took_s"] = round(self.now() - stop["at_s"], 2)
        stop["status"] = response.status_code
        stop["served_by"] = self.cluster.label_of(response)
        stop["answer"] = f"http_{response.status_code}"
        with contextlib.suppress(ValueError, KeyError, TypeError):
            payload = response.json()
            stop["answer"] = payload.get("status") or payload["error"]["code"]

    def _judge_seed(self, record: StreamRecord, state: SeedState) -> None:
        """How a stream that reached `[DONE]` ended, and what is wrong with it."""
        spec, end = record.spec, state.end
        if end is None:
            record.outcome = "no_end"
            record.issues.append(("no_end_frame", f"[DONE] at frame {state.last_id}, no end"))
            return
        reason = record.end_reason = str(end.get("reason"))
        answer = (record.stop or {}).get("answer")
        if reason == "completed":
            record.outcome = "completed"
            if state.error is not None:
                record.issues.append(
                    ("wrong_text", f"an error frame, then completed: {state.error}")
                )
            self._check_complete(record)
            if answer == "stopped":
                record.issues.append(("stop_contradiction", "Stop answered stopped; it completed"))
            return
        if reason == "error":
            code = str((state.error or {}).get("code"))
            record.error_code = code
            record.outcome = f"error:{code}"
            if state.error is None or state.error_id != (state.end_id or 0) - 1:
                record.issues.append(("error_without_frame", f"end {end}, error {state.error}"))
            if code == "overloaded" and spec.fail_after is not None:
                self._check_prefix(record, exact=spec.text_before_failure)
            else:
                self._check_prefix(record)
            return
        self._check_prefix(record)
        if reason == "stopped":
            record.outcome = "stopped"
            if record.stop is None:
                record.issues.append(("unexpected_end", "ended `stopped`; no Stop was sent"))
            elif answer == "finished":
                record.issues.append(("stop_contradiction", "Stop answered finished; it stopped"))
            return
        if reason == "disconnected":  # resumed after the grace: explicit, if unwanted
            record.outcome = "disconnected"
            return
        record.outcome = f"end:{reason}"
        record.issues.append(("unexpected_end", f"end reason {reason!r}"))

    def _check_complete(self, record: StreamRecord) -> None:
        want, got = record.expected, record.text
        if got == want:
            return
        where = first_difference(got, want)
        kind = "truncated" if want.startswith(got) else "wrong_text"
        record.issues.append(
            (
                kind,
                f"{len(got)} of {len(want)} chars, differs at {where}: {clip(got[where:], 40)!r}",
            )
        )

    def _check_prefix(self, record: StreamRecord, exact: str | None = None) -> None:
        want, got = record.expected, record.text
        if exact is not None and got != exact:
            where = first_difference(got, exact)
            record.issues.append(
                (
                    "wrong_text",
                    f"{len(got)} chars where {len(exact)} precede the error, differs at {where}",
                )
            )
        elif not want.startswith(got):
            where = first_difference(got, want)
            record.issues.append(("wrong_text", f"not a prefix of its reply: differs at {where}"))

    async def _v1(self, record: StreamRecord) -> None:
        """A /v1/chat/completions stream (not resumable: a cut is the client's to see)."""
        spec = record.spec
        body: dict[str, Any] = {
            "messages": [{"role": "user", "content": spec.prompt()}],
            "stream": True,
        }
        if record.conversation is not None:
            body["metadata"] = {"conversation_id": record.conversation}
        response = await self._post(record, "/v1/chat/completions", body)
        record.stream_id = response.headers.get("x-stream-id")
        record.served.append(self.cluster.label_of(response))
        text: list[str] = []
        finish: str | None = None
        error: dict[str, Any] | None = None
        done = False
        try:
            async for frame in sse_frames(response):
                if frame.done:
                    done = True
                    break
                payload = frame.payload()
                if not isinstance(payload, dict):
                    continue
                if "error" in payload:
                    error = payload["error"] if isinstance(payload["error"], dict) else {}
                    continue
                for choice in payload.get("choices") or []:
                    text.append((choice.get("delta") or {}).get("content") or "")
                    finish = choice.get("finish_reason") or finish
        except httpx.TransportError as exc:
            record.cuts.append(f"{type(exc).__name__} after {len(text)} chunks")
            record.outcome = "cut"
        finally:
            await response.aclose()
            record.text = "".join(text)
        if record.outcome == "cut":
            self._check_prefix(record)
            return
        if not done:
            record.outcome = "no_done"
            record.issues.append(
                ("v1_silent_end", f"the body ended after {len(text)} chunks, no [DONE]")
            )
            self._check_prefix(record)
            return
        if error is not None:
            record.error_code = str(error.get("code") or error.get("type"))
            record.outcome = f"error:{record.error_code}"
            if record.error_code == "overloaded" and spec.fail_after is not None:
                self._check_prefix(record, exact=spec.text_before_failure)
            else:
                self._check_prefix(record)
            return
        if finish is None:
            record.outcome = "no_finish"
            record.issues.append(("v1_silent_end", "[DONE] without a finish_reason or an error"))
            return
        record.end_reason = "completed"
        record.outcome = "completed"
        if finish != "stop":
            record.issues.append(("unexpected_end", f"finish_reason {finish!r}"))
        self._check_complete(record)


# -- the faults -------------------------------------------------------------------------------
class Chaos:
    """Kills and restarts instances and Redis at random moments (seeded)."""

    def __init__(
        self, cluster: Cluster, kinds: list[str], every_s: float, seed: int, t0: float
    ) -> None:
        self.cluster = cluster
        self.kinds = kinds
        self.every_s = every_s
        self.rng = random.Random(f"{seed}:faults")
        self.t0 = t0
        self.faults: list[Fault] = []
        self.recoveries: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, deadline: float) -> None:
        weights = [FAULTS[k] for k in self.kinds]
        while True:
            gap = self.rng.uniform(0.5, 1.5) * self.every_s
            if self.now() + gap > deadline - 5:
                break
            await asyncio.sleep(gap)
            kind = self.rng.choices(self.kinds, weights=weights)[0]
            if kind in ("kill", "term"):
                up = [i for i in self.cluster.instances if i.up]
                if len(up) < 2:
                    continue  # never both at once: half the traffic should find someone
                self._spawn(self._restart(self.rng.choice(up), kind))
            elif self.cluster.redis_up:
                self._spawn(self._restart_redis(self.rng.uniform(0.5, 4.0)))
        await self.settle()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.recoveries.add(task)
        task.add_done_callback(self.recoveries.discard)

    async def settle(self) -> None:
        """Wait for every restart under way; then everything is up again."""
        while self.recoveries:
            await asyncio.wait(set(self.recoveries))

    async def _restart(self, instance: Instance, kind: str) -> None:
        assert instance.process is not None
        fault = Fault(kind, instance.label, self.now())
        self.faults.append(fault)
        instance.up = False
        process = instance.process
        if kind == "kill":
            process.send(signal.SIGKILL)
            await process.wait(10)
            pause = self.rng.uniform(1.0, 5.0)
        else:
            process.send(signal.SIGTERM)
            code = await process.wait(SHUTDOWN_GRACE_S + 15)
            fault.note = f"exit {code}"
            if code is None:
                await process.stop(1)
                fault.note = "did not exit after SIGTERM: killed"
            pause = self.rng.uniform(0.5, 2.0)
        log(f"fault: {kind} {instance.label}; back in {pause:.1f} s")
        await asyncio.sleep(pause)
        try:
            await self.cluster.start_instance(instance)
        except RuntimeError as exc:
            self.errors.append(str(exc))
            log(f"could not restart {instance.name}: {clip(str(exc), 300)}")
            return
        fault.down_s = round(self.now() - fault.at, 2)

    async def _restart_redis(self, down: float) -> None:
        fault = Fault("redis", "redis", self.now())
        self.faults.append(fault)
        await self.cluster.stop_redis()
        log(f"fault: redis killed; back in {down:.1f} s, empty")
        await asyncio.sleep(down)
        try:
            await self.cluster.start_redis()
        except (AssertionError, OSError) as exc:
            self.errors.append(f"redis did not restart: {exc}")
            return
        fault.down_s = round(self.now() - fault.at, 2)


# -- the checks -------------------------------------------------------------------------------
@dataclass
class Problem:
    kind: str
    detail: str
    turn: str | None = None
    conversation: str | None = None
    stream: dict[str, Any] | None = None
    faults: list[str] = field(default_factory=list)
    evidence: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, [])}


class Checker:
    def __init__(self, traffic: Traffic, faults: list[Fault]) -> None:
        self.traffic = traffic
        self.faults = faults
        self.problems: list[Problem] = []
        self.by_turn: dict[str, list[StreamRecord]] = {}
        for record in traffic.records:
            self.by_turn.setdefault(record.spec.turn, []).append(record)
        self.locks: dict[str, Any] = {}
        self.stored = Counter[str]()
        self.end_reasons = Counter[str]()  # of the stored replies
        # Replies still `generating` once every stream had ended (a crashed instance's last
        # checkpoints): their conversation's next message must mark them (`interrupted`).
        self.generating: dict[str, str] = {}  # stream id -> conversation

    def faults_during(self, start: float, end: float) -> list[str]:
        """The faults around a stream: from a few seconds before it (recoveries take that
        long: leases, reconnections) to just after it."""
        return [f.describe() for f in self.faults if f.at <= end + 1 and f.until >= start - 5]

    def add(self, kind: str, detail: str, record: StreamRecord | None = None, **where: Any) -> None:
        problem = Problem(kind, detail, **where)
        if record is not None:
            problem.turn = record.spec.turn
            problem.conversation = record.conversation
            problem.stream = record.summary()
            problem.faults = self.faults_during(record.started, record.ended)
        self.problems.append(problem)

    def streams(self) -> None:
        for record in self.traffic.records:
            for kind, detail in record.issues:
                self.add(kind, detail, record)

    def turn_story(self, turn: str) -> str:
        records = self.by_turn.get(turn, [])
        told = [
            f"#{r.n} {r.kind} {r.outcome} ({r.started:.1f}-{r.ended:.1f} s, {'/'.join(r.served)})"
            for r in records
        ]
        return "; ".join(told) or "no stream of ours"

    async def conversations(self) -> None:
        for conversation in self.traffic.conversations.values():
            try:
                await self.conversation(conversation)
            except (RuntimeError, httpx.HTTPError, ValueError, KeyError) as exc:
                self.traffic.errors.append(f"reading conversation {conversation.id}: {exc!r}")

    async def _get(self, path: str) -> httpx.Response:
        for attempt in range(10):
            try:
                response = await self.traffic.http.get(
                    f"{self.traffic.cluster.url}{path}", timeout=15
                )
            except httpx.TransportError:
                pass
            else:
                if response.status_code < 500:
                    return response
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"GET {path}: no answer")

    async def conversation(self, conversation: Conversation) -> None:
        accepted = [r for r in conversation.records if r.stream_id is not None]
        response = await self._get(f"/conversations/{conversation.id}")
        if response.status_code == 404:
            if accepted:
                self.add("conversation_missing", "404", accepted[0])
            return
        response.raise_for_status()
        messages: list[dict[str, Any]] = response.json()["messages"]
        self.stored["conversations"] += 1
        self.stored["messages"] += len(messages)
        by_stream = {m.get("stream_id"): m for m in messages if m["role"] == "assistant"}
        for record in accepted:
            if (stored_reply := by_stream.get(record.stream_id)) is not None:
                content = str(stored_reply.get("content"))
                record.stored = f"{stored_reply.get('end_reason')}, {len(content)} chars"
            want_reason = self.stored_end(record)
            if want_reason is None:
                continue
            stored = by_stream.get(record.stream_id)
            saw = record.outcome
            if stored is None:
                kind = "lost_reply" if saw == "completed" else "ended_reply_missing"
                self.add(
                    kind, f"client saw {saw}; nothing stored for stream {record.stream_id}", record
                )
                continue
            if stored.get("end_reason") != want_reason or stored.get("content") != record.text:
                self.add(
                    "reply_differs",
                    f"client saw {saw} with {len(record.text)} chars; stored"
                    f" {stored.get('end_reason')} with {len(str(stored.get('content')))} chars",
                    record,
                )
        for message in messages:
            if message["role"] == "assistant":
                self.end_reasons[str(message.get("end_reason"))] += 1
        if messages and messages[-1].get("end_reason") == "generating":
            self.generating[str(messages[-1].get("stream_id"))] = conversation.id
        self._sequence(conversation, messages)

    @staticmethod
    def stored_end(record: StreamRecord) -> str | None:
        """The end reason the store must give a stream the client saw end, or None where the
        client cannot know how the reply itself ended."""
        saw = record.outcome
        if saw in ("completed", "stopped", "disconnected"):
            return saw
        if not saw.startswith("error:"):
            return None  # refused, cut, resume refused: the client saw no end
        if record.error_code in ("instance_lost", "stream_incomplete"):
            return None  # said by a reader elsewhere: the reply itself may have gone on
        if record.error_code == "server_restarting":
            return "server_restarting"
        return "error"

    def _sequence(self, conversation: Conversation, messages: list[dict[str, Any]]) -> None:
        """The stored order: a reply after every user message (one that failed or was
        interrupted counts; none does not), not two completed ones, none left `generating`
        once the conversation went on, and a completed one with its prompt's text."""
        prompt: ReplySpec | None = None  # of the last user message
        for previous, message in itertools.pairwise([*messages, None]):
            assert previous is not None
            if previous["role"] == "user":
                prompt = ReplySpec.parse(str(previous["content"]))
                if message is None or message["role"] == "user":
                    turn = prompt.turn if prompt else None
                    after = "at the end" if message is None else "before the next user message"
                    self.add(
                        "missing_reply",
                        f"no reply {after}; its streams: {self.turn_story(turn or '')}",
                        turn=turn,
                        conversation=conversation.id,
                        faults=self._turn_faults(turn),
                    )
                continue
            stream, reason = previous.get("stream_id"), previous.get("end_reason")
            if reason == "generating" and message is not None:
                self.add(
                    "stale_generating",
                    f"stream {stream} still `generating`, then another message",
                    conversation=conversation.id,
                )
            if reason == "completed" and message is not None and message["role"] == "assistant":
                self.add(
                    "double_reply",
                    f"stream {message.get('stream_id')} right after completed {stream}",
                    conversation=conversation.id,
                )
            if reason == "completed" and prompt is not None and previous["content"] != prompt.text:
                got = str(previous["content"])
                self.add(
                    "stored_text_wrong",
                    f"stream {stream}: {len(got)} of {len(prompt.text)} chars,"
                    f" differs at {first_difference(got, prompt.text)}",
                    turn=prompt.turn,
                    conversation=conversation.id,
                    faults=self._turn_faults(prompt.turn),
                )

    def _turn_faults(self, turn: str | None) -> list[str]:
        records = self.by_turn.get(turn or "", [])
        if not records:
            return []
        return self.faults_during(min(r.started for r in records), max(r.ended for r in records))

    async def locks_released(self, rng: random.Random, since: float) -> None:
        """A new message to each conversation is accepted (and completes) within the lock
        timeout plus a margin after the traffic ended (`since`, time.monotonic())."""
        bound = LOCK_S + TAKEOVER_MARGIN_S
        accepted: list[str] = []
        busy: dict[str, float | None] = {}  # 409 at first: accepted this long after `since`
        limit = asyncio.Semaphore(8)

        async def probe(conversation: Conversation) -> None:
            spec = ReplySpec(f"{conversation.id}.probe", 4, 10)
            async with limit:
                deadline = max(since + bound, time.monotonic() + 5)
                while True:
                    record = await self.traffic.run("probe", spec, conversation.id, rng)
                    if "busy" in record.outcome:
                        busy.setdefault(conversation.id, None)
                    if not record.outcome.startswith(("refused", "unanswered")):
                        break
                    if time.monotonic() > deadline:
                        waited = time.monotonic() - since
                        if "busy" in record.outcome:
                            self.add(
                                "stuck_lock",
                                f"still 409 {waited:.0f} s after the run; its turns:"
                                f" {self.story(conversation)}",
                                record,
                            )
                        else:
                            self.add("probe_failed", f"last answer {record.outcome}", record)
                        return
                    await asyncio.sleep(1.0)
            accepted.append(conversation.id)
            if conversation.id in busy:
                busy[conversation.id] = round(time.monotonic() - since, 1)
            if record.outcome != "completed" or record.issues:
                self.add("probe_failed", f"ended {record.outcome} {record.issues}", record)
            conversation.records.append(record)

        # Only conversations that ever took a message can hold a lock.
        probed = [c for c in self.traffic.conversations.values() if c.records_accepted()]
        await asyncio.gather(*(probe(c) for c in probed))
        waited = {c: w for c, w in busy.items() if w is not None}
        self.locks = {
            "probed": len(probed),
            "accepted": len(accepted),
            "stuck": len(busy) - len(waited),
            "bound_s": bound,
            "busy_at_first": len(busy),
            "longest_wait_s": max(waited.values(), default=0.0),
            "slowest": [
                {
                    "conversation": c,
                    "accepted_after_s": w,
                    "turns": self.story(self.traffic.conversations[c]),
                }
                for c, w in sorted(waited.items(), key=lambda item: -item[1])[:5]
            ],
        }

    def story(self, conversation: Conversation, last: int = 4) -> str:
        """A conversation's last turns before the final check, as its client saw them."""
        records = [r for r in conversation.records if r.kind != "probe"][-last:]
        return "; ".join(
            f"#{r.n} {r.kind} {r.outcome} {r.started:.1f}-{r.ended:.1f} s"
            f" {'/'.join(r.served) or '-'} {r.stream_id or ''}".rstrip()
            for r in records
        )

    async def explain_stuck(self, cluster: Cluster) -> None:
        """For each stuck lock: its row as the database holds it, and what the servers logged
        of the stream holding it (read straight from the private PostgreSQL and the logs)."""
        stuck = [p for p in self.problems if p.kind == "stuck_lock"]
        if not stuck or cluster.postgres is None:
            return
        import asyncpg  # chatrelay's own PostgreSQL driver

        url = cluster.postgres.url.replace("postgresql+asyncpg://", "postgresql://")
        try:
            connection = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as exc:
            self.traffic.errors.append(f"reading the stuck locks: {exc!r}")
            return
        try:
            for problem in stuck:
                # Stored in its owner's namespace (`{namespace}.{id}`), or bare from before.
                row = await connection.fetchrow(
                    "SELECT * FROM conversations WHERE id = $1 OR id LIKE '%.' || $1 LIMIT 1",
                    problem.conversation,
                )
                lock = {
                    k: str(v) for k, v in dict(row or {}).items() if k.startswith(("lock", "upd"))
                }
                holder = lock.get("locked_by", "")
                lines = [
                    line
                    for path in cluster.logs()
                    for line in path.read_text(errors="replace").splitlines()
                    if holder and holder in line
                ]
                problem.detail += f"; lock row {lock}; server lines of {holder}: {len(lines)}"
                problem.evidence = {"lock": lock, "log_lines": [clip(x, 400) for x in lines[:6]]}
        finally:
            await connection.close()

    async def generating_marked(self) -> None:
        """Once its conversation took a new message, no reply of a dead stream says it is
        still being generated."""
        for stream, conversation in self.generating.items():
            response = await self._get(f"/conversations/{conversation}")
            for message in response.json().get("messages", []):
                if message.get("stream_id") == stream and message.get("end_reason") == "generating":
                    self.add(
                        "stale_generating",
                        f"stream {stream} still `generating` after the conversation's next"
                        " message was answered",
                        conversation=conversation,
                        faults=self._turn_faults(self._turn_of(stream)),
                    )

    def _turn_of(self, stream: str) -> str | None:
        for record in self.traffic.records:
            if record.stream_id == stream:
                return record.spec.turn
        return None


# -- the report -------------------------------------------------------------------------------
def server_logs(paths: list[Path]) -> dict[str, Any]:
    """Counts of the instances' warning and error lines, grouped by message (ids masked)."""
    levels = Counter[str]()
    messages = Counter[str]()
    tracebacks = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                tracebacks += line.startswith("Traceback")
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            level = str(entry.get("level"))
            levels[level] += 1
            tracebacks += "exception" in entry
            if level in ("warning", "error", "critical"):
                text = re.sub(
                    r"\b[0-9a-f]{32}\b|\b[0-9a-f-]{36}\b", "<id>", str(entry.get("message"))
                )
                text = re.sub(r"\d+(\.\d+)?", "N", text)
                messages[f"{level}: {clip(text, 160)}"] += 1
    return {
        "lines_by_level": dict(levels),
        "tracebacks": tracebacks,
        "warnings_and_errors": dict(messages.most_common(15)),
    }


def report(
    args: argparse.Namespace,
    traffic: Traffic,
    chaos: Chaos,
    checker: Checker,
    cluster: Cluster,
    traffic_s: float,
) -> dict[str, Any]:
    records = [r for r in traffic.records if r.kind != "probe"]
    by_outcome = Counter(r.outcome for r in records)
    by_kind: dict[str, Counter[str]] = {}
    for record in records:
        by_kind.setdefault(record.kind, Counter())[record.outcome] += 1
    problems = Counter(p.kind for p in checker.problems)
    examples: dict[str, list[dict[str, Any]]] = {}
    for problem in checker.problems:
        examples.setdefault(problem.kind, [])
        if len(examples[problem.kind]) < 8:
            examples[problem.kind].append(problem.view())
    resumes = [r for r in records if r.resumes]
    # Streams that failed where the client could see it (not problems): how, with examples.
    seen_failing: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.outcome in ("completed", "stopped", "error:overloaded") or record.issues:
            continue
        if record.outcome.startswith(("refused", "unanswered")):
            continue
        examples_of = seen_failing.setdefault(record.outcome, [])
        if len(examples_of) < 5:
            view = record.summary()
            view["faults"] = checker.faults_during(record.started, record.ended)
            examples_of.append(view)
    elsewhere = sum(
        1 for r in records for s in r.served[1:] if s[:1] != (r.served[0][:1] if r.served else "")
    )
    return {
        "run": {
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/chaos.py " + " ".join(sys.argv[1:]),
            "commit": git_commit(),
            "minutes": args.minutes,
            "seed": args.seed,
            "clients": args.clients,
            "traffic_s": round(traffic_s, 1),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "settings": {
                "CHATRELAY_CONVERSATION_LOCK_S": LOCK_S,
                "CHATRELAY_RESUME_GRACE_S": GRACE_S,
                "CHATRELAY_HEARTBEAT_S": HEARTBEAT_S,
                "CHATRELAY_SHUTDOWN_GRACE_S": SHUTDOWN_GRACE_S,
            },
        },
        "verdict": "ok" if not checker.problems else "lost or inconsistent",
        "streams": {
            "total": len(records),
            "by_outcome": dict(by_outcome.most_common()),
            "by_kind": {k: dict(v.most_common()) for k, v in sorted(by_kind.items())},
            "completed_exact": sum(1 for r in records if r.outcome == "completed" and not r.issues),
            "resumed": len(resumes),
            "resumes": sum(r.resumes for r in records),
            "resumes_on_another_instance": elsewhere,
            "cut_by_faults": sum(1 for r in records if r.cuts),
            "stops_sent": sum(1 for r in records if r.stop is not None),
            "stop_answers": dict(
                Counter(str((r.stop or {}).get("answer")) for r in records if r.stop)
            ),
            "failed_visibly_examples": seen_failing,
        },
        "conversations": {
            "total": len(traffic.conversations),
            "stored": checker.stored["conversations"],
            "messages_stored": checker.stored["messages"],
            "replies_by_end_reason": dict(checker.end_reasons.most_common()),
            "generating_after_the_run": len(checker.generating),
        },
        "faults": {
            "total": len(chaos.faults),
            "by_kind": dict(Counter(f.kind for f in chaos.faults)),
            "list": [dataclasses.asdict(f) for f in chaos.faults],
            "instance_starts_failed": cluster.failed_starts,
            "harness_errors": chaos.errors + traffic.errors,
        },
        "locks": checker.locks,
        "problems": {
            "total": len(checker.problems),
            "by_kind": dict(problems.most_common()),
            "meaning": {k: PROBLEMS[k] for k in problems},
            "examples": examples,
        },
        "server_logs": server_logs(cluster.logs()),
    }


def lock_sentence(locks: dict[str, Any]) -> str:
    sentence = (
        f"{locks.get('accepted', 0)} of {locks.get('probed', 0)} conversations took a new message"
        f" within {locks.get('bound_s', 0):.0f} s of the traffic's end, {locks.get('stuck', 0)}"
        f" stuck; {locks.get('busy_at_first', 0)} still busy at their first try"
    )
    if locks.get("longest_wait_s"):
        sentence += f" (the last accepted {locks['longest_wait_s']} s after the traffic)"
    return sentence


def summary(results: dict[str, Any]) -> str:
    streams, faults, problems = results["streams"], results["faults"], results["problems"]
    conversations, locks = results["conversations"], results["locks"]
    lines = [
        f"requests: {streams['total']}; completed with exactly their text:"
        f" {streams['completed_exact']}",
        "  by outcome: " + ", ".join(f"{k} {v}" for k, v in streams["by_outcome"].items()),
        f"  resumed: {streams['resumed']} streams ({streams['resumes']} resumes,"
        f" {streams['resumes_on_another_instance']} on the other instance);"
        f" cut by faults: {streams['cut_by_faults']}; Stop answers: {streams['stop_answers']}",
        "faults: " + ", ".join(f"{k} {v}" for k, v in faults["by_kind"].items()),
        f"  instance starts that failed (retried): {len(faults['instance_starts_failed'])}"
        + "".join(f"\n    - {clip(line, 160)}" for line in faults["instance_starts_failed"][:3]),
        f"conversations: {conversations['total']}, {conversations['messages_stored']} messages;"
        f" stored replies by end: {conversations['replies_by_end_reason']}",
        f"locks: {lock_sentence(locks)}",
    ]
    lines += [
        f"  busy at first: {slow['conversation']} accepted {slow['accepted_after_s']} s after"
        f" the traffic; its last turns: {slow['turns']}"
        for slow in locks.get("slowest", [])[:3]
    ]
    for outcome, examples in streams["failed_visibly_examples"].items():
        example = examples[0]
        lines.append(
            f"  visible failure {outcome}: e.g. {example['turn']} ({example['kind']},"
            f" {'/'.join(example['served_by'])}), stored: {example['stored']};"
            f" around: {'; '.join(example['faults'][:2]) or 'no fault'}"
        )
    lines.append(
        f"problems: {problems['total']}"
        + "".join(f", {k} {v}" for k, v in problems["by_kind"].items())
    )
    for kind, examples in problems["examples"].items():
        lines.append(f"  {kind}: {PROBLEMS[kind]}")
        for example in examples[:3]:
            where = example.get("turn") or example.get("conversation")
            lines.append(f"    - {where}: {clip(example['detail'], 400)}")
            for line in (example.get("evidence") or {}).get("log_lines", [])[:3]:
                lines.append(f"      server: {clip(line, 300)}")
            if example.get("faults"):
                lines.append(f"      faults around it: {'; '.join(example['faults'][:3])}")
    for error in faults["harness_errors"][:5]:
        lines.append(f"harness error: {clip(error, 300)}")
    lines.append(f"verdict: {results['verdict']}")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    run, streams, faults = results["run"], results["streams"], results["faults"]
    problems, locks = results["problems"], results["locks"]
    kinds = list(streams["by_kind"])
    refused = sum(
        n for k, n in streams["by_outcome"].items() if k.startswith(("refused", "unanswered"))
    )
    verdict = (
        "✅ nothing lost or inconsistent"
        if not problems["total"]
        else f"❌ {problems['total']} problems (lost or inconsistent)"
    )
    lines = [
        MARK_START,
        "",
        f"**Run:** {run['at']} · `{run['command']}` · commit {run['commit']} ·"
        f" {run['traffic_s']:.0f} s of traffic, {run['clients']} clients, seed {run['seed']}",
        "",
        f"**Verdict:** {verdict}."
        f" Requests: {streams['total']} ({refused} refused or unanswered),"
        f" {streams['completed_exact']} streams completed with exactly their"
        f" text; {streams['resumed']} resumed ({streams['resumes_on_another_instance']} resumes on"
        f" the other instance), {streams['cut_by_faults']} cut by a fault, {streams['stops_sent']}"
        f" stopped on purpose. Faults: {faults['total']} ("
        + ", ".join(f"{k} {v}" for k, v in faults["by_kind"].items())
        + f"). Conversations: {results['conversations']['total']}; {lock_sentence(locks)}.",
        "",
        "| outcome | " + " | ".join(kinds) + " | all |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for outcome, total in streams["by_outcome"].items():
        cells = [str(streams["by_kind"][k].get(outcome, "")) for k in kinds]
        lines.append(f"| {outcome} | " + " | ".join(cells) + f" | {total} |")
    if problems["total"]:
        lines += ["", "| problem | count | meaning | example |", "|---|---:|---|---|"]
        for kind, count in problems["by_kind"].items():
            example = problems["examples"][kind][0]
            where = example.get("turn") or example.get("conversation") or ""
            text = f"`{where}`: {clip(example['detail'], 160)}"
            if example.get("faults"):
                text += f" (around: {example['faults'][0]})"
            lines.append(f"| {kind} | {count} | {PROBLEMS[kind]} | {text.replace('|', '/')} |")
    logs, stored = results["server_logs"], results["conversations"]["replies_by_end_reason"]
    failed_starts = faults["instance_starts_failed"]
    lines += [
        "",
        "Stored replies by end reason: " + ", ".join(f"{k} {v}" for k, v in stored.items()) + ".",
        f"Instance starts that failed and were tried again: {len(failed_starts)}"
        + (f" (e.g. {clip(failed_starts[0], 140)})" if failed_starts else "")
        + f". Server logs: {logs['lines_by_level'].get('error', 0)} error and"
        f" {logs['lines_by_level'].get('warning', 0)} warning lines. Every figure, fault and"
        " example: `bench/results/chaos.json`.",
        "",
        MARK_END,
    ]
    return "\n".join(lines)


def write_doc(results: dict[str, Any]) -> None:
    block = markdown(results)
    text = DOC.read_text()
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start >= 0 and end > start:
        DOC.write_text(text[:start] + block + text[end + len(MARK_END) :])
    else:
        DOC.write_text(text.rstrip() + "\n\n## Chaos run\n\n" + block + "\n")


# -- main -------------------------------------------------------------------------------------
async def chaos_run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="chatrelay-chaos-"))
    cluster = Cluster(workdir)
    traffic: Traffic | None = None
    keep = args.keep_workdir
    try:
        try:
            await cluster.start()
        except (RuntimeError, AssertionError, subprocess.CalledProcessError, OSError) as exc:
            log(f"the cluster did not start: {clip(str(exc), 3000)}")
            keep = True
            return 2
        t0 = time.monotonic()
        deadline = args.minutes * 60
        traffic = Traffic(cluster, args.clients, args.seed, t0)
        chaos = Chaos(cluster, args.faults, args.fault_every, args.seed, t0)
        log(
            f"traffic for {deadline:.0f} s: {args.clients} clients;"
            f" faults {','.join(args.faults)} every ~{args.fault_every:.0f} s"
        )
        progress = asyncio.create_task(_progress(traffic, chaos, deadline))
        clients = [asyncio.create_task(traffic.client(n, deadline)) for n in range(args.clients)]
        await chaos.run(deadline)
        done, late = await asyncio.wait(clients, timeout=STREAM_LIMIT_S + 30)
        for task in late:
            task.cancel()
        progress.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        ended = time.monotonic()
        traffic_s = ended - t0
        log(
            f"traffic over after {traffic_s:.0f} s, {len(traffic.records)} streams; waiting"
            f" {GRACE_S + 5:.0f} s for abandoned replies to end"
        )
        await asyncio.sleep(GRACE_S + 5)
        checker = Checker(traffic, chaos.faults)
        log("checking the streams and the stored conversations")
        await checker.conversations()  # first: it notes each stream's stored reply
        checker.streams()
        log(
            "checking that every conversation takes a new message within"
            f" {LOCK_S + TAKEOVER_MARGIN_S:.0f} s"
        )
        await checker.locks_released(random.Random(f"{args.seed}:probes"), ended)
        await checker.generating_marked()
        await checker.explain_stuck(cluster)
        results = report(args, traffic, chaos, checker, cluster, traffic_s)
        harness_errors = chaos.errors + traffic.errors
        if harness_errors and not checker.problems:
            results["verdict"] = "harness error"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        print(summary(results), flush=True)
        log(f"JSON written to {args.out}")
        if args.doc:
            write_doc(results)
            log(f"section written to {DOC.relative_to(ROOT)}")
        if checker.problems:
            keep = True
            return 1
        return 2 if harness_errors else 0
    finally:
        if traffic is not None:
            await traffic.aclose()
        await cluster.close()
        if keep:
            log(f"work dir (server logs) kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _progress(traffic: Traffic, chaos: Chaos, deadline: float) -> None:
    while True:
        await asyncio.sleep(15)
        outcomes = Counter(r.outcome.split(":")[0] for r in traffic.records if r.outcome)
        issues = sum(len(r.issues) for r in traffic.records)
        log(
            f"{traffic.now():.0f}/{deadline:.0f} s: {len(traffic.records)} streams"
            f" {dict(outcomes)}, {len(chaos.faults)} faults, {issues} stream problems so far"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="of traffic (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="the clients' and faults' choices")
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients (default 12)")
    parser.add_argument(
        "--faults", default=DEFAULT_FAULTS, help=f"of {','.join(FAULTS)} (default {DEFAULT_FAULTS})"
    )
    parser.add_argument(
        "--fault-every", type=float, default=8.0, help="mean seconds between faults"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="the JSON (bench/results/chaos.json)"
    )
    parser.add_argument(
        "--doc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the section of docs/BENCHMARKS.md (default: yes)",
    )
    parser.add_argument(
        "--render", type=Path, help="only rewrite the docs section from a results JSON"
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the servers' logs (kept anyway when something is wrong)",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        write_doc(json.loads(args.render.read_text()))
        log(f"section of {DOC.relative_to(ROOT)} rewritten from {args.render}")
        return 0
    args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = [k for k in args.faults if k not in FAULTS]
    if unknown or not args.faults:
        parser.error(f"--faults: choose among {', '.join(FAULTS)}")
    missing = [
        name
        for name in ("nginx", "redis-server", "redis-cli")
        if not shutil.which(name) and not os.path.exists(f"/usr/sbin/{name}")
    ]
    if missing:
        log(f"missing: {', '.join(missing)} (apt-get install nginx-light redis-server postgresql)")
        return 2
    return asyncio.run(chaos_run(args))


if __name__ == "__main__":
    sys.exit(main())
