"""The project's own table of model facts (catalog.py): sampling, images, lifecycle."""

from __future__ import annotations

from datetime import date

import pytest

from chatrelay import catalog
from chatrelay.models import ModelSpec


@pytest.mark.parametrize(
    ("model", "accepts"),
    [
        ("claude-sonnet-4-6", True),
        ("claude-opus-4-6", True),
        ("claude-haiku-4-5-20251001", True),
        ("claude-3-5-sonnet-20241022", True),
        ("claude-3-opus-20240229", True),
        ("claude-opus-4-20250514", True),
        ("claude-opus-4-7", False),
        ("claude-opus-5", False),
        ("claude-sonnet-5-5", False),
        ("claude-haiku-5-5", False),
        ("claude-fable-5-2", False),  # an id no row names gets no temperature
        ("claude-mythos-preview", False),
    ],
)
def test_which_claude_models_accept_a_temperature(model: str, accepts: bool) -> None:
    assert catalog.accepts_sampling("anthropic", model) is accepts
    assert ModelSpec("a", "anthropic", model).accepts_sampling is accepts


@pytest.mark.parametrize(
    ("model", "accepts"),
    [
        ("gpt-4o-mini", True),
        ("llama3.2", True),
        ("o3-mini", False),
        ("openai/o4-mini", False),
        ("gpt-5.1", False),
        ("openai/gpt-5", False),
    ],
)
def test_openai_reasoning_models_get_no_temperature(model: str, accepts: bool) -> None:
    assert catalog.accepts_sampling("openai", model) is accepts


def test_an_alias_overrides_the_catalog() -> None:
    assert ModelSpec("a", "anthropic", "claude-sonnet-5-5", temperature=True).accepts_sampling
    assert not ModelSpec("a", "anthropic", "claude-sonnet-4-6", vision=False).accepts_images
    assert ModelSpec("a", "openai", "llava", vision=True).accepts_images


def test_claude_accepts_images_and_openai_compatible_servers_opt_in() -> None:
    assert ModelSpec("a", "anthropic", "claude-sonnet-5-5").accepts_images
    assert not ModelSpec("a", "openai", "llama3.2").accepts_images
    assert ModelSpec("a", "mock", "mock").accepts_images


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2027, 1, 21), "claude-opus-4-5 is deprecated and reaches end-of-life on 2027-01-22"),
        (
            date(2027, 1, 22),
            "claude-opus-4-5 was retired on 2027-01-22; the provider may refuse it",
        ),
    ],
)
def test_a_deprecated_model_becomes_retired_on_its_end_of_life(today: date, expected: str) -> None:
    assert catalog.lifecycle_warning("anthropic", "claude-opus-4-5", today) == expected


def test_current_models_and_other_providers_carry_no_lifecycle_warning() -> None:
    assert catalog.lifecycle_warning("anthropic", "claude-sonnet-5-5", date(2026, 12, 3)) is None
    assert catalog.lifecycle_warning("openai", "claude-opus-4-5", date(2026, 12, 3)) is None


def test_every_row_says_when_it_was_noted_where_it_comes_from_and_answers_something() -> None:
    for row in catalog.ROWS:
        assert row.source.strip(), row
        assert date(2026, 1, 1) <= row.noted <= date.today(), row
        answers = (row.sampling, row.images, row.structured, row.cache_min, row.retires_on)
        assert answers != (None,) * 5, row


@pytest.mark.parametrize(
    ("provider", "model", "takes_a_schema"),
    [
        ("anthropic", "claude-sonnet-5-5", True),
        ("anthropic", "claude-haiku-4-5", True),
        ("anthropic", "claude-3-7-sonnet-latest", False),
        ("anthropic", "claude-sonnet-4-20250514", False),
        ("openai", "gpt-4o", True),
    ],
)
def test_which_models_take_a_json_schema_for_their_output(
    provider: catalog.Provider, model: str, takes_a_schema: bool
) -> None:
    assert catalog.accepts_output_schema(provider, model) is takes_a_schema
