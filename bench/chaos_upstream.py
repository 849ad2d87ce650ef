"""The chaos run's upstream: the fake Anthropic API, each reply steered by its own prompt.

`bench/chaos.py` writes every user message as a `ReplySpec` (`ReplySpec.prompt()`), and this
fake answers the request whose last user message is one with exactly the deltas that spec
names (`ReplySpec.deltas()`): the chaos run computes the text every reply must have without
asking anyone, so a stream or a stored reply can be held to it byte for byte. A spec may also
ask for an upstream error after N deltas. Requests without a spec get the fake's default reply.

    python bench/chaos_upstream.py --port 0   # prints "ChaosUpstream listening on http://..."

Run from the repo root (it imports `tests.fakes.anthropic_upstream`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.anthropic_upstream import (  # noqa: E402 - needs ROOT on sys.path
    FakeAnthropic,
    Scenario,
    serve_until_signalled,
)

# Pieces a reply is made of: multi-byte letters, an emoji, a newline, a tab, quotes and a
# backslash, so any re-encoding, splitting or merging on the way shows as a wrong text.
VOCABULARY = (
    "alpha ",
    "βήτα ",
    "γάμμα ",
    "naïve ",
    "日本語 ",
    "emoji🙂 ",
    "line\n",
    "tab\t",
    'quote" ',
    "back\\slash ",
    "zeta, ",
    "end. ",
)

_SPEC = re.compile(
    r"^chaos turn (?P<turn>\S+): words=(?P<words>\d+) interval_ms=(?P<interval>\d+)"
    r" fail_after=(?P<fail>\d+|-)$"
)


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """What the upstream sends for one user message, named in the message itself."""

    turn: str  # unique per user message of the run (e.g. "s7-c12.3", "s7-v1-5")
    words: int  # text deltas
    interval_ms: int  # between deltas
    fail_after: int | None = None  # an `overloaded_error` event after this many deltas

    def prompt(self) -> str:
        fail = "-" if self.fail_after is None else str(self.fail_after)
        return (
            f"chaos turn {self.turn}: words={self.words} interval_ms={self.interval_ms}"
            f" fail_after={fail}"
        )

    @classmethod
    def parse(cls, prompt: str) -> ReplySpec | None:
        match = _SPEC.match(prompt)
        if match is None:
            return None
        fail = match["fail"]
        return cls(
            match["turn"],
            int(match["words"]),
            int(match["interval"]),
            None if fail == "-" else int(fail),
        )

    def deltas(self) -> list[str]:
        """Every delta of the whole reply (seeded by the turn id: the same on every call)."""
        rng = random.Random(f"chaos-reply:{self.turn}")
        pieces = [rng.choice(VOCABULARY) for _ in range(self.words)]
        pieces[0] = f"[{self.turn}] "  # the reply names its turn: a reply of another shows
        return pieces

    @property
    def text(self) -> str:
        """The whole reply, as a client must see it when the stream completes."""
        return "".join(self.deltas())

    @property
    def text_before_failure(self) -> str:
        """What precedes the upstream error (the whole text if it does not fail)."""
        return "".join(self.deltas()[: self.fail_after])

    def scenario(self) -> Scenario:
        return Scenario(
            deltas=self.deltas(),
            interval=self.interval_ms / 1000,
            error_event_after=self.fail_after,
        )


def last_user_text(body: dict[str, Any]) -> str:
    """The last user message of a Messages API request body, as text."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(
                    str(block.get("text", "")) for block in content if isinstance(block, dict)
                )
    return ""


class ChaosUpstream(FakeAnthropic):
    """The fake, with each request's scenario taken from the spec in its last user message."""

    def _handle(
        self, conn: Any, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> None:
        # The fake serves queued scenarios first: queue this request's own just before it
        # takes one (one loop, so nothing can come in between).
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        served = method == "POST" and target.split("?", 1)[0].endswith(self.path_suffix)
        if served and isinstance(body, dict):
            spec = ReplySpec.parse(last_user_text(body))
            if spec is not None:
                self.enqueue(spec.scenario())
        super()._handle(conn, method, target, headers, raw)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    asyncio.run(serve_until_signalled(ChaosUpstream(args.host, args.port, keep_requests=200)))


if __name__ == "__main__":
    main()
