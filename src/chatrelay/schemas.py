"""The request body of `POST /ai/stream/chat`, as the seed guide's frontends send it.

Unknown extra fields are ignored (frontends send all sorts of things); known fields are
checked strictly, and every problem names the field it is about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import FieldProblem, InvalidField, MalformedJSON

Role = Literal["user", "assistant"]


class TextBlock(BaseModel):
    """A content block of type `text`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["text"]
    text: str = Field(min_length=1)


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: str
    content: str | list[TextBlock]

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role == "system":
            raise ValueError("'system' is not a message role here; send it in the `system` field")
        if role not in ("user", "assistant"):
            raise ValueError(f"must be 'user' or 'assistant', not {role!r}")
        return role

    @field_validator("content", mode="before")
    @classmethod
    def _non_empty(cls, content: Any) -> Any:
        if isinstance(content, str):
            if not content.strip():
                raise ValueError("must not be empty")
            return content
        if isinstance(content, list):
            if not content:
                raise ValueError("must not be an empty list")
            for index, block in enumerate(content):
                kind = block.get("type") if isinstance(block, dict) else None
                if kind != "text":
                    raise ValueError(
                        f"block {index}: only content blocks of type 'text' are supported,"
                        f" got {kind!r}"
                    )
                text = block.get("text")
                if not isinstance(text, str) or not text:
                    raise ValueError(f"block {index}: `text` must be a non-empty string")
            return content
        raise ValueError("must be a string or a list of content blocks")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content)


class ChatRequest(BaseModel):
    """The body of a chat request (`POST /ai/stream/chat`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(2048, ge=1, strict=True)
    # None means "not given": providers apply the guide's default of 0.7 where it is accepted.
    temperature: float | None = Field(None, ge=0.0, le=1.0, strict=True)
    conversation_id: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    system: str | list[TextBlock] | None = None
    metadata: dict[str, Any] | None = None

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "".join(block.text for block in self.system) or None


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a request body, raising errors that name each bad field."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidField([FieldProblem("body", "must be a JSON object")])
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidField(problems_from(exc.errors(include_url=False))) from None


def problems_from(errors: Sequence[Mapping[str, Any]]) -> list[FieldProblem]:
    """Turn pydantic's errors into `FieldProblem`s with JavaScript-style paths."""
    problems: list[FieldProblem] = []
    for error in errors:
        path = ""
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part in ("str", "list[TextBlock]"):
                continue  # union branch names say nothing to a client
            else:
                path += f".{part}" if path else str(part)
        message = error["msg"].removeprefix("Value error, ")
        path = path or "body"
        if problems and problems[-1].field == path:  # the branches of one union
            message = f"{problems.pop().message}, or {message[0].lower()}{message[1:]}"
        problems.append(FieldProblem(path, message))
    return problems
