"""The wire formats, at the edge: each surface is a request parser and an encoder.

A stream's events (`events.StreamEvent`, numbered 1, 2, 3, …) are the same whatever surface
started it; each reader encodes them with the encoder of that surface (`StreamMeta.surface`).
A frame's SSE id is its event's number; the last event (`End` or `Cut`) may take several
frames, numbered on from it (nothing follows it); any other event that takes several frames
(the Responses API's first text delta opens its item too) gives them all its number. So a
resume after frame N, in any surface, replays the events (the encoder needs what came before,
e.g. the answering model) and sends only the frames after N.

    seed       `POST /ai/stream/chat`, the seed guide's frames       (surfaces/seed.py)
    openai     `POST /v1/chat/completions`, chat.completion.chunk    (surfaces/openai.py)
    anthropic  `POST /v1/messages`, the Messages API's events        (surfaces/anthropic.py)
    responses  `POST /v1/responses`, the Responses API's events      (surfaces/responses.py)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Protocol

from ..errors import StreamEnded
from ..events import TERMINAL, StreamEvent, StreamMeta
from . import anthropic, openai, responses, seed

if TYPE_CHECKING:
    from ..streams import Reader


class Encoder(Protocol):
    """One reader's encoder: the frames of event `seq` (several only for the last event)."""

    def encode(self, seq: int, event: StreamEvent) -> bytes: ...


ENCODERS: dict[str, Callable[[StreamMeta], Encoder]] = {
    seed.NAME: seed.SeedEncoder,
    openai.NAME: openai.ChunkEncoder,
    anthropic.NAME: anthropic.MessagesEncoder,
    responses.NAME: responses.EventEncoder,
}


def encoder_for(meta: StreamMeta) -> Encoder:
    return ENCODERS[meta.surface](meta)


async def frames(reader: Reader, after: int = 0) -> AsyncGenerator[bytes, None]:
    """The reader's events as its surface's frames, those after frame `after` only; what
    piled up goes out in one write."""
    encode = encoder_for(reader.meta).encode
    try:
        async for first, events in reader:
            if first > after:
                if len(events) == 1:
                    chunk = encode(first, events[0])
                else:
                    chunk = b"".join([encode(first + i, e) for i, e in enumerate(events)])
                if chunk:  # an event a surface has no frame for (thinking, in OpenAI's)
                    yield chunk
                continue
            out = []
            for offset, event in enumerate(events):
                seq = first + offset
                data = encode(seq, event)  # encoded all the same: the encoder keeps state
                if seq > after:
                    out.append(data)
                elif isinstance(event, TERMINAL):
                    out.append(_frames_after(data, seq, after))
            if chunk := b"".join(out):
                yield chunk
    finally:
        await reader.aclose()


async def resume(reader: Reader, after: int) -> AsyncGenerator[bytes, None]:
    """`frames()` for a resume: a finished stream with nothing after `after` is refused
    (`StreamEnded`) before any status is sent, as an empty 200 would read as a cut."""
    stream = frames(reader, after)
    if not reader.info.finished:
        return stream
    first = await anext(stream, None)
    if first is None:
        await stream.aclose()
        raise StreamEnded(reader.meta.stream_id, after)
    return _prefixed(first, stream)


async def _prefixed(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    async with aclosing(rest):
        yield first
        async for chunk in rest:
            yield chunk


def _frames_after(data: bytes, seq: int, after: int) -> bytes:
    """Of the frames `data` (numbered from `seq`), those numbered after `after`."""
    parts = data.split(b"\n\n")[:-1]  # every frame ends with a blank line; JSON has no "\n"
    return b"".join(part + b"\n\n" for part in parts[after - seq + 1 :])
