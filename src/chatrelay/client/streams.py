"""The async client: one reply as an async iterator of events, resumed when the connection
drops, stoppable."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

from .events import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    MAX_BACKOFF_S,
    APIError,
    ConnectionFailed,
    Done,
    End,
    Error,
    Event,
    ProtocolError,
    ResumeFailed,
    Start,
    StreamError,
    Text,
    Usage,
    api_error,
    decode_frame,
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
                            if isinstance(event, Done):
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

    def _accept(self, sse: ServerSentEvent) -> Event | Done | None:
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
