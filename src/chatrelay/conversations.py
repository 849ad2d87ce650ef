"""What `conversation_id` means on the chat endpoints.

- absent: a new conversation is created (its id goes in the start frame and the
  `X-Conversation-ID` header);
- present and known: the stored history is put before what the client sent. The longest run
  at the end of the stored history that the client's messages start with is not sent twice, so
  a client may send only its new message, or the whole history, or the last few turns;
- present and unknown: created with that id if it is well-formed, else 400.

The user's new messages are stored when the request is accepted; the reply when its stream
ends, however it ends. While a reply is being generated the conversation is locked: a second
request for it gets 409 `conversation_busy` (a lock older than the lock timeout is taken over,
so a crashed instance cannot block a conversation for ever). When the history is longer than
the budget, the oldest turns are left out of the upstream request (never the system prompt,
which is not part of the history) and the start frame says how many.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import FieldProblem, InvalidField, NotFound
from .store import CONVERSATION_ID, Reply, Store, new_id
from .tokens import content_tokens

log = logging.getLogger("chatrelay.conversations")

TITLE_LENGTH = 80


# Called with a turn's upstream messages before it is stored (the quota reservation).
Admit = Callable[[list[dict[str, Any]]], Awaitable[None]]


@dataclass(slots=True)
class Turn:
    """One request's place in its conversation."""

    conversation_id: str
    messages: list[dict[str, Any]]  # what goes upstream: trimmed history + the new messages
    omitted: int  # history messages left out of the upstream request
    reply_seq: int | None = None  # where the reply goes (reserved by the conversation's lock)


def title_of(messages: list[dict[str, Any]]) -> str:
    for message in messages:
        if message["role"] == "user":
            content = message["content"]
            text = (
                content
                if isinstance(content, str)
                else " ".join(
                    block.get("text", "") for block in content if block.get("type") == "text"
                )
            )
            # NUL has no place in a title (and PostgreSQL refuses it in text columns).
            text = " ".join(text.replace("\x00", " ").split())
            return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1] + "…"
    return ""


def new_messages(history: list[dict[str, Any]], sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the client sent minus the longest overlap with the end of the stored history."""
    for overlap in range(min(len(history), len(sent)), 0, -1):
        if history[len(history) - overlap :] == sent[:overlap]:
            return sent[overlap:]
    return sent


def trim(messages: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], int]:
    """Leave out the oldest messages until the rest fits `budget` (estimated tokens).

    The newest message always stays, and the kept part starts with a user message, as the
    providers require.
    """
    sizes = [content_tokens(m["content"]) for m in messages]
    start, total = 0, sum(sizes)
    while start < len(messages) - 1 and total > budget:
        total -= sizes[start]
        start += 1
    while start < len(messages) - 1 and messages[start]["role"] != "user":
        start += 1
    return messages[start:], start


class Conversations:
    """Conversation bookkeeping around a reply; the store does the queries."""

    def __init__(self, store: Store, history_budget_tokens: int) -> None:
        self.store = store
        self.budget = history_budget_tokens

    async def begin(
        self,
        conversation_id: str | None,
        sent: list[dict[str, Any]],
        owner: str,
        stream_id: str,
        model: str,
        admit: Admit | None = None,
    ) -> Turn:
        """Resolve the conversation, store the new messages and lock it for this stream.

        `admit` gets the upstream messages (trimmed history + new) before anything is stored
        or locked, so a request it refuses (by raising) leaves the conversation untouched.
        """
        if conversation_id is None:
            conversation_id, existing = new_id(), None
        else:
            if not CONVERSATION_ID.match(conversation_id):
                raise InvalidField(
                    [
                        FieldProblem(
                            "conversation_id",
                            "must be 1 to 100 letters, digits, '-', '_', '.' or ':'",
                        )
                    ]
                )
            existing = await self.store.get(conversation_id, owner)
            if existing is None and await self.store.exists(conversation_id):
                raise NotFound(f"Conversation {conversation_id!r} not found")
        history = [
            {"role": m.role, "content": m.content}
            for m in (existing.messages if existing else [])
            if m.content  # a reply that failed before any text was never seen by the client
        ]
        fresh = new_messages(history, sent)
        if not fresh and (not history or history[-1]["role"] != "user"):
            raise InvalidField(
                [FieldProblem("messages", "contains nothing new: all of it is already stored")]
            )
        if fresh and not any(message["role"] == "user" for message in fresh):
            # The user messages sent are the stored ones: only assistant turns would be added.
            raise InvalidField(
                [
                    FieldProblem(
                        "messages",
                        "must contain at least one user message that is not already stored"
                        f" in conversation {conversation_id!r}",
                    )
                ]
            )
        upstream, omitted = trim(history + fresh, self.budget)
        if admit is not None:
            await admit(upstream)
        reply_seq = await self.store.begin_turn(
            conversation_id,
            owner,
            stream_id,
            fresh,
            title=title_of(history + fresh),
            model=model,
            create=existing is None,
        )
        return Turn(conversation_id, upstream, omitted, reply_seq)

    async def end(self, turn: Turn, reply: Reply) -> None:
        """Store the reply and unlock; a failure here is logged, never raised into a stream."""
        try:
            await self.store.end_turn(turn.conversation_id, reply, turn.reply_seq)
        except Exception:
            log.exception("could not store the reply of stream %s", reply.stream_id)
