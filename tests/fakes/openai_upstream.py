"""Loopback fake of the OpenAI Chat Completions API (``POST .../chat/completions``).

Same mechanics as :mod:`tests.fakes.anthropic_upstream`, whose connection machinery it
reuses by subclassing: a raw :class:`asyncio.Protocol` per connection (a client that goes
away is noticed at once, even while stalled), HTTP/1.1 keep-alive, Content-Length request
bodies, chunked responses, pre-encoded frames (one ``transport.write`` per frame, JSON of
the delta texts cached per delta list), timing with ``call_soon``/``call_later`` and write
flow control honoured. Only the wire format differs.

Wire format (``/work/shared/reference/wire-formats.md`` §3): any path ending in
``/chat/completions`` (the SDK posts to ``{base_url}/chat/completions`` and ``base_url`` ends
in ``/v1``), key in ``authorization: Bearer``. ``"stream": true`` gets ``200`` +
``text/event-stream`` + ``x-request-id: req_fake_<n>`` + chunked body of data-only frames
(no ``event:`` lines) of ``chat.completion.chunk`` objects:

1. delta ``{"role":"assistant","content":""}`` (style openai adds ``"refusal":null``, as OpenAI),
2. reasoning deltas, if any (``reasoning_content`` for style openai, ``reasoning`` otherwise),
3. one chunk per content delta ``{"content": "..."}``,
4. ``delta: {}`` with ``finish_reason``,
5. only if the request had ``stream_options.include_usage: true``: ``choices: []`` + ``usage``,
6. ``data: [DONE]``, then the zero-length chunk.

Every chunk has ``id``, ``object``, ``created``, ``model`` (the request's), ``system_fingerprint``
and ``choices[{index, delta, logprobs: null, finish_reason}]`` and ``usage: null``. Styles:

* ``"ollama"``: every delta (also the first and the finish one) repeats ``"role":"assistant"``,
  ``system_fingerprint: "fp_ollama"``, id ``chatcmpl-<n>``;
* ``"vllm"``: unset fields are absent (no ``usage`` key except in the usage chunk, no
  ``logprobs``, no ``system_fingerprint``), id ``chatcmpl-<32 hex>``.

Non-streaming requests get one ``chat.completion`` JSON object. Error statuses get OpenAI's
``{"error":{"message","type","param":null,"code"}}`` with Content-Length and ``x-request-id``.

``RecordedRequest.outcome`` here is one of "complete" | "error_frame" | "truncated" |
"no_done" | "no_finish" | "dropped" | "http_error" | "not_found" | "bad_request" |
"client_gone" | "server_closed". ``deltas_sent`` counts reasoning and content deltas together,
and so do all ``*_after`` counts (reasoning deltas come first).

Usage::

    async with FakeOpenAI() as fake:
        fake.enqueue(OpenAIScenario(deltas=["a", "b"], style="ollama"))
        client = openai.AsyncOpenAI(api_key="k", base_url=fake.base_url)  # ends in /v1

Standalone (for benchmarks)::

    python -m tests.fakes.openai_upstream --port 9200 --deltas 100 --interval 0.04
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from tests.fakes.anthropic_upstream import (
    _TERMINATOR,
    FakeAnthropic,
    RecordedRequest,
    ToolUse,
    _chunk,
    _Conn,
    _dumps,
    _head,
    _raise_nofile_limit,
    make_deltas,
    serve_until_signalled,
)

__all__ = [
    "FakeOpenAI",
    "OpenAIScenario",
    "RecordedRequest",
    "main",
    "openai_error_for_status",
]

STYLES = ("openai", "ollama", "vllm")


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass
class OpenAIScenario:
    """How the fake answers one request. All ``*_after`` counts are numbers of deltas sent."""

    deltas: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    interval: float = 0.0  # seconds between delta chunks (0: next loop turn)
    first_token_delay: float = 0.0  # after the role chunk, before the first delta
    headers_delay: float = 0.0  # before the response status line is sent
    # != 200: OpenAI's JSON error body for that status, with Content-Length, no stream.
    status: int = 200
    error_message: str = "fake error"
    retry_after: str | None = None  # 'retry-after' header value on error responses
    retry_after_ms: str | None = None  # 'retry-after-ms' header value on error responses
    finish_reason: str = "stop"
    prompt_tokens: int = 10
    completion_tokens: int | None = None  # default: len(deltas)
    style: str = "openai"  # "openai" | "ollama" | "vllm" (see the module docstring)
    # False: omit the usage chunk even when stream_options.include_usage was asked.
    usage_when_asked: bool = True
    # After N deltas send vLLM's error frame (top-level "error", code 400) then data: [DONE].
    error_frame_after: int | None = None
    # After N deltas end the body cleanly: no finish_reason, no usage, no [DONE].
    truncate_after: int | None = None
    no_done: bool = False  # send finish_reason (and usage) but end the body without [DONE]
    done_without_finish: bool = False  # send (usage and) [DONE] but never a finish_reason
    drop_after: int | None = None  # abort the TCP connection after N deltas
    stall_after: int | None = None  # send nothing more after N deltas, until the client goes
    # Reasoning deltas sent before the content: delta.reasoning_content (style openai) or
    # delta.reasoning (ollama, vllm).
    reasoning: list[str] = field(default_factory=list)
    # Extra response headers (any status), e.g. {"x-should-retry": "false"}.
    extra_headers: dict[str, str] = field(default_factory=dict)
    # Tool calls after the content: a delta with the call's index, id and name, then one per
    # piece of its arguments (style ollama: every call whole in one delta, with no index).
    tool_calls: list[ToolUse] = field(default_factory=list)
    # usage.prompt_tokens_details.cached_tokens (left out when None).
    cached_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, not {self.style!r}")


# status -> (error.type, error.code)
_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", None),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("service_unavailable", None),
    504: ("server_error", None),
}


def openai_error_for_status(status: int) -> tuple[str, str | None]:
    """``(error.type, error.code)`` the fake sends for an HTTP error status."""
    if status in _ERRORS:
        return _ERRORS[status]
    return ("server_error", None) if status >= 500 else ("invalid_request_error", None)


# --------------------------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------------------------

_DONE = _chunk(b"data: [DONE]\n\n")
_ROLE = '"role":"assistant",'


def _data(obj: dict[str, Any]) -> bytes:
    """One data-only SSE frame wrapped in one HTTP chunk."""
    return _chunk(b"data: " + _dumps(obj).encode() + b"\n\n")


def _delta_json(kind: str, deltas: tuple[str, ...]) -> tuple[bytes, ...]:
    """`{"<field>": "<text>"}` per delta; kind is the field name, '+role' adds the role."""
    name, _, role = kind.partition("+")
    pre = "{" + (_ROLE if role else "") + _dumps(name) + ":"
    return tuple((pre + _dumps(t) + "}").encode() for t in deltas)


class _Encoder:
    """Per-response chunk encoder: the id/created/model prefix is encoded once."""

    def __init__(self, style: str, chunk_id: str, model: str) -> None:
        self.style = style
        self.vllm = style == "vllm"
        self.envelope: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        if not self.vllm:
            self.envelope["system_fingerprint"] = "fp_ollama" if style == "ollama" else "fp_fake"
        self.prefix = b"data: " + _dumps(self.envelope)[:-1].encode() + b',"choices":[{"index":0'
        self.prefix += b',"delta":'
        tail = b"}]}\n\n" if self.vllm else b'}],"usage":null}\n\n'
        logprobs = b"" if self.vllm else b',"logprobs":null'
        self.open_suffix = logprobs + b',"finish_reason":null' + tail
        self._logprobs, self._tail = logprobs, tail

    def frame(self, delta_json: bytes) -> bytes:
        return _chunk(self.prefix + delta_json + self.open_suffix)

    def role_frame(self) -> bytes:
        if self.style == "openai":
            return self.frame(b'{"role":"assistant","content":"","refusal":null}')
        return self.frame(b'{"role":"assistant","content":""}')

    def finish_frame(self, reason: str) -> bytes:
        delta = b'{"role":"assistant","content":""}' if self.style == "ollama" else b"{}"
        fin = b',"finish_reason":' + _dumps(reason).encode()
        return _chunk(self.prefix + delta + self._logprobs + fin + self._tail)

    def usage_frame(self, prompt: int, completion: int, cached: int | None = None) -> bytes:
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return _data({**self.envelope, "choices": [], "usage": usage})


def _tool_call_deltas(calls: list[ToolUse], style: str) -> tuple[bytes, ...]:
    """The `delta` objects of tool calls, in the order they are sent."""
    deltas: list[dict[str, Any]] = []
    if style == "ollama" and calls:  # every call whole, in one delta, with no index
        whole = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(call.pieces)},
            }
            for call in calls
        ]
        deltas.append({"role": "assistant", "content": "", "tool_calls": whole})
    for index, call in enumerate(calls if style != "ollama" else ()):
        head = {"id": call.id, "type": "function"}
        function = {"name": call.name, "arguments": ""}
        deltas.append({"tool_calls": [{"index": index, **head, "function": function}]})
        for piece in call.pieces:
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    return tuple(_dumps(delta).encode() for delta in deltas)


def _wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# --------------------------------------------------------------------------------------------
# Per-connection protocol: the Anthropic fake's HTTP machinery, OpenAI's responses
# --------------------------------------------------------------------------------------------


class _OpenAIConn(_Conn):
    _fake: FakeOpenAI
    _sc: OpenAIScenario | None  # type: ignore[assignment]

    def __init__(self, fake: FakeOpenAI, conn_id: int) -> None:
        super().__init__(fake, conn_id)
        self._tail = b""
        self._tail_outcome = "complete"

    def _send_head(self) -> None:
        self._timer = None
        rec, sc = self._rec, self._sc
        assert rec is not None and sc is not None
        if sc.status != 200:
            self._send_error_response(rec, sc.status, sc.error_message, sc)
            return
        if rec.body.get("stream") is not True:
            self._send_completion_json(rec, sc)
            return
        ctype = "text/event-stream" + ("" if sc.style == "ollama" else "; charset=utf-8")
        headers = [
            ("content-type", ctype),
            ("transfer-encoding", "chunked"),
            ("x-request-id", rec.request_id),
            ("cache-control", "no-cache"),
            ("connection", "keep-alive" if self._keep_alive else "close"),
            *sc.extra_headers.items(),
        ]
        enc = _Encoder(sc.style, self._fake._completion_id(rec, sc), self._fake._model(rec))
        self._write(_head(200, headers) + enc.role_frame())
        deltas = self._fake._delta_json_for(sc) + _tool_call_deltas(sc.tool_calls, sc.style)
        self._frames = tuple(enc.frame(d) for d in deltas)
        tail = []
        if not sc.done_without_finish:
            tail.append(enc.finish_frame(sc.finish_reason))
        if sc.usage_when_asked and _wants_usage(rec.body):
            completion = self._fake._completion_tokens(sc)
            tail.append(enc.usage_frame(sc.prompt_tokens, completion, sc.cached_tokens))
        if not sc.no_done:
            tail.append(_DONE)
        tail.append(_TERMINATOR)
        self._tail = b"".join(tail)  # one write at the end
        self._tail_outcome = (
            "no_done" if sc.no_done else "no_finish" if sc.done_without_finish else "complete"
        )
        if sc.first_token_delay > 0:
            self._timer = self._loop.call_later(sc.first_token_delay, self._step)
        else:
            self._step()

    def _step(self) -> None:
        """Send the next delta (or end the stream). Runs once per delta."""
        self._timer = None
        rec, sc = self._rec, self._sc
        if rec is None or sc is None or self._lost:
            return
        if self._paused:
            self._resume_step = True
            return
        i = self._i
        if sc.error_frame_after is not None and i >= sc.error_frame_after:
            err = {"message": sc.error_message, "type": "BadRequestError", "param": None}
            self._write(_data({"error": {**err, "code": 400}}) + _DONE + _TERMINATOR)
            self._finish("error_frame")
            return
        if sc.truncate_after is not None and i >= sc.truncate_after:
            self._write(_TERMINATOR)
            self._finish("truncated")
            return
        if sc.drop_after is not None and i >= sc.drop_after:
            assert self._transport is not None
            self._finish("dropped", reuse=False)
            self._transport.abort()
            return
        if sc.stall_after is not None and i >= sc.stall_after:
            return  # nothing more; ended by the client going away or by stop()
        frames = self._frames
        if i >= len(frames):
            self._write(self._tail)
            self._finish(self._tail_outcome)
            return
        self._write(frames[i])
        i += 1
        self._i = i
        rec.deltas_sent = i
        if sc.interval > 0:
            self._timer = self._loop.call_later(sc.interval, self._step)
        else:
            self._timer = self._loop.call_soon(self._step)

    def _finish(self, outcome: str, *, reuse: bool = True) -> None:
        self._tail = b""
        super()._finish(outcome, reuse=reuse)

    def _send_error_response(
        self,
        rec: RecordedRequest,
        status: int,
        message: str,
        sc: OpenAIScenario | None,  # type: ignore[override]
    ) -> None:
        etype, code = openai_error_for_status(status)
        body = _dumps(
            {"error": {"message": message, "type": etype, "param": None, "code": code}}
        ).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", rec.request_id),
            ("connection", "keep-alive" if self._keep_alive else "close"),
        ]
        if sc is not None:
            if sc.retry_after is not None:
                headers.append(("retry-after", sc.retry_after))
            if sc.retry_after_ms is not None:
                headers.append(("retry-after-ms", sc.retry_after_ms))
            headers.extend(sc.extra_headers.items())
        self._write(_head(status, headers) + body)
        if rec.outcome == "":
            rec.outcome = "http_error"
        self._finish(rec.outcome)

    def _send_completion_json(self, rec: RecordedRequest, sc: OpenAIScenario) -> None:
        """Non-streaming request: the whole ``chat.completion`` as JSON."""
        fake = self._fake
        message: dict[str, Any] = {"role": "assistant", "content": "".join(sc.deltas)}
        if sc.style == "openai":
            message["refusal"] = None
        if sc.reasoning:
            key = "reasoning_content" if sc.style == "openai" else "reasoning"
            message[key] = "".join(sc.reasoning)
        choice: dict[str, Any] = {"index": 0, "message": message}
        if sc.style != "vllm":
            choice["logprobs"] = None
        choice["finish_reason"] = sc.finish_reason
        completion = fake._completion_tokens(sc)
        obj: dict[str, Any] = {
            "id": fake._completion_id(rec, sc),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": fake._model(rec),
        }
        if sc.style != "vllm":
            obj["system_fingerprint"] = "fp_ollama" if sc.style == "ollama" else "fp_fake"
        obj["choices"] = [choice]
        obj["usage"] = {
            "prompt_tokens": sc.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": sc.prompt_tokens + completion,
        }
        body = _dumps(obj).encode()
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", rec.request_id),
            ("connection", "keep-alive" if self._keep_alive else "close"),
            *sc.extra_headers.items(),
        ]
        self._write(_head(200, headers) + body)
        rec.deltas_sent = len(sc.reasoning) + len(sc.deltas)
        self._finish("complete")


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FakeOpenAI(FakeAnthropic):
    """A loopback HTTP/1.1 server speaking the OpenAI Chat Completions wire format.

    Lifecycle, scripting and recording are :class:`FakeAnthropic`'s: ``start``/``stop``,
    ``async with``, ``in_thread()``, ``enqueue``, ``default``, ``requests``,
    ``wait_for_requests``, ``reset``, ``pending_scenarios``, ``open_connections``,
    ``connections_opened``, ``requests_received``. Only ``base_url`` differs: it ends in ``/v1``.
    """

    path_suffix = "/chat/completions"

    default: OpenAIScenario  # type: ignore[assignment]

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default: OpenAIScenario | None = None,
        *,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(host, port, keep_requests=keep_requests)
        self.default = default if default is not None else OpenAIScenario()
        self._json_cache: dict[tuple[str, tuple[str, ...]], tuple[bytes, ...]] = {}

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    @classmethod
    @contextlib.contextmanager
    def in_thread(  # type: ignore[override]
        cls, host: str = "127.0.0.1", port: int = 0, default: OpenAIScenario | None = None
    ) -> Iterator[FakeOpenAI]:
        """Run the fake on its own event loop in a daemon thread; yield it started."""
        with super().in_thread(host, port, cast(Any, default)) as fake:
            yield cast(FakeOpenAI, fake)

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, what the openai SDK and chatrelay's settings expect."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://{self.host}:{self.port}/v1"

    def enqueue(self, *scenarios: OpenAIScenario) -> None:  # type: ignore[override]
        """The next requests take these in order; when the queue is empty, `default` is used.

        Thread-safe (deque append), so it may be called from a test thread with `in_thread`.
        """
        self._queue.extend(cast(Any, scenarios))

    # -- internals ----------------------------------------------------------------------------
    def _new_conn(self) -> _OpenAIConn:
        self._n_conns += 1
        self.connections_opened += 1
        return _OpenAIConn(self, self._n_conns)

    def _delta_json_for(self, sc: OpenAIScenario) -> tuple[bytes, ...]:
        """Encoded delta objects, reasoning first; cached per delta list."""
        role = "+role" if sc.style == "ollama" else ""
        rkind = ("reasoning_content" if sc.style == "openai" else "reasoning") + role
        out: tuple[bytes, ...] = ()
        for kind, deltas in ((rkind, sc.reasoning), ("content" + role, sc.deltas)):
            if not deltas:
                continue
            key = (kind, tuple(deltas))
            pieces = self._json_cache.get(key)
            if pieces is None:
                if len(self._json_cache) > 256:
                    self._json_cache.clear()
                pieces = self._json_cache[key] = _delta_json(kind, key[1])
            out += pieces
        return out

    @staticmethod
    def _model(rec: RecordedRequest) -> str:
        model = rec.body.get("model")
        return model if isinstance(model, str) and model else "gpt-fake"

    @staticmethod
    def _completion_id(rec: RecordedRequest, sc: OpenAIScenario) -> str:
        n = int(rec.request_id.rsplit("_", 1)[1])
        if sc.style == "ollama":
            return f"chatcmpl-{n}"
        if sc.style == "vllm":
            return f"chatcmpl-{n:032x}"
        return f"chatcmpl-fake{n}"

    @staticmethod
    def _completion_tokens(sc: OpenAIScenario) -> int:
        return len(sc.deltas) if sc.completion_tokens is None else sc.completion_tokens


# --------------------------------------------------------------------------------------------
# Standalone entry point
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake OpenAI Chat Completions streaming upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9200, help="0 picks a free port")
    p.add_argument("--deltas", type=int, default=100, help="content deltas per response")
    p.add_argument("--interval", type=float, default=0.04, help="seconds between deltas")
    p.add_argument("--first-token-delay", type=float, default=0.0)
    p.add_argument("--headers-delay", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--style", choices=STYLES, default="openai")
    args = p.parse_args(argv)

    _raise_nofile_limit()
    default = OpenAIScenario(
        deltas=make_deltas(args.deltas),
        interval=args.interval,
        first_token_delay=args.first_token_delay,
        headers_delay=args.headers_delay,
        status=args.status,
        style=args.style,
    )

    asyncio.run(
        serve_until_signalled(FakeOpenAI(args.host, args.port, default, keep_requests=1000))
    )


if __name__ == "__main__":
    main()
