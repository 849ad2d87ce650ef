"""Prove tests/fakes/openai_upstream.py against the REAL openai SDK (3.x, on httpx2)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, OpenAIScenario

MODEL = "gpt-test-1"
MSGS: Any = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parents[1]
USAGE = {"include_usage": True}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as f:
        yield f


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(api_key="test-key", base_url=fake.base_url, max_retries=0) as c:
        yield c


async def _stream(client: openai.AsyncOpenAI, **kw: Any) -> Any:
    return await client.chat.completions.create(model=MODEL, messages=MSGS, stream=True, **kw)


async def _chunks(client: openai.AsyncOpenAI, **kw: Any) -> list[Any]:
    async with await _stream(client, **kw) as stream:
        return [c async for c in stream]


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


# ---------------------------------------------------------------- happy path


async def test_stream_without_include_usage_has_no_usage_chunk(fake, client):
    assert fake.base_url.endswith("/v1")
    chunks = await _chunks(client)
    assert [c.choices[0].delta.content for c in chunks] == ["", "Hello", ", ", "world", "!", None]
    first, last = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert last.choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)
    assert {c.id for c in chunks} == {"chatcmpl-fake1"}
    assert {c.model for c in chunks} == {MODEL}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert {c.system_fingerprint for c in chunks} == {"fp_fake"}

    (rec,) = fake.requests
    assert await rec.wait_closed(1)
    assert rec.method == "POST" and rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == "Bearer test-key" and rec.api_key == "test-key"
    assert rec.body["stream"] is True and rec.body["model"] == MODEL
    assert "stream_options" not in rec.body
    assert rec.outcome == "complete" and rec.deltas_sent == 4
    assert rec.finished_at is not None and rec.disconnected_at is None


async def test_stream_with_include_usage_ends_with_usage_chunk(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("abc"), prompt_tokens=7, finish_reason="length"))
    chunks = await _chunks(client, stream_options=USAGE)
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert _text(chunks) == "abc"
    *body, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage.model_dump() == {
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "total_tokens": 10,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    assert all(c.usage is None for c in body)
    assert _finish_reasons(chunks) == ["length"]


async def test_usage_when_asked_false_omits_usage_chunk(fake, client):
    fake.enqueue(OpenAIScenario(usage_when_asked=False, completion_tokens=99))
    chunks = await _chunks(client, stream_options=USAGE)
    assert all(c.choices and c.usage is None for c in chunks)
    assert _finish_reasons(chunks) == ["stop"]


async def test_queue_then_default(fake, client):
    fake.default = OpenAIScenario(deltas=["d"])
    fake.enqueue(OpenAIScenario(deltas=["q1"]), OpenAIScenario(deltas=["q2"]))
    got = [_text(await _chunks(client)) for _ in range(3)]
    assert got == ["q1", "q2", "d"]
    assert fake.pending_scenarios == 0


@pytest.mark.parametrize("style", ["openai", "ollama", "vllm"])
async def test_each_style_parses_with_the_sdk(fake, client, style):
    fake.enqueue(OpenAIScenario(deltas=["x", "y"], style=style))
    chunks = await _chunks(client, stream_options=USAGE)
    assert _text(chunks) == "xy"
    assert _finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12
    with_choices = chunks[:-1]
    roles = [c.choices[0].delta.role for c in with_choices]
    ids = {c.id for c in chunks}
    if style == "ollama":
        assert roles == ["assistant"] * 4  # every delta repeats the role
        assert ids == {"chatcmpl-1"}
        assert {c.system_fingerprint for c in chunks} == {"fp_ollama"}
    else:
        assert roles == ["assistant", None, None, None]
        assert len(ids) == 1
    if style == "vllm":  # absent fields come out as None, no error
        assert ids == {"chatcmpl-" + "0" * 31 + "1"}
        assert all(c.system_fingerprint is None and c.usage is None for c in with_choices)
        assert all(c.choices[0].logprobs is None for c in with_choices)


async def test_chat_completions_stream_helper(fake, client):
    fake.enqueue(OpenAIScenario(deltas=["a", "b"], style="vllm"))
    async with client.chat.completions.stream(model=MODEL, messages=MSGS) as s:
        kinds = [e.type async for e in s]
        final = await s.get_final_completion()
    assert kinds.count("content.delta") == 3  # the empty role chunk counts too
    assert kinds[-1] == "content.done"
    assert final.choices[0].message.content == "ab"
    assert final.choices[0].finish_reason == "stop"
    assert "stream_options" not in fake.requests[0].body  # the helper doesn't ask for usage


@pytest.mark.parametrize(
    ("style", "field"),
    [("openai", "reasoning_content"), ("ollama", "reasoning"), ("vllm", "reasoning")],
)
async def test_reasoning_deltas_arrive_in_documented_field(fake, client, style, field):
    fake.enqueue(OpenAIScenario(reasoning=["think", "ing"], deltas=["ok"], style=style))
    chunks = await _chunks(client)
    extras = [c.choices[0].delta.model_extra or {} for c in chunks]
    assert [e[field] for e in extras if field in e] == ["think", "ing"]
    assert all(set(e) <= {field} for e in extras)  # nothing else unknown
    finish_content = "" if style == "ollama" else None  # ollama's finish delta repeats it
    assert [c.choices[0].delta.content for c in chunks[3:5]] == ["ok", finish_content]
    assert fake.requests[0].deltas_sent == 3  # reasoning deltas count too

    fake.enqueue(OpenAIScenario(reasoning=["r"], deltas=["c"], style=style))
    done = await client.chat.completions.create(model=MODEL, messages=MSGS)
    assert (done.choices[0].message.model_extra or {})[field] == "r"


@pytest.mark.parametrize("style", ["openai", "ollama", "vllm"])
async def test_non_streaming_gets_chat_completion(fake, client, style):
    fake.enqueue(OpenAIScenario(style=style, finish_reason="length", completion_tokens=5))
    done = await client.chat.completions.create(model=MODEL, messages=MSGS)
    assert done.object == "chat.completion"
    assert done.model == MODEL
    assert done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == "Hello, world!"
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (10, 5)
    assert done.usage.total_tokens == 15
    assert fake.requests[0].outcome == "complete"


# ---------------------------------------------------------------- raw wire format


async def _raw_frames(fake: FakeOpenAI, body: dict[str, Any], path: str = "/v1") -> list[str]:
    async with (
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"http://127.0.0.1:{fake.port}{path}/chat/completions",
            json=body,
            headers={"authorization": "Bearer raw"},
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.headers["x-request-id"].startswith("req_fake_")
        raw = (await resp.aread()).decode()
    frames = raw.split("\n\n")
    assert frames[-1] == ""
    assert all(f.startswith("data: ") and "\n" not in f for f in frames[:-1])  # data-only
    return [f[6:] for f in frames[:-1]]


@pytest.mark.parametrize("style", ["openai", "ollama", "vllm"])
async def test_raw_wire_format_data_only_frames(fake, style):
    fake.default = OpenAIScenario(deltas=["a", "é"], style=style)
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    *chunks_raw, done = await _raw_frames(fake, body, path="/prefix/v1")
    assert done == "[DONE]"
    chunks = [json.loads(c) for c in chunks_raw]
    assert len(chunks) == 5
    env = ["id", "object", "created", "model"]
    if style != "vllm":
        env.append("system_fingerprint")
    for c in chunks[:-1]:
        choice_keys = ["index", "delta", "finish_reason"]
        if style == "vllm":
            assert list(c) == [*env, "choices"]  # no "usage" key at all
        else:
            assert list(c) == [*env, "choices", "usage"] and c["usage"] is None
            choice_keys.insert(2, "logprobs")
        assert list(c["choices"][0]) == choice_keys
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    role = {"role": "assistant"} if style == "ollama" else {}
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if style == "openai":
        first["refusal"] = None
    finish = {"role": "assistant", "content": ""} if style == "ollama" else {}
    assert deltas == [first, {**role, "content": "a"}, {**role, "content": "é"}, finish]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 3 + ["stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
    }
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"m"}
    assert fake.requests[0].path == "/prefix/v1/chat/completions"
    assert fake.requests[0].api_key == "raw"


async def test_unknown_path_gets_404_openai_error(fake):
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{fake.base_url}/completions", json={"model": "m"})
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {
            "message": "Not found: POST /v1/completions",
            "type": "not_found_error",
            "param": None,
            "code": None,
        }
    }
    assert resp.headers["x-request-id"] == "req_fake_1"
    assert fake.requests[0].outcome == "not_found" and fake.pending_scenarios == 0


# ---------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize(
    ("status", "exc_cls", "err_type", "code"),
    [
        (429, openai.RateLimitError, "rate_limit_error", "rate_limit_exceeded"),
        (401, openai.AuthenticationError, "authentication_error", "invalid_api_key"),
        (400, openai.BadRequestError, "invalid_request_error", None),
        (403, openai.PermissionDeniedError, "permission_error", None),
        (404, openai.NotFoundError, "not_found_error", None),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "service_unavailable", None),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_http_error_status_raises_sdk_class(
    fake, client, status, exc_cls, err_type, code, stream
):
    fake.enqueue(
        OpenAIScenario(status=status, error_message="nope", retry_after="7", retry_after_ms="5")
    )
    with pytest.raises(exc_cls) as info:
        await client.chat.completions.create(model=MODEL, messages=MSGS, stream=stream)
    e = info.value
    assert e.status_code == status
    assert (e.type, e.code, e.param) == (err_type, code, None)
    assert e.message.endswith("nope")
    assert e.body == {"message": "nope", "type": err_type, "param": None, "code": code}
    assert e.request_id == "req_fake_1"
    assert e.response.headers["retry-after"] == "7"
    assert e.response.headers["retry-after-ms"] == "5"
    assert fake.requests[0].outcome == "http_error"


async def test_sdk_retries_429_honouring_retry_after_ms(fake):
    fake.enqueue(OpenAIScenario(status=429, retry_after_ms="1"), OpenAIScenario(deltas=["ok"]))
    async with openai.AsyncOpenAI(api_key="k", base_url=fake.base_url, max_retries=1) as c:
        assert _text(await _chunks(c)) == "ok"
    assert [r.headers["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]
    assert [r.outcome for r in fake.requests] == ["http_error", "complete"]


async def test_sdk_gives_up_at_once_when_retry_after_exceeds_120s(fake):
    fake.enqueue(OpenAIScenario(status=429, retry_after="300"), OpenAIScenario())
    async with openai.AsyncOpenAI(api_key="k", base_url=fake.base_url, max_retries=2) as c:
        t0 = time.monotonic()
        with pytest.raises(openai.RateLimitError):
            await _stream(c)
    assert time.monotonic() - t0 < 1
    assert len(fake.requests) == 1 and fake.pending_scenarios == 1


# ---------------------------------------------------------------- mid-stream failures


async def test_vllm_error_frame_raises_api_error_after_n_deltas(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("abcdef"), error_frame_after=2, error_message="boom"))
    texts: list[str] = []
    with pytest.raises(openai.APIError) as info:
        async with await _stream(client) as stream:
            async for c in stream:
                texts.append(c.choices[0].delta.content)
    assert texts == ["", "a", "b"]
    e = info.value
    assert type(e) is openai.APIError  # not an APIStatusError: no status code
    assert e.message == "boom"
    assert e.body == {"message": "boom", "type": "BadRequestError", "param": None, "code": 400}
    # vLLM's code is an int on the wire; the SDK stringifies it (e.body keeps the int)
    assert e.code == "400" and e.type == "BadRequestError"
    rec = fake.requests[0]
    assert rec.outcome == "error_frame" and rec.deltas_sent == 2


async def test_truncate_after_ends_stream_without_sdk_error(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("abcd"), truncate_after=2))
    chunks = await _chunks(client, stream_options=USAGE)  # no exception
    assert _text(chunks) == "ab"
    assert _finish_reasons(chunks) == [] and all(c.choices for c in chunks)  # no usage either
    fake.enqueue(OpenAIScenario(deltas=list("abcd"), truncate_after=0))
    assert _text(await _chunks(client)) == ""
    assert [r.outcome for r in fake.requests] == ["truncated", "truncated"]
    # the body ended cleanly, so the connection was kept alive and reused
    assert fake.requests[0].connection_id == fake.requests[1].connection_id


async def test_no_done_ends_stream_without_sdk_error(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("ab"), no_done=True))
    chunks = await _chunks(client, stream_options=USAGE)
    assert _text(chunks) == "ab"
    assert _finish_reasons(chunks) == ["stop"]
    assert chunks[-1].usage is not None  # finish and usage sent, only [DONE] missing
    assert fake.requests[0].outcome == "no_done"


async def test_done_without_finish_ends_stream_without_sdk_error(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("ab"), done_without_finish=True))
    chunks = await _chunks(client)
    assert _text(chunks) == "ab"
    assert _finish_reasons(chunks) == []
    assert fake.requests[0].outcome == "no_finish"


async def test_drop_after_raises_api_connection_error(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("abcd"), drop_after=2))
    texts: list[str] = []
    with pytest.raises(openai.APIConnectionError) as info:
        async with await _stream(client) as stream:
            async for c in stream:
                texts.append(c.choices[0].delta.content)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert texts == ["", "a", "b"]
    rec = fake.requests[0]
    assert rec.outcome == "dropped" and rec.disconnected_at is None


# ---------------------------------------------------------------- stall, client close, timing


async def test_stall_then_stream_close_is_noticed_within_100ms(fake, client):
    fake.enqueue(OpenAIScenario(deltas=list("abcdef"), stall_after=2))
    stream = await _stream(client)
    got = [await stream.__anext__() for _ in range(3)]  # role chunk + 2 deltas
    assert _text(got) == "ab"
    await asyncio.sleep(0.05)  # really stalled: the fake holds the connection open
    rec = fake.requests[0]
    assert not rec.is_done() and rec.deltas_sent == 2
    closed_at = time.monotonic()
    await stream.close()
    assert await rec.wait_closed(1)
    assert rec.outcome == "client_gone"
    assert rec.disconnected_at is not None
    assert rec.disconnected_at - closed_at < 0.1
    assert rec.finished_at is None
    assert fake.open_connections == 0


async def test_client_timeout_during_headers_delay_is_a_disconnect(fake):
    fake.enqueue(OpenAIScenario(headers_delay=5.0))
    async with openai.AsyncOpenAI(
        api_key="k", base_url=fake.base_url, max_retries=0, timeout=0.1
    ) as c:
        with pytest.raises(openai.APITimeoutError):
            await _stream(c)
    rec = fake.requests[0]
    assert await rec.wait_closed(1)
    assert rec.outcome == "client_gone" and rec.disconnected_at is not None


async def test_delays_and_interval(fake, client):
    fake.enqueue(
        OpenAIScenario(deltas=list("abcd"), headers_delay=0.1, first_token_delay=0.1, interval=0.05)
    )
    t0 = time.monotonic()
    stream = await _stream(client)
    t_open = time.monotonic()
    stamps = [time.monotonic() async for c in stream if c.choices[0].delta.content]
    assert t_open - t0 >= 0.1
    assert stamps[0] - t_open >= 0.09
    assert stamps[-1] - stamps[0] >= 3 * 0.05 - 0.01
    assert stamps[-1] - t0 < 1.0


async def test_stop_closes_stalled_connections(fake, client):
    fake.enqueue(OpenAIScenario(stall_after=1))
    with pytest.raises(openai.APIConnectionError):
        async with await _stream(client) as stream:
            async for _ in stream:
                await fake.stop()
    rec = fake.requests[0]
    assert rec.is_done()
    assert rec.outcome == "server_closed" and rec.disconnected_at is None


# ---------------------------------------------------------------- keep-alive, concurrency


async def test_keep_alive_sequential_requests_share_one_connection(fake, client):
    assert _text(await _chunks(client)) == "Hello, world!"
    assert _text(await _chunks(client, stream_options=USAGE)) == "Hello, world!"
    await client.chat.completions.create(model=MODEL, messages=MSGS)
    fake.enqueue(OpenAIScenario(status=429))
    with pytest.raises(openai.RateLimitError):
        await _stream(client)
    assert _text(await _chunks(client)) == "Hello, world!"
    assert [r.outcome for r in fake.requests] == ["complete"] * 3 + ["http_error", "complete"]
    assert {r.connection_id for r in fake.requests} == {1}
    assert fake.connections_opened == 1


async def test_50_concurrent_streams_each_intact(fake, client):
    n = 50
    fake.enqueue(
        *(
            OpenAIScenario(deltas=[f"s{i}-{k} " for k in range(20)], interval=0.002)
            for i in range(n)
        )
    )

    async def one() -> tuple[str, str, list[str]]:
        chunks = await _chunks(client, stream_options=USAGE)
        assert len({c.id for c in chunks}) == 1 and chunks[-1].usage.completion_tokens == 20
        return chunks[0].id, _text(chunks), _finish_reasons(chunks)

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 10)
    by_id = {"chatcmpl-fake" + r.request_id.rsplit("_", 1)[1]: r for r in fake.requests}
    assert len(by_id) == n
    for chunk_id, text, finish in results:
        rec = by_id[chunk_id]
        assert rec.scenario is not None
        assert text == "".join(rec.scenario.deltas)
        assert finish == ["stop"]
        assert rec.outcome == "complete"


# ---------------------------------------------------------------- in_thread, standalone


def test_in_thread_with_sync_client():
    with FakeOpenAI.in_thread(default=OpenAIScenario(deltas=["x", "y"])) as fake:
        assert isinstance(fake, FakeOpenAI) and fake.base_url.endswith("/v1")
        with openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0) as c:
            stream = c.chat.completions.create(model=MODEL, messages=MSGS, stream=True)
            assert _text(list(stream)) == "xy"
            fake.enqueue(OpenAIScenario(deltas=list("abc"), stall_after=1))
            stream = c.chat.completions.create(model=MODEL, messages=MSGS, stream=True)
            assert [next(stream).choices[0].delta.content for _ in range(2)] == ["", "a"]
            closed_at = time.monotonic()
            stream.close()
        rec = fake.requests[-1]
        assert rec.wait(1)  # threading.Event, from this (non-loop) thread
        assert rec.disconnected_at is not None and rec.disconnected_at - closed_at < 0.1
    with pytest.raises(RuntimeError):
        _ = fake.base_url  # stopped


async def test_in_thread_awaited_from_another_loop():
    with FakeOpenAI.in_thread() as fake:
        fake.enqueue(OpenAIScenario(stall_after=1))
        async with openai.AsyncOpenAI(api_key="k", base_url=fake.base_url, max_retries=0) as c:
            stream = await _stream(c)
            await stream.__anext__()
            await stream.close()
            (rec,) = await fake.wait_for_requests(1)
            assert await rec.wait_closed(1)  # polls, since we're not on the fake's loop
            assert rec.outcome == "client_gone"


def test_standalone_main_subprocess():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            "0",
            "--deltas",
            "5",
            "--interval",
            "0",
            "--style",
            "ollama",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        with openai.OpenAI(api_key="k", base_url=base_url, max_retries=0) as c:
            stream = c.chat.completions.create(model=MODEL, messages=MSGS, stream=True)
            assert _text(list(stream)) == "lorem ipsum dolor sit amet "
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
    assert "served 1 requests" in err
