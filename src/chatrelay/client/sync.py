"""The synchronous facade: the async client on an event loop of its own, in a thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx

from .events import DEFAULT_TIMEOUT, DEFAULT_URL, End, Error, Event, StreamError, Usage
from .streams import AsyncChatClient, AsyncChatStream

T = TypeVar("T")


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
