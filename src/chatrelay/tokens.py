"""Token estimates, for where no upstream count is known (yet): 4 characters a token.

One place for the estimate, so that the history budget, the quota reservation, the usage of
a reply the upstream did not count and the mock provider's own counts all agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 4
# An image costs about this many tokens whatever its size (for the estimates only).
IMAGE_TOKENS = 1600


def chars_to_tokens(chars: int) -> int:
    """The estimate for `chars` characters of text."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def _sizes(content: Any) -> tuple[int, int]:
    """(characters of text, images) of one message's content: a string or blocks."""
    if isinstance(content, str):
        return len(content), 0
    chars = images = 0
    for block in content:
        if block.get("type") == "image":
            images += 1
        else:
            chars += len(block.get("text", ""))
    return chars, images


def content_tokens(content: Any) -> int:
    """One message's content: a string, or text and image blocks."""
    chars, images = _sizes(content)
    return chars_to_tokens(chars) + images * IMAGE_TOKENS


def input_tokens(
    system: str | list[dict[str, Any]] | None, messages: Iterable[Mapping[str, Any]]
) -> int:
    """A whole upstream request's input: its system prompt and every message."""
    chars, images = _sizes(system or "")
    for message in messages:
        more_chars, more_images = _sizes(message["content"])
        chars += more_chars
        images += more_images
    return chars_to_tokens(chars) + images * IMAGE_TOKENS
