"""What chatrelay knows of upstream model ids: which accept sampling parameters, which accept
images, which are deprecated or retired.

This is the project's own table, not the SDKs' changing lists: each row says when it was
noted and where it comes from, and the tests use ids from it. Rows are read top to bottom;
for each question the first row whose pattern matches the id and that answers the question
wins, so specific rows come before a family's catch-all. A pattern is an `fnmatch` glob.
An id no row answers gets the conservative default: no sampling parameters (a new model then
loses a temperature rather than failing every request), images for Claude only, no warning.

An alias in the models file overrides the first two answers (`temperature`, `vision`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatchcase
from typing import Literal

Provider = Literal["anthropic", "openai"]

_DEPRECATIONS = "https://docs.anthropic.com/en/docs/about-claude/model-deprecations"
_SDK_LIST = "anthropic SDK 2.12.0-2.16.0, DEPRECATED_MODELS"
_SAMPLING = (
    "Anthropic Messages API: models from Claude Opus 4.7, Sonnet 5 and Haiku 5.5 on answer 400"
    " to temperature/top_p/top_k"
)
_VISION = "https://docs.anthropic.com/en/docs/build-with-claude/vision (every Claude model)"
_REASONING = "OpenAI Chat Completions: reasoning models accept only the default temperature"
_STRUCTURED = (
    "https://platform.claude.com/docs/en/build-with-claude/structured-outputs: Claude Opus 4.1,"
    " Sonnet 4.5, Haiku 4.5 and later take `output_config.format`"
)
_CACHING = (
    "https://platform.claude.com/docs/en/build-with-claude/prompt-caching: minimum cacheable"
    " prompt length per model"
)
_OPENAI_STRUCTURED = "OpenAI-compatible servers take `response_format` (json_schema, json_object)"
_OPENAI_IMAGES = "chatrelay policy: OpenAI-compatible servers vary; an alias opts in (vision)"


@dataclass(frozen=True, slots=True)
class Row:
    provider: Provider
    pattern: str
    noted: date
    source: str
    sampling: bool | None = None  # accepts temperature, top_p and top_k
    images: bool | None = None  # accepts image content blocks
    structured: bool | None = None  # accepts a JSON schema for its output (natively)
    cache_min: int | None = None  # the shortest prompt (tokens) its cache keeps
    retires_on: date | None = None  # end of life: deprecated before it, retired from it


NOTED = date(2026, 12, 3)

ROWS: tuple[Row, ...] = (
    # Lifecycle, from Anthropic's deprecation notices as the SDK carried them.
    Row("anthropic", "claude-opus-4-5", NOTED, _SDK_LIST, retires_on=date(2027, 1, 22)),
    Row("anthropic", "claude-opus-4-5-20251101", NOTED, _SDK_LIST, retires_on=date(2027, 1, 22)),
    Row("anthropic", "claude-sonnet-4-5", NOTED, _SDK_LIST, retires_on=date(2026, 11, 30)),
    Row("anthropic", "claude-sonnet-4-5-20250929", NOTED, _SDK_LIST, retires_on=date(2026, 11, 30)),
    Row("anthropic", "claude-mythos-preview", NOTED, _DEPRECATIONS, retires_on=date(2026, 6, 30)),
    # Sampling parameters: the Claude models that still accept them.
    Row("anthropic", "claude-3-*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-opus-4-0*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-opus-4-2025*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-opus-4-1*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-opus-4-5*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-opus-4-6*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-sonnet-4-0*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-sonnet-4-2025*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-sonnet-4-5*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-sonnet-4-6*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-haiku-4-5*", NOTED, _SAMPLING, sampling=True),
    Row("anthropic", "claude-*", NOTED, _SAMPLING, sampling=False),
    Row("anthropic", "*", NOTED, _VISION, images=True),
    # Structured outputs: the Claude models from before it do not take it.
    Row("anthropic", "claude-3-*", NOTED, _STRUCTURED, structured=False),
    Row("anthropic", "claude-opus-4-0*", NOTED, _STRUCTURED, structured=False),
    Row("anthropic", "claude-opus-4-2025*", NOTED, _STRUCTURED, structured=False),
    Row("anthropic", "claude-sonnet-4-0*", NOTED, _STRUCTURED, structured=False),
    Row("anthropic", "claude-sonnet-4-2025*", NOTED, _STRUCTURED, structured=False),
    Row("anthropic", "claude-*", NOTED, _STRUCTURED, structured=True),
    # Prompt caching: the shortest prompt each model's cache keeps.
    Row("anthropic", "claude-opus-4-5*", NOTED, _CACHING, cache_min=4096),
    Row("anthropic", "claude-haiku-4-5*", NOTED, _CACHING, cache_min=4096),
    Row("anthropic", "claude-3-haiku*", NOTED, _CACHING, cache_min=2048),
    Row("anthropic", "claude-3-5-haiku*", NOTED, _CACHING, cache_min=2048),
    Row("anthropic", "claude-*", NOTED, _CACHING, cache_min=1024),
    # OpenAI's reasoning models (also under OpenRouter's `openai/` prefix).
    Row("openai", "o[0-9]*", NOTED, _REASONING, sampling=False),
    Row("openai", "gpt-5*", NOTED, _REASONING, sampling=False),
    Row("openai", "gpt-6*", NOTED, _REASONING, sampling=False),
    Row("openai", "*", NOTED, _REASONING, sampling=True),
    Row("openai", "*", NOTED, _OPENAI_IMAGES, images=False),
    Row("openai", "*", NOTED, _OPENAI_STRUCTURED, structured=True),
)


def _answer(provider: Provider, model: str, field: str) -> Row | None:
    model = model.removeprefix("openai/") if provider == "openai" else model
    for row in ROWS:
        if (
            row.provider == provider
            and getattr(row, field) is not None
            and fnmatchcase(model, row.pattern)
        ):
            return row
    return None


def accepts_sampling(provider: Provider, model: str) -> bool:
    row = _answer(provider, model, "sampling")
    return bool(row and row.sampling)


def accepts_images(provider: Provider, model: str) -> bool:
    row = _answer(provider, model, "images")
    return bool(row and row.images)


def accepts_output_schema(provider: Provider, model: str) -> bool:
    row = _answer(provider, model, "structured")
    return bool(row and row.structured)


def cache_min_tokens(model: str) -> int:
    """The shortest prompt (in tokens) a Claude model's prompt cache keeps; 1024 when unknown
    (a shorter prefix is not cached, which costs nothing)."""
    row = _answer("anthropic", model, "cache_min")
    return row.cache_min if row and row.cache_min else 1024


def retires_on(provider: Provider, model: str) -> date | None:
    row = _answer(provider, model, "retires_on")
    return row.retires_on if row else None


def lifecycle_warning(provider: Provider, model: str, today: date) -> str | None:
    """What a client is told about a deprecated or retired model id, if anything."""
    end = retires_on(provider, model)
    if end is None:
        return None
    if today < end:
        return f"{model} is deprecated and reaches end-of-life on {end.isoformat()}"
    return f"{model} was retired on {end.isoformat()}; the provider may refuse it"
