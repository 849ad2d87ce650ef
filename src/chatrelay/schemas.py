"""The request body of the chat endpoints (`/ai/stream/chat`, `/ai/chat`), as the seed's
frontends send it, plus the Anthropic extras (images, stop sequences, top_p/top_k, thinking).

Unknown extra fields are ignored (frontends send all sorts of things); known fields are
checked strictly, and every problem names the field it is about. Content blocks use the
Anthropic shape; the OpenAI-compatible surface translates into it.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import FieldProblem, InvalidField, MalformedJSON
from .validation import problems_from as problems_from

ModelT = TypeVar("ModelT", bound=BaseModel)


class CacheControl(BaseModel):
    """A prompt cache breakpoint, as the Messages API takes it: the prompt up to and including
    this block is cached (kept as the client placed it, never moved)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(BaseModel):
    """A content block of type `text`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["text"]
    text: str = Field(min_length=1)
    cache_control: CacheControl | None = None


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["base64", "url"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"] | None = None
    data: str | None = Field(None, min_length=1)
    url: str | None = Field(None, pattern=r"^https?://")


class ImageBlock(BaseModel):
    """A content block of type `image`: base64 data with its media type, or a URL."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None

    @field_validator("source")
    @classmethod
    def _complete(cls, source: ImageSource) -> ImageSource:
        if source.type == "base64" and (source.data is None or source.media_type is None):
            raise ValueError("a base64 image needs `media_type` and `data`")
        if source.type == "base64" and source.data is not None and source.media_type:
            _check_image_data(source.data, source.media_type)
        if source.type == "url" and source.url is None:
            raise ValueError("a url image needs `url`")
        return source


# The first bytes of each accepted format (WebP: "RIFF", 4 bytes of size, "WEBP").
_SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}


def _check_image_data(data: str, media_type: str) -> None:
    """Refuse what the provider would refuse anyway, before anything is stored or sent."""
    try:
        decoded = binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        raise ValueError("`source.data` is not valid base64") from None
    matches = decoded.startswith(_SIGNATURES[media_type])
    if media_type == "image/webp":
        matches = matches and decoded[8:12] == b"WEBP"
    if not matches:
        raise ValueError(f"`source.data` is not a {media_type.removeprefix('image/')} image")


class ToolUseBlock(BaseModel):
    """A content block of type `tool_use`: a tool call an assistant turn made."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["tool_use"]
    id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ThinkingBlock(BaseModel):
    """A content block of type `thinking`: an assistant turn's signed reasoning, which Claude
    needs back when it thought before calling tools."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["thinking"]
    thinking: str
    signature: str = Field(min_length=1)


ResultBlock = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(BaseModel):
    """A content block of type `tool_result`: what a tool call returned, in a user turn."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1, max_length=200)
    content: str | list[ResultBlock] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(block.text for block in self.content if isinstance(block, TextBlock))


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock,
    Field(discriminator="type"),
]
BLOCK_TYPES = ("text", "image", "tool_use", "tool_result", "thinking")
# Which role's turns may hold each kind of tool (and thinking) block.
_BLOCK_ROLES = {"tool_use": "assistant", "tool_result": "user", "thinking": "assistant"}

NO_USER_MESSAGE = "must contain at least one user message"


class ChatMessage(BaseModel):
    """One turn of the conversation."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: str
    content: str | list[ContentBlock]

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
                if kind not in BLOCK_TYPES:
                    raise ValueError(
                        f"block {index}: content blocks must be of type"
                        f" {', '.join(map(repr, BLOCK_TYPES))}, got {kind!r}"
                    )
                if kind == "text":
                    text = block.get("text")
                    if not isinstance(text, str) or not text:
                        raise ValueError(f"block {index}: `text` must be a non-empty string")
            return content
        raise ValueError("must be a string or a list of content blocks")

    @model_validator(mode="after")
    def _tool_blocks_in_their_role(self) -> ChatMessage:
        for index, block in enumerate(self.blocks()):
            role = _BLOCK_ROLES.get(block.type)
            if role is not None and role != self.role:
                raise ValueError(
                    f"block {index}: a {block.type} block belongs in a turn of role {role!r}"
                )
        return self

    def blocks(
        self,
    ) -> list[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock]:
        return [] if isinstance(self.content, str) else list(self.content)

    def text(self) -> str:
        """Its text, tool calls' arguments and tool results included (what limits count)."""
        if isinstance(self.content, str):
            return self.content
        parts: list[str] = []
        for block in self.content:
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, ToolUseBlock):
                parts.append(orjson.dumps(block.input).decode())
            elif isinstance(block, ToolResultBlock):
                parts.append(block.text())
        return "".join(parts)

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(
            isinstance(block, ImageBlock) for block in self.content
        )

    def image_sizes(self) -> list[tuple[int, int]]:
        """(block index, decoded bytes) of each base64 image."""
        if isinstance(self.content, str):
            return []
        return [
            (index, len(block.source.data) * 3 // 4)
            for index, block in enumerate(self.content)
            if isinstance(block, ImageBlock) and block.source.data is not None
        ]


class ThinkingConfig(BaseModel):
    """Extended thinking, as the Messages API takes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["enabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1024)


class Tool(BaseModel):
    """A tool the model may call, as the Messages API takes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolChoice(BaseModel):
    """How the model is to use the tools (the Messages API's `tool_choice`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, min_length=1)
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("`name` is given exactly when `type` is 'tool'")
        return self


class OutputFormat(BaseModel):
    """Structured output: a reply that is one JSON value, of `schema` when given."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["json_schema", "json_object"]
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    name: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema(self) -> OutputFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`schema` is given exactly when `type` is 'json_schema'")
        return self


class ChatRequest(BaseModel):
    """The body of a chat request (`POST /ai/stream/chat`, `POST /ai/chat`)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    # None: the model's default (models file), else the guide's 2048.
    max_tokens: int | None = Field(None, ge=1, strict=True)
    # None means "not given": the guide's default of 0.7 is applied where it is accepted.
    # 0-2 as OpenAI-compatible models take it; Claude models take at most 1 (checked per model).
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True)
    top_p: float | None = Field(None, gt=0.0, le=1.0, strict=True)
    top_k: int | None = Field(None, ge=1, strict=True)
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = Field(None, max_length=8)
    conversation_id: str | None = Field(None, min_length=1, max_length=200)
    model: str | None = Field(None, min_length=1, max_length=200)
    system: str | list[TextBlock] | None = None
    # `true` asks for adaptive thinking; an object is passed to the Messages API as is.
    thinking: bool | ThinkingConfig = False
    metadata: dict[str, Any] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    output_format: OutputFormat | None = None

    @model_validator(mode="after")
    def _chosen_tool_offered(self) -> ChatRequest:
        choice = self.tool_choice
        if choice is not None and choice.type in ("any", "tool") and not self.tools:
            raise ValueError(f"tool_choice {choice.type!r} needs `tools`")
        if (
            choice is not None
            and choice.name
            and choice.name not in {t.name for t in self.tools or ()}
        ):
            raise ValueError(f"tool_choice names {choice.name!r}, which is not one of `tools`")
        return self

    @field_validator("messages")
    @classmethod
    def _a_user_message(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        # Assistant turns alone ask the model nothing: the reply would answer an empty question
        # and the turn would be stored as if a user had asked it.
        if not any(message.role == "user" for message in messages):
            raise ValueError(NO_USER_MESSAGE)
        return messages

    def system_param(self) -> str | list[dict[str, Any]] | None:
        """The system prompt for the upstream: its text, or its blocks where the client put a
        cache breakpoint on one (kept where it was placed)."""
        if isinstance(self.system, list) and any(b.cache_control for b in self.system):
            return [block.model_dump(exclude_none=True) for block in self.system]
        return self.system_text()

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system or None
        return "".join(block.text for block in self.system) or None

    @property
    def has_images(self) -> bool:
        return any(message.has_images for message in self.messages)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a request body, raising errors that name each bad field."""
    return validate_json(body, ChatRequest)


def validate_json(body: bytes, model: type[ModelT]) -> ModelT:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidField([FieldProblem("body", "must be a JSON object")])
    if nesting(data) > MAX_DEPTH:
        raise InvalidField([FieldProblem("body", f"is nested more than {MAX_DEPTH} levels deep")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidField(problems_from(exc.errors(include_url=False))) from None


# Deeper JSON than any real request would need; deeper still would exhaust the stack of the
# JSON encoders that store it.
MAX_DEPTH = 64


def nesting(value: Any) -> int:
    """How deeply `value` nests lists and objects (without recursing)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest
