"""A Python client of chatrelay's stream (`POST /ai/stream/chat`): one reply as typed events.

    async with AsyncChatClient("http://127.0.0.1:8000", key=None) as client:
        async with client.stream("Hello!") as reply:
            async for event in reply:
                if isinstance(event, Text):
                    print(event.text, end="", flush=True)
        print(reply.end_reason, reply.usage, reply.conversation_id)

    with ChatClient("http://127.0.0.1:8000") as client:      # the same, without asyncio
        print(client.stream("Hello!").text())

- Events: `Start` (model, stream and conversation ids), `Text`, `Thinking`, `Error` (an
  error *frame*: the reply failed; it is followed by `End`), `End` (reason, usage). The
  iteration ends at `[DONE]`.
- When the connection drops mid-stream (reset, proxy cut, read timeout), the stream is resumed
  with `GET /ai/stream/{id}` and `Last-Event-ID`, up to `max_retries` times in a row with
  exponential backoff; frames already seen are never yielded again (they are recognised by
  their `id`). A stream that cannot be resumed raises `ResumeFailed`.
- The POST carries an `Idempotency-Key`, so if it is cut before its answer arrived it is sent
  again without starting (and paying for) a second reply.
- `stop()` cancels the generation on the server; the stream then ends with `End` whose
  `reason` is `"stopped"`.
- An HTTP error answer (401, 409, 422, 429...) raises `APIError` with the server's `code`.

`ChatClient` is a thin synchronous facade: it runs an `AsyncChatClient` on an event loop of
its own, in a background thread, so both share one implementation of the protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeAlias, TypeVar

import httpx
from httpx_sse import EventSource, ServerSentEvent

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "AsyncChatClient",
    "AsyncChatStream",
    "ChatClient",
    "ChatRelayError",
    "ChatStream",
    "ConnectionFailed",
    "End",
    "Error",
    "Event",
    "ProtocolError",
    "ResumeFailed",
    "Start",
    "StreamError",
    "Text",
    "Thinking",
    "Usage",
]

DEFAULT_URL: Final = "http://127.0.0.1:8000"
# The server sends a `: ping` every CHATRELAY_HEARTBEAT_S (15 s) while nothing else flows, so a
# minute of silence means the connection is dead: it is then resumed.
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)
MAX_BACKOFF_S: Final = 4.0

T = TypeVar("T")


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Start:
    """The answering model is known (`event: start`); `data` is the whole frame."""

    id: int
    stream_id: str | None
    model: str | None
    provider: str | None
    conversation_id: str | None
    data: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Text:
    """A piece of the reply's text (`{"content": ...}`), in order."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Thinking:
    """A piece of extended thinking (`event: thinking`)."""

    id: int
    text: str


@dataclass(frozen=True, slots=True)
class Error:
    """An error frame (not an exception): the reply failed; `End` and `[DONE]` follow."""

    id: int
    code: str
    message: str
    retry_after: float | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class End:
    """The reply ended (`event: end`): `reason` is completed, error, stopped or disconnected."""

    id: int
    reason: str
    stop_reason: str | None
    usage: Usage | None


Event: TypeAlias = Start | Text | Thinking | Error | End


# -- errors ----------------------------------------------------------------------------------


class ChatRelayError(Exception):
    """Base of the client's errors."""


class APIError(ChatRelayError):
    """The server answered with an HTTP error (the request was refused)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id
        self.body = body


class StreamError(ChatRelayError):
    """The reply ended with an error frame (raised by `text()`; iteration yields `Error`)."""

    def __init__(self, error: Error, partial: str) -> None:
        super().__init__(f"{error.message} ({error.code})")
        self.code = error.code
        self.message = error.message
        self.retry_after = error.retry_after
        self.error = error
        self.partial = partial


class ConnectionFailed(ChatRelayError):
    """The server could not be reached, or kept failing, for `max_retries` attempts."""


class ResumeFailed(ConnectionFailed):
    """The stream was cut off and could not be resumed (retries exhausted, or it expired)."""

    def __init__(self, message: str, stream_id: str | None, last_event_id: int) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.last_event_id = last_event_id


class ProtocolError(ChatRelayError):
    """The answer is not a chatrelay event stream (wrong content type, frame without an id)."""


# -- frames ----------------------------------------------------------------------------------


class _Done:
    """`data: [DONE]`, the last frame."""


DONE: Final = _Done()


def decode_frame(sse: ServerSentEvent) -> tuple[int, Event | _Done | None] | None:
    """One SSE frame of chatrelay's stream as (its id, its event).

    None for what carries nothing (the empty events a `: ping` comment leaves behind); the
    event is None for a frame of a kind this client does not know (skipped, for forward
    compatibility).
    """
    if not sse.data:
        return None
    try:
        seq = int(sse.id)
    except ValueError:
        raise ProtocolError(f"a frame without a numeric id: {sse!r}") from None
    if sse.data == "[DONE]":
        return seq, DONE
    try:
        payload = json.loads(sse.data)
    except ValueError:
        raise ProtocolError(f"a frame whose data is not JSON: {sse!r}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"a frame whose data is not an object: {sse!r}")
    kind = sse.event
    if kind == "message":
        if "content" in payload:
            return seq, Text(seq, str(payload["content"]))
        if "error" in payload:
            return seq, Error(
                seq,
                code=str(payload.get("code") or "unknown"),
                message=str(payload["error"]),
                retry_after=_number(payload.get("retry_after")),
                request_id=_string(payload.get("request_id")),
            )
    elif kind == "start":
        return seq, Start(
            seq,
            stream_id=_string(payload.get("stream_id")),
            model=_string(payload.get("model")),
            provider=_string(payload.get("provider")),
            conversation_id=_string(payload.get("conversation_id")),
            data=payload,
        )
    elif kind == "thinking":
        return seq, Thinking(seq, str(payload.get("thinking", "")))
    elif kind == "end":
        usage = payload.get("usage")
        return seq, End(
            seq,
            reason=str(payload.get("reason") or "completed"),
            stop_reason=_string(payload.get("stop_reason")),
            usage=Usage(_int(usage.get("input_tokens")), _int(usage.get("output_tokens")))
            if isinstance(usage, dict)
            else None,
        )
    return seq, None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def api_error(response: httpx.Response) -> APIError:
    """An error answer (read already) as an `APIError`, from chatrelay's JSON error shape or,
    for a proxy's page, from its status."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or response.reason_phrase)
        request_id = _string(error.get("request_id"))
    else:
        code = f"http_{status}"
        message = " ".join(response.text.split())[:200] or response.reason_phrase
        request_id = None
    try:
        retry_after: float | None = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        retry_after = None
    return APIError(
        status,
        code,
        message,
        retry_after=retry_after,
        request_id=request_id or response.headers.get("x-request-id"),
        body=body,
    )


def _messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    return [dict(message) for message in messages]


class _Retry(Exception):
    """An answer worth asking again (a 5xx of a restarting instance or of a proxy)."""

    def __init__(self, error: APIError) -> None:
        super().__init__(str(error))
        self.error = error


# -- async -----------------------------------------------------------------------------------


class AsyncChatClient:
    """A client of one chatrelay server (any instance, or their load balancer)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        backoff_s: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`key` is sent as `Authorization: Bearer <key>` (an API key or a JWT).

        `max_retries` bounds the reconnections in a row that bring no new frame; the waits
        between them start at `backoff_s` and double (up to 4 s, with jitter).
        """
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"the server's URL must start with http:// or https://: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        all_headers = {"user-agent": "chatrelay-client", **(headers or {})}
        if key:
            all_headers["authorization"] = f"Bearer {key}"
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=all_headers, timeout=timeout, transport=transport
        )

    def stream(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        conversation_id: str | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> AsyncChatStream:
        """A reply to `messages` (a prompt, or `{role, content}` dicts); `extra` are further
        body fields (`system`, `max_tokens`, `thinking`, `metadata`...). The request is sent
        when the iteration starts."""
        body: dict[str, Any] = {"messages": _messages(messages), **extra}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        if model is not None:
            body["model"] = model
        return AsyncChatStream(self, body=body)

    def resume(self, stream_id: str, last_event_id: int = 0) -> AsyncChatStream:
        """Follow an existing stream from after the frame `last_event_id`."""
        return AsyncChatStream(self, stream_id=stream_id, last_event_id=last_event_id)

    async def stop(self, stream_id: str) -> str:
        """Stop a stream's generation: `"stopped"`, or `"finished"` if it had already ended."""
        response = await self.http.post(f"/ai/stream/{stream_id}/stop")
        if response.status_code != 200:
            raise api_error(response)
        return str(response.json().get("status"))

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_s * 2.0 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.75, 1)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncChatClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncChatStream:
    """One reply: an async iterator of events that resumes across dropped connections.

    `stream_id` and `conversation_id` are known once the server has answered (before the first
    event); `model` once `Start` came; `end`, `end_reason` and `usage` once `End` came.
    """

    def __init__(
        self,
        client: AsyncChatClient,
        *,
        body: dict[str, Any] | None = None,
        stream_id: str | None = None,
        last_event_id: int = 0,
    ) -> None:
        self._client = client
        self._body = body
        self.stream_id = stream_id
        conversation = body.get("conversation_id") if body else None
        self.conversation_id: str | None = conversation if isinstance(conversation, str) else None
        self.model: str | None = None
        self.error: Error | None = None
        self.end: End | None = None
        self.last_event_id = last_event_id
        self.resumes = 0  # reconnections made
        self.done = False  # [DONE] (or the end frame) was received
        self._texts: list[str] = []
        self._idempotency_key = uuid.uuid4().hex
        self._identified = asyncio.Event()  # the stream id is known, or never will be
        self._started = False
        self._events = self._run()

    @property
    def content(self) -> str:
        """The text received so far."""
        return "".join(self._texts)

    @property
    def end_reason(self) -> str | None:
        return self.end.reason if self.end else None

    @property
    def usage(self) -> Usage | None:
        return self.end.usage if self.end else None

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> Event:
        return await self._events.__anext__()

    async def text(self) -> str:
        """Read to the end; the reply's whole text. Raises `StreamError` on an error frame."""
        async for _ in self:
            pass
        if self.error is not None:
            raise StreamError(self.error, self.content)
        return self.content

    async def stop(self, wait_s: float = 10.0) -> str | None:
        """Stop the generation on the server; the stream then ends with reason `stopped`.

        Returns the server's answer (`"stopped"`, or `"finished"` if it had ended), or None if
        the request never reached the server. If the server has not answered yet, waits (up to
        `wait_s`) for the stream id rather than leave a generation running.
        """
        if self.done:
            return "finished"
        if self.stream_id is None:
            if not self._started:
                return None
            try:
                await asyncio.wait_for(self._identified.wait(), wait_s)
            except TimeoutError:
                return None
            if self.stream_id is None:
                return None
        return await self._client.stop(self.stream_id)

    async def aclose(self) -> None:
        """Close the connection (this does not stop the generation: see `stop()`)."""
        await self._events.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- internals -------------------------------------------------------------------------
    async def _run(self) -> AsyncGenerator[Event, None]:
        self._started = True
        failures = 0
        try:
            while True:
                try:
                    async with self._connect(first=failures == 0 and not self.resumes) as response:
                        async for sse in EventSource(response).aiter_sse():
                            event = self._accept(sse)
                            if isinstance(event, _Done):
                                self.done = True
                                return
                            if event is not None:
                                failures = 0
                                yield event
                    cause: BaseException = httpx.RemoteProtocolError("stream ended before [DONE]")
                except _Retry as retry:
                    cause = retry.error
                except httpx.TransportError as exc:
                    cause = exc
                if self.end is not None:  # only [DONE] is missing: nothing to resume
                    self.done = True
                    return
                failures += 1
                if failures > self._client.max_retries:
                    raise self._gave_up(cause, failures) from cause
                await asyncio.sleep(self._client.backoff(failures))
                self.resumes += 1
        finally:
            self._identified.set()

    def _gave_up(self, cause: BaseException, attempts: int) -> ConnectionFailed:
        detail = str(cause) or type(cause).__name__
        if self.stream_id is None and self.last_event_id == 0:
            return ConnectionFailed(
                f"no answer from {self._client.base_url} after {attempts} attempts: {detail}"
            )
        return ResumeFailed(
            f"stream {self.stream_id} was cut off after frame {self.last_event_id} and could "
            f"not be resumed after {attempts} attempts: {detail}",
            self.stream_id,
            self.last_event_id,
        )

    @asynccontextmanager
    async def _connect(self, *, first: bool) -> AsyncIterator[httpx.Response]:
        """The POST (again, with the same Idempotency-Key, while the stream id is unknown) or
        a resume; yields a 200 event stream, raises `_Retry` for an answer worth retrying."""
        http = self._client.http
        headers = {"accept": "text/event-stream", "cache-control": "no-store"}
        resuming = self.stream_id is not None
        if resuming:
            headers["last-event-id"] = str(self.last_event_id)
            request = http.build_request("GET", f"/ai/stream/{self.stream_id}", headers=headers)
        else:
            headers["idempotency-key"] = self._idempotency_key
            request = http.build_request(
                "POST", "/ai/stream/chat", json=self._body, headers=headers
            )
        try:
            response = await http.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if first and not resuming:  # nothing was sent: fail fast, the caller may retry
                raise ConnectionFailed(f"cannot reach {self._client.base_url}: {exc}") from exc
            raise
        try:
            if response.status_code != 200:
                await response.aread()
                error = api_error(response)
                if resuming and response.status_code == 404:
                    raise ResumeFailed(
                        f"stream {self.stream_id} cannot be resumed: {error.message}",
                        self.stream_id,
                        self.last_event_id,
                    ) from error
                if response.status_code in (502, 504) or (
                    response.status_code == 503 and error.code != "model_unavailable"
                ):
                    raise _Retry(error)
                raise error
            if not resuming:
                self.stream_id = response.headers.get("x-stream-id") or self.stream_id
                self.conversation_id = (
                    response.headers.get("x-conversation-id") or self.conversation_id
                )
                if self.stream_id is not None:
                    self._identified.set()
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                raise ProtocolError(
                    f"{request.url} answered {content_type or 'no content type'}, "
                    "not an event stream: is it a chatrelay server?"
                )
            yield response
        finally:
            await response.aclose()

    def _accept(self, sse: ServerSentEvent) -> Event | _Done | None:
        """Record a frame; None for one already seen (a resume replays from its offset)."""
        decoded = decode_frame(sse)
        if decoded is None:
            return None
        seq, event = decoded
        if seq <= self.last_event_id:
            return None
        self.last_event_id = seq
        if isinstance(event, Text):
            self._texts.append(event.text)
        elif isinstance(event, Start):
            self.model = event.model
            self.stream_id = self.stream_id or event.stream_id
            self.conversation_id = event.conversation_id or self.conversation_id
            self._identified.set()
        elif isinstance(event, End):
            self.end = event
        elif isinstance(event, Error):
            self.error = event
        return event


# -- sync ------------------------------------------------------------------------------------


class ChatClient:
    """`AsyncChatClient` for code without asyncio: the same client, run on a private event
    loop in a background thread. Safe to use from several threads."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 5,
        backoff_s: float = 0.25,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = AsyncChatClient(
            base_url,
            key,
            timeout=timeout,
            max_retries=max_retries,
            backoff_s=backoff_s,
            headers=headers,
            transport=transport,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chatrelay-client", daemon=True
        )
        self._thread.start()
        self._closed = False

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the client's loop."""
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.submit(coroutine).result()

    def stream(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        conversation_id: str | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> ChatStream:
        """As `AsyncChatClient.stream`, iterated with a plain `for`."""
        return ChatStream(
            self,
            self.client.stream(messages, conversation_id=conversation_id, model=model, **extra),
        )

    def resume(self, stream_id: str, last_event_id: int = 0) -> ChatStream:
        return ChatStream(self, self.client.resume(stream_id, last_event_id))

    def stop(self, stream_id: str) -> str:
        return self.call(self.client.stop(stream_id))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.call(self._shutdown())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    async def _shutdown(self) -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        if others:
            await asyncio.wait(others)
        await self._loop.shutdown_asyncgens()  # streams left open
        await self.client.aclose()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ChatStream:
    """One reply, iterated synchronously; see `AsyncChatStream` (same attributes).

    A `KeyboardInterrupt` while waiting for the next event leaves the stream usable: `stop()`
    can be called, and iterating again goes on where it was.
    """

    def __init__(self, client: ChatClient, stream: AsyncChatStream) -> None:
        self._client = client
        self._stream = stream
        self._pending: concurrent.futures.Future[Event | None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._closed = False

    @property
    def stream_id(self) -> str | None:
        return self._stream.stream_id

    @property
    def conversation_id(self) -> str | None:
        return self._stream.conversation_id

    @property
    def model(self) -> str | None:
        return self._stream.model

    @property
    def error(self) -> Error | None:
        return self._stream.error

    @property
    def end(self) -> End | None:
        return self._stream.end

    @property
    def end_reason(self) -> str | None:
        return self._stream.end_reason

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def last_event_id(self) -> int:
        return self._stream.last_event_id

    @property
    def resumes(self) -> int:
        return self._stream.resumes

    @property
    def done(self) -> bool:
        return self._stream.done

    @property
    def content(self) -> str:
        return self._stream.content

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self._closed:
            raise StopIteration
        if self._pending is None:
            self._pending = self._client.submit(self._next())
        pending = self._pending
        try:
            event = pending.result()
        finally:
            if pending.done():  # not after a KeyboardInterrupt: the next call waits for it
                self._pending = None
        if event is None:
            raise StopIteration
        return event

    async def _next(self) -> Event | None:
        self._task = asyncio.current_task()
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            return None

    def text(self) -> str:
        """Read to the end; the reply's whole text. Raises `StreamError` on an error frame."""
        for _ in self:
            pass
        if self.error is not None:
            raise StreamError(self.error, self.content)
        return self.content

    def stop(self, wait_s: float = 10.0) -> str | None:
        """Stop the generation on the server (see `AsyncChatStream.stop`)."""
        return self._client.call(self._stream.stop(wait_s))

    def close(self) -> None:
        """Close the connection (a read in progress is cancelled)."""
        if self._closed:
            return
        self._closed = True
        self._client.call(self._aclose())

    async def _aclose(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        await self._stream.aclose()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
