"""Stream events as the Redis event log stores them: one tag byte, then the event.

    t<text>    TextDelta          h<text>   ThinkingDelta
    a<json>    Answering          e<json>   End
    c<reason>  Cut                u<json>   ToolCallStart
    g<signature>  ThinkingSignature
    d<index> <arguments>          ToolCallDelta

The deltas, nearly every entry, are their UTF-8 text behind the tag: no JSON to write or
parse. An `End`'s error keeps what readers are shown (its class, by code, and message); the
operator's detail stays in the generating instance's log.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

import orjson

from ..errors import ChatRelayError, InternalError
from ..events import (
    Answering,
    Cut,
    End,
    StreamEvent,
    StreamMeta,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..models import ModelSpec

# The tags of the events that end a stream (the copy script reads them too).
TERMINAL_TAGS = b"ec"


def dump(event: StreamEvent) -> bytes:
    if isinstance(event, TextDelta):
        return b"t" + event.text.encode()
    if isinstance(event, ThinkingDelta):
        return b"h" + event.text.encode()
    if isinstance(event, ToolCallDelta):
        return b"d%d %b" % (event.index, event.arguments.encode())
    if isinstance(event, ThinkingSignature):
        return b"g" + event.signature.encode()
    if isinstance(event, ToolCallStart):
        return b"u" + orjson.dumps([event.index, event.id, event.name])
    if isinstance(event, Answering):
        spec = dataclasses.asdict(event.spec)
        return b"a" + orjson.dumps({"spec": spec, "fallback_from": event.fallback_from})
    if isinstance(event, End):
        usage = dataclasses.asdict(event.usage) if event.usage is not None else None
        error = event.error
        return b"e" + orjson.dumps(
            {
                "stop_reason": event.stop_reason,
                "usage": usage,
                "attempts": event.attempts,
                "error": None
                if error is None
                else {
                    "code": error.code,
                    "message": error.message,
                    "retry_after": error.retry_after,
                },
            }
        )
    return b"c" + event.reason.encode()


def load(data: bytes) -> StreamEvent:
    tag, body = data[:1], data[1:]
    if tag == b"t":
        return TextDelta(body.decode())
    if tag == b"h":
        return ThinkingDelta(body.decode())
    if tag == b"c":
        return Cut(body.decode())
    if tag == b"g":
        return ThinkingSignature(body.decode())
    if tag == b"d":
        index, _, arguments = body.partition(b" ")
        return ToolCallDelta(int(index), arguments.decode())
    if tag == b"u":
        number, id, name = orjson.loads(body)
        return ToolCallStart(number, id, name)
    fields: dict[str, Any] = orjson.loads(body)
    if tag == b"a":
        spec = fields["spec"]
        spec["fallbacks"] = tuple(spec.get("fallbacks", ()))
        return Answering(ModelSpec(**spec), tuple(fields["fallback_from"]))
    usage = fields["usage"]
    error = fields["error"]
    return End(
        fields["stop_reason"],
        Usage(**usage) if usage is not None else None,
        _error(error) if error is not None else None,
        fields["attempts"],
    )


def dump_meta(meta: StreamMeta) -> bytes:
    return orjson.dumps(dataclasses.asdict(meta))


def load_meta(data: bytes | str) -> StreamMeta:
    fields = orjson.loads(data)
    fields["warnings"] = tuple(fields["warnings"])
    return StreamMeta(**fields)


def _error(fields: dict[str, Any]) -> ChatRelayError:
    """The error as its readers on the generating instance see it: its class and message."""
    kind = _classes().get(fields["code"], InternalError)
    error = kind.__new__(kind)
    ChatRelayError.__init__(error, fields["message"])
    error.retry_after = fields["retry_after"]
    return error


@cache
def _classes() -> dict[str, type[ChatRelayError]]:
    found: dict[str, type[ChatRelayError]] = {}
    pending: list[type[ChatRelayError]] = [ChatRelayError]
    while pending:
        kind = pending.pop()
        found.setdefault(kind.code, kind)
        pending.extend(kind.__subclasses__())
    return found
