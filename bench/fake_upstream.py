"""`python -m tests.fakes.anthropic_upstream`, on uvloop: the benchmark's upstream.

Same arguments and behaviour as the fake's own ``main()`` (run from the repo root)::

    python bench/fake_upstream.py --port 0 --deltas 100 --interval 0.04

Why: on this 2-core machine the fake must stay cheap next to the relay. On uvloop it costs about
a quarter less CPU per delta than on the stock loop and keeps its 40 ms ticks tighter
(measured at C=200: 17 vs 22 µs/delta; stream duration p50 4.03 vs 4.12 s for a nominal
3.96 s). The fake's protocol asserts that its transport is an ``asyncio.Transport``, which
uvloop's transports are not (they implement the same interface without subclassing it), so
each one is handed over in a thin ``asyncio.Transport`` subclass that delegates every call.
Nothing else of the fake changes. ``relay_bench.py --fake-loop asyncio`` runs the fake as it
ships instead.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class TransportAdapter(asyncio.Transport):
    """An ``asyncio.Transport`` that forwards every call to another transport (uvloop's)."""

    __slots__ = ("_t",)

    def __init__(self, transport: Any) -> None:
        super().__init__()
        self._t = transport

    def write(self, data: Any) -> None:
        self._t.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._t.writelines(list_of_data)

    def write_eof(self) -> None:
        self._t.write_eof()

    def can_write_eof(self) -> bool:
        return bool(self._t.can_write_eof())

    def close(self) -> None:
        self._t.close()

    def abort(self) -> None:
        self._t.abort()

    def is_closing(self) -> bool:
        return bool(self._t.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._t.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._t.pause_reading()

    def resume_reading(self) -> None:
        self._t.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._t.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._t.get_write_buffer_size())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._t.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._t.get_protocol()  # type: ignore[no-any-return]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import uvloop
    from tests.fakes import anthropic_upstream as fake

    original = fake._Conn.connection_made

    def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
        original(self, TransportAdapter(transport))

    fake._Conn.connection_made = connection_made  # type: ignore[method-assign]
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    fake.main()


if __name__ == "__main__":
    main()
