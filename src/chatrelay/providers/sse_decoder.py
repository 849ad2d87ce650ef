"""Decoding an upstream's Server-Sent Events from raw bytes, as cheaply as we can.

The SDKs build a typed object per event; relaying needs two fields of one event type, and
profiling showed the SDK's decoding cost more than everything else per delta (see
docs/ARCHITECTURE.md). This decoder follows the WHATWG rules the upstreams use: frames end at
a blank line, `data:` lines join with a newline, one space after the colon is dropped,
comment lines (`:`) and other fields are ignored, CRLF/CR line ends are accepted, and a frame
left incomplete when the body ends is discarded.
"""

from __future__ import annotations


class SSEDecoder:
    """Feed it body chunks; it returns the complete `(event, data)` frames so far."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # A trailing CR may be the first half of a CRLF split across chunks: keep it.
            held = buffer.endswith(b"\r")
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        if b"\n\n" not in buffer:
            self._buffer = buffer
            return []
        frames = buffer.split(b"\n\n")
        self._buffer = frames.pop()
        events: list[tuple[bytes, bytes]] = []
        for frame in frames:
            event = b"message"
            data: list[bytes] = []
            for line in frame.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[7:] if line[6:7] == b" " else line[6:]
            if data:
                events.append((event, b"\n".join(data)))
        return events

    def end(self) -> list[tuple[bytes, bytes]]:
        """Frames completed by the end of the body (a held CR turns out to be a line end)."""
        if not self._buffer.endswith(b"\r"):
            return []
        buffer, self._buffer = self._buffer[:-1] + b"\n", b""
        return self.feed(buffer)
