"""A prompt cache as Anthropic documents it, for the loopback fake (and the benchmark).

https://platform.claude.com/docs/en/build-with-claude/prompt-caching:
- the prompt is tools, then system, then messages; a `cache_control` block marks the end of
  a prefix to cache (at most four in a request);
- at each breakpoint the cache is checked for that prefix, and for the prefixes ending at the
  20 blocks before it; the longest hit is read (billed at 0.1× the input price);
- the prefix up to the last breakpoint is then written (1.25×), from where the hit ended;
- a prefix shorter than the model's minimum (1024 tokens here) is neither read nor written;
- what is after the last breakpoint is ordinary input.
Tokens are counted as chatrelay estimates them (4 characters each), which is all the fake
needs: the counts only have to be consistent from one request to the next.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

LOOKBACK = 20
MIN_TOKENS = 1024


def _blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every block of the prompt, in cache order."""
    blocks: list[dict[str, Any]] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str):
        blocks.append({"type": "text", "text": system})
    elif isinstance(system, list):
        blocks.extend(system)
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        for block in content or []:
            blocks.append({**block, "_role": message.get("role")})
    return blocks


def _tokens(block: dict[str, Any]) -> int:
    text = block.get("text")
    if not isinstance(text, str):
        text = json.dumps({k: v for k, v in block.items() if k != "cache_control"})
    return max(1, len(text) // 4)


class PromptCache:
    """Prefixes written by earlier requests, by the hash of their blocks (TTL honoured)."""

    def __init__(self, min_tokens: int = MIN_TOKENS) -> None:
        self.min_tokens = min_tokens
        self._entries: dict[str, float] = {}  # prefix hash -> expiry (time.monotonic)

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        """This request's usage split as Anthropic reports it; writes what it caches."""
        blocks = _blocks(body)
        hashes: list[str] = []
        totals: list[int] = []  # tokens of the prefix ending at each block
        digest = hashlib.sha256()
        running = 0
        for block in blocks:
            clean = {k: v for k, v in block.items() if k != "cache_control"}
            digest.update(json.dumps(clean, sort_keys=True).encode())
            hashes.append(digest.copy().hexdigest())
            running += _tokens(block)
            totals.append(running)
        total = running
        breakpoints = [i for i, block in enumerate(blocks) if "cache_control" in block]
        now = time.monotonic()
        read_end = -1  # index of the last block of the longest prefix read
        for point in breakpoints:
            for index in range(point, max(-1, point - LOOKBACK - 1), -1):
                if self._entries.get(hashes[index], 0) > now and index > read_end:
                    read_end = index
                    break
        read = totals[read_end] if read_end >= 0 else 0
        written = 0
        if breakpoints and totals[breakpoints[-1]] >= self.min_tokens:
            last = breakpoints[-1]
            if last > read_end:
                written = totals[last] - read
            for point in breakpoints:
                if totals[point] >= self.min_tokens:
                    ttl = blocks[point]["cache_control"].get("ttl", "5m")
                    self._entries[hashes[point]] = now + (3600 if ttl == "1h" else 300)
        return {
            "input_tokens": total - read - written,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
        }
