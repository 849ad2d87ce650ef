"""Automatic prompt caching for Anthropic requests: where to put `cache_control` breakpoints.

Anthropic caches the prompt up to a breakpoint (tools, then system, then messages, in that
order) and bills a cache write at 1.25× the input price and a read at 0.1×. A conversation
sends its whole history again each turn, so a breakpoint at the end of each turn's prompt
makes the next turn read all of it. The rules kept here:

- A request that carries breakpoints of its own is sent as it is: they are never moved,
  removed or added to (the client knows its prompt better).
- At most four breakpoints in a request; we place at most three:
  1. the end of the system prompt (or of the tools, when there is no system prompt), which
     many requests share;
  2. the end of the previous turn's prompt (the last user turn before the final one): the
     prefix the previous request wrote, so it is read back exactly;
  3. the end of the whole prompt, written for the next turn to read. Only for a prompt that
     has a next turn: one built from a stored conversation, or a client that sends more than
     one message (it keeps the history itself). A one-off request is not made to pay for a
     write nobody reads.
- A prefix shorter than the model's minimum cacheable length gets no breakpoint (Anthropic
  would not cache it; catalog.py has the minimums).
"""

from __future__ import annotations

import copy
from typing import Any

from ..tokens import content_tokens, input_tokens

# What a request may hold (Anthropic's limit).
MAX_BREAKPOINTS = 4


def has_breakpoints(request: dict[str, Any]) -> bool:
    """Whether the client placed any `cache_control` of its own."""
    system = request.get("system")
    blocks: list[Any] = [*request.get("tools", ()), *(system if isinstance(system, list) else ())]
    for message in request["messages"]:
        if isinstance(message["content"], list):
            blocks.extend(message["content"])
    return any(isinstance(b, dict) and "cache_control" in b for b in blocks)


def add_breakpoints(
    request: dict[str, Any], *, min_tokens: int, ttl: str, continues: bool
) -> dict[str, Any]:
    """`request` (a Messages API body) with breakpoints placed by the rules above; the
    caller's objects are not changed. `continues`: the prompt has a next turn."""
    if has_breakpoints(request):
        return request
    marker: dict[str, Any] = {"type": "ephemeral"}
    if ttl != "5m":
        marker["ttl"] = ttl
    out = dict(request)
    messages = out["messages"] = list(request["messages"])
    placed = 0
    # 1. The shared head: tools and system prompt.
    system = request.get("system")
    tools = request.get("tools") or []
    head = input_tokens(system, []) + sum(len(str(t)) // 4 for t in tools)
    if head >= min_tokens:
        if system:
            blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
            out["system"] = [*blocks[:-1], {**blocks[-1], "cache_control": marker}]
        else:
            out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": marker}]
        placed += 1
    # 2 and 3: the previous turn's end, and this one's.
    ends = [len(messages) - 1] if continues or len(messages) > 1 else []
    previous = _previous_user_turn(messages)
    if previous is not None:
        ends.insert(0, previous)
    for index in ends:
        if placed >= MAX_BREAKPOINTS:
            break
        if head + sum(content_tokens(m["content"]) for m in messages[: index + 1]) < min_tokens:
            continue
        messages[index] = _marked(messages[index], marker)
        placed += 1
    return out


def _previous_user_turn(messages: list[dict[str, Any]]) -> int | None:
    """The index of the last user turn before the final message, if any."""
    for index in range(len(messages) - 2, -1, -1):
        if messages[index]["role"] == "user":
            return index
    return None


def _marked(message: dict[str, Any], marker: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    blocks: list[dict[str, Any]] = (
        [{"type": "text", "text": content}] if isinstance(content, str) else content
    )
    # Copied: the stored history these dicts come from is not ours to change.
    last = copy.copy(blocks[-1])
    last["cache_control"] = marker
    return {**message, "content": [*blocks[:-1], last]}
