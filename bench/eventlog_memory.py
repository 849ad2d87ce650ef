"""Memory the in-process event log costs per stream, beyond the events themselves.

    python bench/eventlog_memory.py [--streams 2000] [--frames 100]

Fills a `MemoryEventLog` with N streams of M text deltas (the events are shared objects, so
what tracemalloc counts is the log's own structures: the per-stream object, its event list,
its meta, the index entry) and prints the bytes per stream, next to the bytes of text a real
stream of that length would hold.
"""

from __future__ import annotations

import argparse
import asyncio
import tracemalloc

from chatrelay.eventlogs.memory import MemoryEventLog
from chatrelay.events import StreamMeta, TextDelta


async def measure(streams: int, frames_per_stream: int) -> tuple[float, int]:
    log = MemoryEventLog("bench", ttl_s=600)
    events = [TextDelta("word ") for _ in range(frames_per_stream)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for n in range(streams):
        stream_id = f"{n:032x}"
        await log.create(StreamMeta(stream_id, "seed", 0, "mock"), "public")
        for seq, event in enumerate(events, 1):
            await log.append(stream_id, seq, event)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / streams, sum(len(event.text.encode()) for event in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=100)
    args = parser.parse_args()
    per_stream, text = asyncio.run(measure(args.streams, args.frames))
    print(
        f"{args.streams} streams of {args.frames} deltas: {per_stream:.0f} B of log structures"
        f" per stream, beyond the {text} B of text each holds"
    )


if __name__ == "__main__":
    main()
