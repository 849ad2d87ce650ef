"""The upstream SSE decoder on tricky input: frames split anywhere, CRLF, comments, multi-line."""

from __future__ import annotations

import pytest

from chatrelay.providers.sse_decoder import SSEDecoder

WIRE = (
    b": comment to ignore\n"
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n"
    b"event: content_block_delta\n"
    b"id: 7\n"
    b"retry: 100\n"
    b'data: {"text":"caf\xc3\xa9"}\n'
    b"\n"
    b"data: first line\n"
    b"data:second line\n"
    b"data:  two spaces\n"
    b"\n"
    b"event: only-event-no-data\n"
    b"\n"
    b"event:ping\n"
    b"data: {}\n"
    b"\n"
)
EXPECTED = [
    (b"message_start", b'{"type":"message_start"}'),
    (b"content_block_delta", b'{"text":"caf\xc3\xa9"}'),
    (b"message", b"first line\nsecond line\n two spaces"),
    (b"ping", b"{}"),
]


def decode(chunks: list[bytes]) -> list[tuple[bytes, bytes]]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)] + decoder.end()


def test_whole_body_in_one_chunk() -> None:
    assert decode([WIRE]) == EXPECTED


@pytest.mark.parametrize("line_end", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_ends(line_end: bytes) -> None:
    assert decode([WIRE.replace(b"\n", line_end)]) == EXPECTED


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_split_at_every_byte_position(line_end: bytes) -> None:
    wire = WIRE.replace(b"\n", line_end)
    for cut in range(1, len(wire)):
        assert decode([wire[:cut], wire[cut:]]) == EXPECTED, cut


def test_one_byte_at_a_time() -> None:
    wire = WIRE.replace(b"\n", b"\r\n")
    assert decode([wire[i : i + 1] for i in range(len(wire))]) == EXPECTED


def test_an_incomplete_last_frame_is_not_dispatched() -> None:
    assert decode([b"data: complete\n\ndata: cut off"]) == [(b"message", b"complete")]
