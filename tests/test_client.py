"""`chatrelay.client` against a live server: events, resume across cut connections, Stop,
errors, auth; async and sync."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from chatrelay.client import (
    APIError,
    AsyncChatClient,
    ChatClient,
    ConnectionFailed,
    End,
    Error,
    ResumeFailed,
    Start,
    StreamError,
    Text,
)

from .conftest import make_settings, serve, serve_app

LONG = {"metadata": {"mock": {"words": 300}}}


def mock_reply(question: str) -> str:
    return f"Hello! This is a mock AI response to: “{question}”. The streaming is working!"


async def stored(client: AsyncChatClient, conversation: str, count: int) -> list[dict[str, Any]]:
    """A conversation's messages once there are `count` (the reply is stored just after its
    [DONE] is sent, so a client that asks at once may be a little early)."""
    for _ in range(100):
        response = await client.http.get(f"/conversations/{conversation}")
        messages: list[dict[str, Any]] = response.json().get("messages", [])
        if len(messages) >= count:
            break
        await asyncio.sleep(0.02)
    return messages


class CuttingProxy:
    """A TCP proxy in front of the server that cuts connections, as a flaky network does.

    The i-th connection passes `cuts[i]` bytes of the server's answer (status line and
    headers included, so the cut lands anywhere: in the headers, mid-frame...), then both of
    its sides are reset (`abort`) or closed (`close`). Connections past the list pass
    everything; from `refuse_from` on, connections are closed at once (the server is gone).
    """

    def __init__(
        self,
        target: str,
        cuts: list[int],
        *,
        how: str = "abort",
        refuse_from: int | None = None,
    ) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cuts = cuts
        self.how = how
        self.refuse_from = refuse_from
        self.connections = 0
        self.cut = 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        if self.refuse_from is not None and index >= self.refuse_from:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        limit = self.cuts[index] if index < len(self.cuts) else None
        pumps = {
            asyncio.create_task(self._pump(reader, up_writer, None)),
            asyncio.create_task(self._pump(up_reader, writer, limit)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for side in (writer, up_writer):
                if self.how == "abort":
                    side.transport.abort()
                else:
                    side.close()

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, limit: int | None
    ) -> None:
        passed = 0
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if limit is not None and passed + len(data) >= limit:
                    sink.write(data[: limit - passed])
                    await sink.drain()
                    self.cut += 1
                    return
                passed += len(data)
                sink.write(data)
                await sink.drain()


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async with serve(make_settings(provider="mock")) as base:
        yield base


@pytest.fixture
async def slow_url() -> AsyncIterator[str]:
    """Words 10 ms apart: a Stop lands while the reply is being generated."""
    async with serve(make_settings(provider="mock", mock_delay_s=0.01)) as base:
        yield base


async def test_a_reply_as_typed_events(url: str) -> None:
    async with AsyncChatClient(url) as client, client.stream("Hi there") as reply:
        events = [event async for event in reply]
    start, *texts, end = events
    assert isinstance(start, Start) and start.model == "mock" and start.provider == "mock"
    assert all(isinstance(t, Text) for t in texts)
    assert "".join(t.text for t in texts if isinstance(t, Text)) == mock_reply("Hi there")
    assert reply.content == mock_reply("Hi there")
    assert isinstance(end, End) and end.reason == "completed" and end.stop_reason == "end_turn"
    assert reply.usage is not None and reply.usage.output_tokens == len(texts)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert reply.done and reply.last_event_id == len(events) + 1  # [DONE] has the last id
    assert reply.stream_id == start.stream_id and reply.conversation_id == start.conversation_id
    assert reply.conversation_id is not None and reply.model == "mock"


async def test_a_conversation_continues_and_extra_fields_are_sent(url: str) -> None:
    async with AsyncChatClient(url) as client:
        first = client.stream("one", conversation_id="client-conv-1")
        assert await first.text() == mock_reply("one")
        messages = [{"role": "user", "content": "two"}]
        second = client.stream(messages, conversation_id="client-conv-1", model="mock", **LONG)
        text = await second.text()
        messages = await stored(client, "client-conv-1", 4)
    assert len(text.split(" ")) == 300
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert second.conversation_id == "client-conv-1"


async def test_pings_between_frames_are_not_events() -> None:
    settings = make_settings(provider="mock", heartbeat_s=0.01)
    mock = {"reply": "one two three four", "delay_s": 0.05, "first_token_delay_s": 0.05}
    body = {"messages": [{"role": "user", "content": "hi"}], "metadata": {"mock": mock}}
    async with serve(settings) as url, AsyncChatClient(url) as client:
        raw = (await client.http.post("/ai/stream/chat", json=body)).text
        reply = client.stream("hi", metadata={"mock": mock})
        events = [event async for event in reply]
    assert raw.count(": ping") >= 4  # before the first frame and between frames
    assert reply.content == "one two three four"
    assert len({e.id for e in events}) == len(events) == 6


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_cut_connections_are_resumed_without_a_gap_or_a_duplicate(url: str, how: str) -> None:
    async with AsyncChatClient(url) as direct:
        expected = await direct.stream("Hi there", **LONG).text()
    # Three connections in a row are cut (the POST's, then two resumes), anywhere in a frame.
    proxy = CuttingProxy(url, [1500, 1100, 2333], how=how)
    async with proxy.running() as proxied, AsyncChatClient(proxied, backoff_s=0.01) as client:
        reply = client.stream("Hi there", **LONG)
        events = [event async for event in reply]
    texts = [e for e in events if isinstance(e, Text)]
    assert "".join(t.text for t in texts) == expected
    assert len(texts) == 300
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)) == list(range(1, len(events) + 1))
    assert isinstance(events[-1], End) and events[-1].reason == "completed"
    assert proxy.cut == 3 and reply.resumes == 3 and proxy.connections == 4


async def test_a_post_cut_before_its_answer_is_sent_again_without_a_second_reply(
    url: str,
) -> None:
    proxy = CuttingProxy(url, [40])  # inside the status line
    async with proxy.running() as proxied, AsyncChatClient(proxied, backoff_s=0.01) as client:
        reply = client.stream("Hi there", conversation_id="idempotent-1")
        text = await reply.text()
        await asyncio.sleep(0.2)  # were a second reply started, it would be stored by now
        messages = await stored(client, "idempotent-1", 2)
    assert text == mock_reply("Hi there")
    assert reply.resumes == 1
    # The second POST carried the same Idempotency-Key: the same stream, one reply billed.
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_a_stream_that_cannot_be_resumed_raises_resume_failed(url: str) -> None:
    proxy = CuttingProxy(url, [1500], refuse_from=1)
    async with (
        proxy.running() as proxied,
        AsyncChatClient(proxied, max_retries=2, backoff_s=0.01) as client,
    ):
        reply = client.stream("Hi there", **LONG)
        seen = []
        with pytest.raises(ResumeFailed, match="could not be resumed after 3 attempts") as failed:
            async for event in reply:
                seen.append(event)
    assert failed.value.stream_id == reply.stream_id is not None
    assert failed.value.last_event_id == seen[-1].id > 1
    assert isinstance(failed.value.__cause__, httpx.TransportError)


async def test_an_unknown_stream_cannot_be_resumed(url: str) -> None:
    async with AsyncChatClient(url) as client:
        with pytest.raises(ResumeFailed, match="cannot be resumed: Stream 'nope' not found"):
            await client.resume("nope").text()


async def test_resume_by_id_replays_after_the_given_frame(url: str) -> None:
    async with AsyncChatClient(url) as client:
        first = client.stream("Hi there")
        events = [event async for event in first]
        assert first.stream_id is not None
        later = client.resume(first.stream_id, last_event_id=3)
        replayed = [event async for event in later]
    assert replayed == events[3:]


async def test_stop_ends_the_stream_with_reason_stopped(slow_url: str) -> None:
    async with AsyncChatClient(slow_url) as client:
        reply = client.stream("Hi there", conversation_id="stopped-1", **LONG)
        texts = 0
        async for event in reply:
            if isinstance(event, Text):
                texts += 1
                if texts == 3:
                    assert await reply.stop() == "stopped"
        messages = await stored(client, "stopped-1", 2)
        assert await reply.stop() == "finished"  # already over: no request needed
        assert await client.stop(reply.stream_id or "") == "finished"
    assert reply.end_reason == "stopped" and reply.done
    assert texts < 300
    assert messages[-1]["end_reason"] == "stopped"


async def test_an_error_frame_is_an_event_and_text_raises_it_with_its_code(url: str) -> None:
    failing = {"metadata": {"mock": {"fail_after": 2, "fail_code": "rate_limited"}}}
    async with AsyncChatClient(url) as client:
        reply = client.stream("Hi there", **failing)
        events = [event async for event in reply]
        with pytest.raises(StreamError) as raised:
            await client.stream("Hi there", **failing).text()
    errors = [e for e in events if isinstance(e, Error)]
    assert [e.code for e in errors] == ["rate_limited"]
    assert errors[0].request_id and reply.error == errors[0]
    assert isinstance(events[-1], End) and events[-1].reason == "error"
    assert raised.value.code == "rate_limited" and raised.value.partial == "Hello! This "


async def test_a_refused_request_raises_api_error_with_the_servers_code(url: str) -> None:
    async with AsyncChatClient(url) as client:
        with pytest.raises(APIError) as unknown:
            await client.stream("Hi", model="nope").text()
        with pytest.raises(APIError) as invalid:
            await client.stream([{"role": "bot", "content": "Hi"}]).text()
    assert unknown.value.status == 400 and unknown.value.code == "unknown_model"
    assert invalid.value.status == 422 and invalid.value.code == "invalid_request"
    assert "messages[0].role" in invalid.value.message and invalid.value.request_id


async def test_an_unreachable_server_fails_at_once() -> None:
    async with serve(make_settings(provider="mock")) as gone:
        pass  # a port that nobody listens on any more
    async with AsyncChatClient(gone) as client:
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(ConnectionFailed, match=f"cannot reach {gone}"):
            await client.stream("Hi").text()
    assert loop.time() - began < 2


async def test_the_key_is_sent_as_a_bearer_token(tmp_path: Any) -> None:
    settings = make_settings(
        provider="mock",
        auth="api_key",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/keys.db",
        mock_delay_s=0.01,
    )
    from chatrelay.app import create_app

    app = create_app(settings)
    async with serve_app(app) as url:
        key, _ = await app.state.services.keys.create("client-test")
        async with AsyncChatClient(url) as anonymous:
            with pytest.raises(APIError) as refused:
                await anonymous.stream("Hi there").text()
        async with AsyncChatClient(url, key=key, max_retries=0) as client:
            reply = client.stream("Hi there", **LONG)
            async for event in reply:
                if isinstance(event, Text):
                    break
            assert await reply.stop() == "stopped"  # the stop request carries the key too
            await reply.aclose()
            with pytest.raises(APIError) as not_theirs:
                await anonymous_stop(url, reply.stream_id)
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    assert not_theirs.value.status == 401


async def anonymous_stop(url: str, stream_id: str | None) -> str:
    async with AsyncChatClient(url) as client:
        return await client.stop(stream_id or "")


async def test_the_sync_client_is_the_same_stream(slow_url: str) -> None:
    def talk() -> tuple[list[Any], Any, str]:
        with ChatClient(slow_url) as client:
            with client.stream("Hi there", conversation_id="sync-1") as reply:
                events = list(reply)
            second = client.stream("again", conversation_id="sync-1", **LONG)
            for event in second:
                if isinstance(event, Text) and event.id == 5:
                    assert second.stop() == "stopped"
            assert second.end_reason == "stopped"
            with pytest.raises(StreamError, match="overloaded"):
                client.stream("x", metadata={"mock": {"fail_after": 1}}).text()
            left_open = client.stream("never closed", **LONG)  # closed with the client
            next(left_open)
        return events, reply, second.content

    events, reply, partial = await asyncio.to_thread(talk)
    assert isinstance(events[0], Start) and isinstance(events[-1], End)
    assert reply.content == mock_reply("Hi there") and reply.conversation_id == "sync-1"
    assert reply.usage is not None and reply.usage.output_tokens == len(events) - 2
    assert partial.startswith("Hello! This is")


async def test_a_stop_just_after_the_reply_ended_leaves_the_conversation_usable(
    url: str,
) -> None:
    """SERVER BUG (src/chatrelay/streams.py StreamHub.stop/_cancel, src/chatrelay/chat.py
    ChatJob.events finishers): a Stop that arrives after [DONE] was sent but while the
    generation task still runs the reply's finishers (storing it, releasing the conversation
    lock, settling quotas) cancels the task inside them. The server answers "stopped", the
    reply is never stored, the conversation stays locked (409 conversation_busy for
    CHATRELAY_CONVERSATION_LOCK_S), and the event log gets a second end and [DONE] after the
    first. A terminal user pressing Ctrl-C as the reply ends hits it."""
    async with AsyncChatClient(url) as client:
        for attempt in range(3):
            conversation = f"late-stop-{attempt}"
            reply = client.stream("Hi there", conversation_id=conversation)
            assert await reply.text() == mock_reply("Hi there")  # [DONE] received
            status = await client.stop(reply.stream_id or "")  # what a late Ctrl-C sends
            messages = await stored(client, conversation, 2)
            again = client.stream("again", conversation_id=conversation)
            try:
                next_turn: str | APIError = await again.text()
            except APIError as exc:
                next_turn = exc
            assert (status, [m["role"] for m in messages], next_turn) == (
                "finished",
                ["user", "assistant"],
                mock_reply("again"),
            )
