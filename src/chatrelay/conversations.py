"""What `conversation_id` means on the chat endpoints.

- absent: a new conversation is created (its id goes in the start frame and the
  `X-Conversation-ID` header);
- present and known: the stored history is put before what the client sent. The longest run
  at the end of the stored history that the client's messages start with is not sent twice, so
  a client may send only its new message, or the whole history, or the last few turns;
- present and unknown: created with that id if it is well-formed, else 422.

Ids live in the caller's namespace (conversation_ids.py): another principal's conversation of
the same id is an unknown one, so the caller gets a new conversation of its own under that id.

The user's new messages are stored when the request is accepted; the reply is checkpointed
while it is generated (about every second, `end_reason: generating`) and stored whole when its
stream ends, however it ends. If the database fails at that moment, the write is retried for
`reply_retry_s` while the reply is kept in memory; then it is given up (one error line) and
the conversation is unlocked as soon as the database answers again. While a reply is being
generated the conversation is locked: a second request for it gets 409 `conversation_busy`,
unless the lock's instance is gone (it died, or restarted): then the lock is taken over at
once and the dead reply kept as far as it was checkpointed, `end_reason: interrupted`. When
the history is longer than the budget, the oldest turns are left out of the upstream request
(never the system prompt, which is not part of the history) and the start frame says how many.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .conversation_ids import lookup_ids, stored_id
from .errors import ConversationBusy, FieldProblem, InvalidField
from .events import Reply
from .store import CONVERSATION_ID, ConversationGone, Draft, Store, new_id
from .tokens import content_tokens

log = logging.getLogger("chatrelay.conversations")

TITLE_LENGTH = 80
# Replies being generated are checkpointed this often (all of them in one write).
CHECKPOINT_S = 1.0
# A reply that could not be stored is tried again after this, doubling up to the cap.
RETRY_FIRST_S = 0.25
RETRY_CAP_S = 5.0


# Called with a turn's upstream messages before it is stored (the quota reservation).
Admit = Callable[[list[dict[str, Any]]], Awaitable[None]]


@dataclass(slots=True)
class Turn:
    """One request's place in its conversation."""

    conversation_id: str  # as stored (in its owner's namespace: conversation_ids.py)
    messages: list[dict[str, Any]]  # what goes upstream: trimmed history + the new messages
    omitted: int  # history messages left out of the upstream request
    reply_seq: int | None = None  # where the reply goes (reserved by the conversation's lock)
    shown_id: str = ""  # as the client knows it (start frame, X-Conversation-ID, answers)


@dataclass(slots=True)
class _Live:
    """A reply being generated, as its job collects it (the lists grow as deltas come)."""

    turn: Turn
    stream_id: str
    model: str
    text: list[str]
    thinking: list[str]
    written: int = 0  # pieces (text + thinking) the last stored checkpoint had
    started: bool = False  # a checkpoint of it is stored
    attempted: bool = False  # a checkpoint of it was sent (it may be stored)


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

    def __init__(
        self,
        store: Store,
        history_budget_tokens: int,
        reply_retry_s: float = 60.0,
        checkpoint_s: float = CHECKPOINT_S,
    ) -> None:
        self.store = store
        self.budget = history_budget_tokens
        self.reply_retry_s = reply_retry_s
        self.checkpoint_s = checkpoint_s
        self._live: dict[str, _Live] = {}
        self._checkpointer: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()

    async def begin(
        self,
        conversation_id: str | None,
        sent: list[dict[str, Any]],
        owner: str,
        stream_id: str,
        model: str,
        admit: Admit | None = None,
        budget: int | None = None,
    ) -> Turn:
        """Resolve the conversation, store the new messages and lock it for this stream.

        `admit` gets the upstream messages (trimmed history + new) before anything is stored
        or locked, so a request it refuses (by raising) leaves the conversation untouched.
        `budget` (tokens) trims the history further, to what the caller's limits could ever
        admit: a long conversation then loses its oldest turns, not every new message.
        """
        if conversation_id is None:
            shown, existing = new_id(), None
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
            # Only the caller's own conversations: another owner's id is an unknown one.
            shown, existing = conversation_id, None
            for candidate in lookup_ids(owner, conversation_id):
                existing = await self.store.get(candidate, owner)
                if existing is not None:
                    break
        stored = existing.id if existing is not None else stored_id(owner, shown)
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
                        f" in conversation {shown!r}",
                    )
                ]
            )
        limit = self.budget if budget is None else max(0, min(self.budget, budget))
        upstream, omitted = trim(history + fresh, limit)
        if admit is not None:
            await admit(upstream)
        try:
            reply_seq = await self.store.begin_turn(
                stored,
                owner,
                stream_id,
                fresh,
                title=title_of(history + fresh),
                model=model,
                create=existing is None,
            )
        except ConversationBusy:
            raise ConversationBusy(shown) from None  # named as the client knows it
        return Turn(stored, upstream, omitted, reply_seq, shown_id=shown)

    async def reply_in(self, conversation_id: str, owner: str, stream_id: str) -> bool | None:
        """Where stream `stream_id`'s reply is in the caller's conversation `conversation_id`:
        True for its latest turn, False for an earlier one (turns followed it), None if it is
        not there (no such conversation of the caller's, or no such reply in it)."""
        if not CONVERSATION_ID.match(conversation_id):
            return None
        for candidate in lookup_ids(owner, conversation_id):
            found = await self.store.get(candidate, owner)
            if found is not None:
                break
        else:
            return None
        replies = [m for m in found.messages if m.role == "assistant"]
        at = next((i for i, m in enumerate(replies) if m.stream_id == stream_id), None)
        if at is None:
            return None
        # Replies that failed before any output are no turn of the history (`begin`): one
        # after it (a retry's first try, say) leaves it the latest.
        return not any(m.content for m in replies[at + 1 :])

    # -- while the reply is generated: checkpoints ------------------------------------------
    def watch(
        self, turn: Turn, stream_id: str, model: str, text: list[str], thinking: list[str]
    ) -> None:
        """Checkpoint this reply as it grows (`text` and `thinking` are its job's own lists)
        until `end()`: a crash then leaves it stored as far as it got."""
        self._live[stream_id] = _Live(turn, stream_id, model, text, thinking)
        if self._checkpointer is None:
            self._checkpointer = asyncio.get_running_loop().create_task(
                self._checkpoints(), name="chatrelay-checkpoints"
            )

    async def _checkpoints(self) -> None:
        """Every `checkpoint_s`, one write with every reply that grew since the last one."""
        failing = False
        try:
            while self._live:
                await asyncio.sleep(self.checkpoint_s)
                grown = [
                    (live, len(live.text) + len(live.thinking))
                    for live in self._live.values()
                    if len(live.text) + len(live.thinking) != live.written
                ]
                if not grown:
                    continue
                drafts = [
                    Draft(
                        live.turn.conversation_id,
                        live.stream_id,
                        live.turn.reply_seq,
                        live.model,
                        "".join(live.text),
                        "".join(live.thinking) or None,
                        live.started,
                    )
                    for live, _ in grown
                ]
                for live, _ in grown:
                    live.attempted = True
                try:
                    await self.store.checkpoint(drafts)
                except Exception as exc:
                    if not failing:  # once per outage: the next tick tries again
                        log.warning("could not checkpoint %d replies: %r", len(drafts), exc)
                    failing = True
                    continue
                failing = False
                for live, size in grown:
                    live.written, live.started = size, True
        finally:
            self._checkpointer = None

    # -- the end ----------------------------------------------------------------------------
    async def end(self, turn: Turn, reply: Reply) -> None:
        """Store the reply and unlock; a failure here is logged, never raised into a stream.

        Returns once the reply is committed, or once its first write failed: it is then
        retried in the background for `reply_retry_s`, and if it is finally lost the
        conversation is still unlocked (its checkpoint kept, as `interrupted`) once the
        database answers again.
        """
        live = self._live.pop(reply.stream_id, None)
        checkpointed = live is not None and live.attempted
        try:
            await self.store.end_turn(
                turn.conversation_id, reply, turn.reply_seq, checkpointed=checkpointed
            )
            return
        except ConversationGone:
            log.info("conversation %s was deleted: reply not stored", turn.conversation_id)
            return
        except Exception as exc:
            log.warning(
                "could not store the reply of stream %s in conversation %s (%r): retrying for"
                " up to %g s",
                reply.stream_id,
                turn.conversation_id,
                exc,
                self.reply_retry_s,
                extra={"stream_id": reply.stream_id, "conversation_id": turn.conversation_id},
            )
        task = asyncio.get_running_loop().create_task(
            self._keep_trying(turn, reply), name=f"store-reply-{reply.stream_id}"
        )
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _keep_trying(self, turn: Turn, reply: Reply) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.reply_retry_s
        delay = RETRY_FIRST_S
        error: BaseException | None = None
        ids = {"stream_id": reply.stream_id, "conversation_id": turn.conversation_id}
        try:
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, RETRY_CAP_S)
                try:
                    await self.store.end_turn(turn.conversation_id, reply, turn.reply_seq)
                except ConversationGone:
                    return
                except Exception as exc:
                    error = exc
                    continue
                log.info(
                    "stored the reply of stream %s after %.1f s",
                    reply.stream_id,
                    loop.time() - began,
                    extra=ids,
                )
                return
        except asyncio.CancelledError:
            # The server is stopping: its next start (a new lease) frees the conversation.
            self._lost(turn, reply, loop.time() - began, error or "the server stopped")
            raise
        self._lost(turn, reply, loop.time() - began, error)
        # What is left to do is small, and kept until it is done: unlock the conversation.
        while True:
            try:
                await self.store.abandon_turn(turn.conversation_id, reply.stream_id, reply.model)
                return
            except Exception:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP_S)

    def _lost(self, turn: Turn, reply: Reply, waited_s: float, error: object) -> None:
        log.error(
            "lost the reply of stream %s in conversation %s: could not store it for %.1f s (%r)",
            reply.stream_id,
            turn.conversation_id,
            waited_s,
            error,
            extra={"stream_id": reply.stream_id, "conversation_id": turn.conversation_id},
        )

    async def close(self) -> None:
        """On shutdown: no more checkpoints; replies still waiting for the database are lost
        (each says so in the log)."""
        tasks = [*self._retries, *([self._checkpointer] if self._checkpointer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
