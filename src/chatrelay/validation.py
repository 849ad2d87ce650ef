"""Validation errors in the project's own words, each naming its field.

pydantic describes its own machinery ("List should have at least 1 item after validation, not
0", "Input should be a valid integer", locations like `system.list[TextBlock]`); a client is
told what is wrong with the field it sent, as the rest of the API says it ("must not be
empty", "must be a whole number"), at a JavaScript-style path (`messages[0].content`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FieldProblem

# Messages that need nothing from the error's context.
_FIXED = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "string_type": "must be a string",
    "string_unicode": "must be valid Unicode text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "list_type": "must be a list",
    "none_required": "must be null",
    "json_invalid": "is not valid JSON",
    "json_type": "must be JSON text",
    "date_type": "must be a date (YYYY-MM-DD)",
    "date_parsing": "must be a date (YYYY-MM-DD)",
    "date_from_datetime_parsing": "must be a date (YYYY-MM-DD)",
    "datetime_type": "must be a date or an ISO 8601 time",
    "datetime_parsing": "must be a date or an ISO 8601 time",
    "datetime_from_date_parsing": "must be a date or an ISO 8601 time",
    "url_type": "must be a URL",
    "url_parsing": "must be a URL",
}

# What the patterns of our fields mean.
_PATTERNS = {
    r"^https?://": "must be an http:// or https:// URL",
    r"^[^\x00]*$": "must not contain NUL characters",
}

# pydantic's sentence openings, for error types the tables above do not know.
_OPENING = re.compile(r"^(?:Input|Value|String|List|Dictionary|Data|Object|Tuple|Set) should ")

# Union branches and validators in pydantic's locations (`str`, `list[TextBlock]`,
# `ThinkingConfig`, `tagged-union[...]`, `function-after[...]`): they say nothing to a client.
_LABEL = re.compile(
    r"^(?:str|int|float|bool|bytes|none|[A-Z]\w*"
    r"|(?:function|json-or-python|lax|strict|nullable|chain|constrained)-.*|tagged-union.*|.*\[.*)$"
)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _given(value: Any) -> str:
    """`, not 'bot'` for a short scalar the client sent; nothing for anything else."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, str | int | float) and len(repr(value)) <= 40:
        return f", not {value!r}"
    return ""


def plain_message(error: Mapping[str, Any]) -> str:
    """One pydantic error (a dict of `ValidationError.errors()`) as the project says it."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind in _FIXED:
        return _FIXED[kind]
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "assertion_error":
        return str(error["msg"]).removeprefix("Assertion failed, ")
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        actual = ctx.get("actual_length")
        if kind == "too_short" and bound == 1:
            return "must not be empty"
        least = "at least" if kind == "too_short" else "at most"
        items = "item" if bound == 1 else "items"
        return f"must have {least} {bound} {items}" + (
            f", not {actual}" if actual is not None else ""
        )
    if kind == "string_too_short":
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"must be at least {ctx.get('min_length')} characters long"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        return _PATTERNS.get(str(ctx.get("pattern")), "is not in the expected form")
    bounds = {
        "greater_than": ("gt", "must be greater than"),
        "greater_than_equal": ("ge", "must be at least"),
        "less_than": ("lt", "must be less than"),
        "less_than_equal": ("le", "must be at most"),
        "multiple_of": ("multiple_of", "must be a multiple of"),
    }
    if kind in bounds:
        key, words = bounds[kind]
        return f"{words} {_number(ctx.get(key))}"
    if kind in ("literal_error", "enum"):
        return f"must be {ctx.get('expected')}{_given(error.get('input'))}"
    if kind == "union_tag_invalid":
        return f"must be {ctx.get('expected_tags')}{_given(ctx.get('tag'))}"
    if kind == "union_tag_not_found":
        discriminator = str(ctx.get("discriminator", "type")).strip("'")
        return f"needs a `{discriminator}` field"
    # Anything else: pydantic's sentence, said as ours are.
    message = _OPENING.sub("must ", str(error["msg"])).replace(" after validation", "")
    return message[:1].lower() + message[1:]


@dataclass(slots=True)
class _Located:
    path: str
    message: str
    # The paths where this error went into a branch of a union (or a tagged union's member).
    branches: list[str]
    # It failed at the root of a union branch: the value is not of that branch's type.
    wrong_branch: bool


def _locate(error: Mapping[str, Any]) -> _Located:
    loc: Sequence[Any] = error["loc"]
    path = ""
    branches: list[str] = []
    wrong_branch = False
    skip_tag = False  # the next name is a tagged union's tag (`image`), not a field
    for position, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        last = position == len(loc) - 1
        # The last name of an unknown field is the client's own key, whatever it looks like.
        if _LABEL.match(str(part)) and not (last and error["type"] == "extra_forbidden"):
            branches.append(path)
            wrong_branch = last
            skip_tag = skip_tag or "tagged-union" in str(part)
            continue
        if skip_tag:
            skip_tag = False
            continue
        path += f".{part}" if path else str(part)
    return _Located(path or "body", plain_message(error), branches, wrong_branch)


def _either(first: str, second: str) -> str:
    if first.startswith("must be ") and second.startswith("must be "):
        return f"{first}, or {second.removeprefix('must be ')}"
    return f"{first}, or {second}"


def problems_from(errors: Sequence[Mapping[str, Any]]) -> list[FieldProblem]:
    """pydantic's errors (`ValidationError.errors()`) as `FieldProblem`s in our own words."""
    located = [_locate(error) for error in errors]
    # A value that is of one branch's type but wrong inside it (a list with a bad block) is
    # told what is wrong inside, not that it is not of the other branches' types.
    went_further = {root for item in located if not item.wrong_branch for root in item.branches}
    problems: list[FieldProblem] = []
    for item in located:
        if item.wrong_branch and item.path in went_further:
            continue
        if problems and problems[-1].field == item.path:
            if item.message in problems[-1].message:
                continue
            # The branches of one union, none of which the value fits.
            item.message = _either(problems.pop().message, item.message)
        problems.append(FieldProblem(item.path, item.message))
    return problems
