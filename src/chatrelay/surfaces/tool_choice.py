"""OpenAI's `tool_choice` and `parallel_tool_calls` (Chat Completions and the Responses API)
as the Messages API's `tool_choice`, which the project's request holds."""

from __future__ import annotations

from typing import Any

from ..errors import FieldProblem, InvalidField


def from_openai(
    choice: str | dict[str, Any] | None,
    parallel: bool | None,
    offered: list[Any],
    named: str,
) -> dict[str, Any] | None:
    """`choice` names a function as Chat Completions does (`{type, function: {name}}`) or as
    the Responses API does (`{type, name}`); `offered` are the tools' names, `named` the shape
    the error message shows."""
    if choice is None and parallel is not False:
        return None
    if choice is None or choice == "auto":
        picked: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        picked = {"type": "any"}
    elif choice == "none":
        picked = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        if name not in offered:
            raise InvalidField(
                [FieldProblem("tool_choice", f"names {name!r}, which is not one of `tools`")]
            )
        picked = {"type": "tool", "name": name}
    else:
        why = f"must be 'auto', 'required', 'none' or {named}"
        raise InvalidField([FieldProblem("tool_choice", why)])
    if picked["type"] in ("any", "tool") and not offered:
        raise InvalidField([FieldProblem("tool_choice", f"{choice!r} needs `tools`")])
    if parallel is False and offered and picked["type"] != "none":
        picked["disable_parallel_tool_use"] = True
    return picked
