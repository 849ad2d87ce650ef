"""The chat service: turns a validated request into one relayed reply.

Routes stay thin: they parse the body into the project's `ChatRequest`, then call
`ChatService.stream()` (the reply runs in the stream hub; the route encodes its events with
its surface's encoder) or `ChatService.start()` and `complete()` for the non-streaming
endpoints. Model choice, upstream parameters, idempotency, warnings and the log line of every
reply live here, so tests drive them without HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import orjson

from .context import request_id
from .conversations import Conversations, Turn
from .errors import (
    ChatRelayError,
    FieldProblem,
    InvalidField,
    ModelUnpriced,
    ServerRestarting,
    Unsupported,
)
from .events import (
    Answering,
    End,
    RelayEvent,
    Reply,
    StreamMeta,
    TextDelta,
    ThinkingDelta,
    ThinkingSignature,
    ToolCall,
    ToolCallDelta,
    ToolCalls,
    ToolCallStart,
    Usage,
)
from .jobs import RunningJobs
from .metrics import Metrics
from .models import ModelSpec
from .prices import Price, Prices, micro_usd
from .principals import Principal
from .providers import ChatParams
from .quotas import Admission, Limits, Quotas
from .relay import Relay
from .routing import Router, Target
from .schemas import ChatRequest
from .settings import Settings
from .streams import Reader, StreamHub
from .tokens import chars_to_tokens, input_tokens

log = logging.getLogger("chatrelay.chat")

# The seed guide's defaults.
DEFAULT_MAX_TOKENS = 2048
DEFAULT_TEMPERATURE = 0.7


@dataclass(frozen=True, slots=True)
class InputLimits:
    """How big a request may be, beyond the body size (each error names its limit)."""

    max_messages: int
    max_message_chars: int
    max_total_chars: int
    max_image_bytes: int
    max_tokens: int

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(
            settings.max_messages,
            settings.max_message_chars,
            settings.max_total_chars,
            settings.max_image_bytes,
            settings.max_tokens_limit,
        )

    def check(self, request: ChatRequest, spec: ModelSpec) -> None:
        problems: list[FieldProblem] = []
        if len(request.messages) > self.max_messages:
            problems.append(
                FieldProblem(
                    "messages",
                    f"{len(request.messages)} messages, over the limit of {self.max_messages}"
                    " (CHATRELAY_MAX_MESSAGES)",
                )
            )
        total = 0
        for index, message in enumerate(request.messages):
            size = len(message.text())
            total += size
            if size > self.max_message_chars:
                problems.append(
                    FieldProblem(
                        f"messages[{index}].content",
                        f"{size} characters, over the limit of {self.max_message_chars} per"
                        " message (CHATRELAY_MAX_MESSAGE_CHARS)",
                    )
                )
            for number, image_bytes in message.image_sizes():
                if image_bytes > self.max_image_bytes:
                    problems.append(
                        FieldProblem(
                            f"messages[{index}].content[{number}]",
                            f"an image of {image_bytes} bytes, over the limit of"
                            f" {self.max_image_bytes} (CHATRELAY_MAX_IMAGE_BYTES)",
                        )
                    )
        if total > self.max_total_chars:
            problems.append(
                FieldProblem(
                    "messages",
                    f"{total} characters in all, over the limit of {self.max_total_chars}"
                    " (CHATRELAY_MAX_TOTAL_CHARS)",
                )
            )
        # Whichever limit is lower applies, and is named.
        cap, setting = self.max_tokens, "CHATRELAY_MAX_TOKENS_LIMIT"
        if spec.max_tokens_cap is not None and spec.max_tokens_cap < cap:
            cap, setting = spec.max_tokens_cap, f"max_tokens_cap of [models.{spec.alias}]"
        if request.max_tokens is not None and request.max_tokens > cap:
            problems.append(
                FieldProblem("max_tokens", f"must be at most {cap} for {spec.alias!r} ({setting})")
            )
        if problems:
            raise InvalidField(problems)


Finisher = Callable[[Reply], Awaitable[None]]


@dataclass(slots=True)
class ChatJob:
    """One accepted chat request: its ids, its plan of models, and its reply's events."""

    stream_id: str
    requested_model: str
    requested_conversation: str | None
    plan: list[tuple[Target, ChatParams]]
    relay: Relay
    thinking: bool = False
    warnings: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    turn: Turn | None = None
    conversations: Conversations | None = None
    deltas: int = 0  # text and thinking pieces relayed so far
    # Run (in order) with the reply when it ends, however it ends: store it, settle quotas.
    finishers: list[Finisher] = field(default_factory=list)
    owner: str | None = None
    # This instance's running non-streaming replies, which shutdown drains (jobs.py).
    running: RunningJobs | None = None
    # What each model costs (prices.py): a reply's cost is its usage at its model's price.
    prices: Prices | None = None

    @property
    def conversation_id(self) -> str | None:
        """The conversation's id as the client knows it (not as stored: conversation_ids.py)."""
        return self.turn.shown_id if self.turn else self.requested_conversation

    def meta(self, surface: str, options: Mapping[str, Any] | None = None) -> StreamMeta:
        """What the readers of this job's stream need beside its events."""
        return StreamMeta(
            stream_id=self.stream_id,
            surface=surface,
            created=self.created,
            requested_model=self.requested_model,
            conversation_id=self.conversation_id,
            history_omitted=self.turn.omitted if self.turn else 0,
            warnings=tuple(self.warnings),
            options=options or {},
            request_id=request_id.get(),
        )

    async def events(
        self, cut: Callable[[], str | None] = lambda: None
    ) -> AsyncGenerator[RelayEvent, None]:
        """The relay's events; when the reply ends (however it ends) it is stored and logged.

        `cut()` says why, when whoever runs the job cancelled it before its end (`stopped`,
        `disconnected`, `server_restarting`); a cancellation it does not explain is a client
        that left (`disconnected`)."""
        started = time.perf_counter()
        first_at: float | None = None
        text: list[str] = []
        thinking: list[str] = []
        tools = ToolCalls()
        signature: list[str] = []
        model = self.requested_model
        answering = self.plan[0][0].spec  # the model that answers (the first, until told)
        end: End | None = None
        concluded: Reply | None = None
        if self.turn is not None and self.conversations is not None:
            # Checkpointed as it grows: a crash leaves it stored as far as it got.
            self.conversations.watch(self.turn, self.stream_id, model, text, thinking)

        async def conclude() -> None:
            nonlocal concluded
            error = end.error if end else None
            outcome = (
                (cut() or "disconnected") if end is None else "error" if error else "completed"
            )
            reply = Reply(
                content="".join(text),
                model=model,
                stream_id=self.stream_id,
                end_reason=outcome,
                stop_reason=end.stop_reason if end else None,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
                ttft_ms=round((first_at - started) * 1000) if first_at else None,
                duration_ms=round((time.perf_counter() - started) * 1000),
                thinking="".join(thinking) or None,
                tool_calls=tools.calls(),
                thinking_signature="".join(signature) or None,
            )
            concluded = reply
            self._count_tokens(reply, end.usage if end else None, tools.chars())
            reply.cost_usd = self._cost(reply, answering)
            self._log_end(reply, end)
            # Shielded: a Stop or a disconnect arriving now must not cut the bookkeeping short
            # (the reply unsaved, the conversation left locked, the quota unsettled).
            await asyncio.shield(self._finish(reply))

        try:
            async with aclosing(self.relay.run(self.plan)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_at is None:
                            first_at = time.perf_counter()
                        text.append(event.text)
                        self.deltas += 1
                    elif isinstance(event, ThinkingDelta):
                        if first_at is None:
                            first_at = time.perf_counter()
                        thinking.append(event.text)
                        self.deltas += 1
                    elif isinstance(event, (ToolCallStart, ToolCallDelta)):
                        if first_at is None:
                            first_at = time.perf_counter()
                        tools.add(event)
                        self.deltas += 1
                    elif isinstance(event, ThinkingSignature):
                        signature.append(event.signature)
                    elif isinstance(event, Answering):
                        model, answering = event.spec.alias, event.spec
                    else:
                        end = event
                        # Stored before its end is told: whoever reads `[DONE]` (or /ai/chat's
                        # answer) and then the conversation finds the reply in it.
                        await self._to_its_end(conclude())
                        cost = concluded.cost_usd if concluded is not None else None
                        if end.usage is not None and cost is not None:
                            # The end's usage says what the reply cost (the `end` frame's).
                            usage = dataclasses.replace(end.usage, cost_usd=cost)
                            event = dataclasses.replace(end, usage=usage)
                    yield event
        finally:
            if concluded is None:
                await conclude()

    async def _to_its_end(self, work: Awaitable[None]) -> None:
        """Run a complete reply's bookkeeping to its end, even if a Stop, a disconnect or the
        drain cancels the job meanwhile: the reply is whole, so its end frames still follow
        (and the Stop answers `finished`)."""
        task = asyncio.ensure_future(work)
        cancels = 0
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancels += 1
        if cancels:
            current = asyncio.current_task()
            for _ in range(cancels):
                if current is not None:
                    current.uncancel()
        task.result()

    async def abandon(self, error: ChatRelayError | None) -> None:
        """End a job that will never run (refused while the server drains, or its client
        gone before it started: `error` None): its conversation gets the failed turn and is
        unlocked, its reservation is given back."""
        reply = Reply(
            content="",
            model=self.requested_model,
            stream_id=self.stream_id,
            end_reason="error" if error is not None else "disconnected",
            error_code=error.code if error is not None else None,
            error_message=error.message if error is not None else None,
            input_tokens=0,
            output_tokens=0,
        )
        reply.cost_usd = self._cost(reply, self.plan[0][0].spec)
        await self._finish(reply)

    def price(self, spec: ModelSpec) -> Price | None:
        return self.prices.of(spec) if self.prices is not None else spec.price

    def _cost(self, reply: Reply, spec: ModelSpec) -> float | None:
        """The reply's cost from its usage at the price of the model that answered."""
        price = self.price(spec)
        if price is None:
            return None
        return price.cost(
            reply.input_tokens or 0,
            reply.output_tokens or 0,
            reply.cache_read_tokens,
            reply.cache_write_tokens,
        )

    async def _finish(self, reply: Reply) -> None:
        for finish in self.finishers:
            try:
                await finish(reply)
            except Exception:
                log.exception("finishing stream %s failed", self.stream_id)

    def _count_tokens(self, reply: Reply, usage: Usage | None, tool_chars: int = 0) -> None:
        """The upstream's counts, or an estimate (flagged) where it gave none."""
        reply.input_tokens = usage.input_tokens if usage else None
        reply.output_tokens = usage.output_tokens if usage else None
        reply.cache_read_tokens = usage.cache_read_tokens if usage else None
        reply.cache_write_tokens = usage.cache_write_tokens if usage else None
        reply.usage_estimated = bool(usage and usage.estimated)
        if reply.input_tokens is None:
            params = self.plan[0][1]  # its messages are the turn's upstream ones
            reply.input_tokens = input_tokens(params.system, params.messages)
            reply.usage_estimated = True
        if reply.output_tokens is None:
            chars = len(reply.content) + len(reply.thinking or "") + tool_chars
            reply.output_tokens, reply.usage_estimated = chars_to_tokens(chars), True

    def _log_end(self, reply: Reply, end: End | None) -> None:
        error = end.error if end else None
        log.info(
            "stream %s ended: %s",
            self.stream_id,
            reply.end_reason,
            extra={
                "stream_id": self.stream_id,
                "principal": self.owner,
                # As stored (the operators' id), as the store's own log lines name it.
                "conversation_id": self.turn.conversation_id if self.turn else None,
                "model": reply.model,
                "outcome": reply.end_reason,
                "stop_reason": reply.stop_reason,
                "error_code": reply.error_code,
                "error_detail": getattr(error, "detail", None),
                "upstream_request_id": getattr(error, "request_id", None),
                "attempts": end.attempts if end else None,
                "ttft_ms": reply.ttft_ms,
                "duration_ms": reply.duration_ms,
                "deltas": self.deltas,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "usage_estimated": reply.usage_estimated,
                "cost_usd": reply.cost_usd,
            },
        )


@dataclass(slots=True)
class Completion:
    """A whole reply, for the non-streaming endpoints."""

    model: str
    content: str
    thinking: str
    stop_reason: str | None
    usage: Usage | None
    error: ChatRelayError | None
    tool_calls: tuple[ToolCall, ...] = ()
    thinking_signature: str | None = None


# The request's ASGI `receive`, once its body has been read: what comes next is the disconnect.
Receive = Callable[[], Awaitable[Mapping[str, Any]]]


async def complete(job: ChatJob, receive: Receive | None = None) -> Completion | None:
    """Run a job to its end and collect the reply.

    With `receive`, a client that goes away cancels the job at once, which closes the upstream
    request (no more tokens billed for nobody); its partial reply is stored as `disconnected`,
    as a streamed one's is, and the answer is None: there is nobody left to answer.
    """
    if receive is None:
        return await _collect(job.events(), job.requested_model)
    why: list[str] = []  # set by the drain; otherwise a cut is its client leaving
    events = job.events(lambda: why[0] if why else "disconnected")
    running = job.running
    if running is not None:
        await running.admit(job)  # 503 while draining
    collecting = asyncio.ensure_future(_collect(events, job.requested_model, why))
    if running is not None:
        running.add(collecting, why.append)
    watching = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((collecting, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not collecting.done():
            collecting.cancel()
            await asyncio.wait((collecting,))  # the partial reply is stored, the quota settled
    return None if collecting.cancelled() else collecting.result()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _collect(
    events: AsyncGenerator[RelayEvent, None], model: str, why: list[str] | None = None
) -> Completion:
    """The whole reply; `why` holds the reason it is cut, when whoever runs it cuts it."""
    text: list[str] = []
    thinking: list[str] = []
    tools = ToolCalls()
    signature: list[str] = []
    end: End | None = None
    try:
        async with aclosing(events):
            async for event in events:
                if isinstance(event, TextDelta):
                    text.append(event.text)
                elif isinstance(event, ThinkingDelta):
                    thinking.append(event.text)
                elif isinstance(event, (ToolCallStart, ToolCallDelta)):
                    tools.add(event)
                elif isinstance(event, ThinkingSignature):
                    signature.append(event.signature)
                elif isinstance(event, Answering):
                    model = event.spec.alias
                else:
                    end = event
    except asyncio.CancelledError:
        if why != ["server_restarting"]:
            raise
        # Cut by the drain at the end of the shutdown grace (its partial reply is stored):
        # answered 503 server_restarting, as a stream ends.
        if (task := asyncio.current_task()) is not None:
            task.uncancel()
        if end is None:
            restarting = ServerRestarting()
            return Completion(
                model, "".join(text), "".join(thinking), None, None, restarting, tools.calls()
            )
    assert end is not None
    return Completion(
        model,
        "".join(text),
        "".join(thinking),
        end.stop_reason,
        end.usage,
        end.error,
        tools.calls(),
        "".join(signature) or None,
    )


class ChatService:
    """Accepts chat requests and prepares their jobs."""

    def __init__(
        self,
        router: Router,
        relay: Relay,
        limits: InputLimits,
        conversations: Conversations | None = None,
        quotas: Quotas | None = None,
        metrics: Metrics | None = None,
        hub: StreamHub | None = None,
        prices: Prices | None = None,
    ) -> None:
        self.router = router
        self.prices = prices if prices is not None else Prices.packaged()
        self.relay = relay
        self.limits = limits
        self.conversations = conversations
        self.quotas = quotas
        self.metrics = metrics
        self.running = RunningJobs()  # drained on shutdown (server.py)
        self.hub = hub

    async def stream(
        self,
        request: ChatRequest,
        principal: Principal,
        surface: str,
        *,
        options: Mapping[str, Any] | None = None,
        persist: bool = True,
        idempotency_key: str | None = None,
        resume_grace_s: float | None = None,
    ) -> Reader:
        """Start the reply in the stream hub (resumable, stoppable, drained on shutdown) and
        return its first reader, whose events `surface`'s encoder renders. Without readers it
        runs on for `resume_grace_s` (None: the server's resume grace), waiting for a resume.

        With an idempotency key already bound to a stream (a retried POST whose response was
        lost), that stream's reader instead: the same reply, not a second one. Whatever fails
        once the turn is recorded ends it here, so nothing is left locked or reserved.
        """
        assert self.hub is not None, "streaming needs the stream hub"
        hub = self.hub
        stream_id = uuid.uuid4().hex
        key = idempotency_key
        if key is not None:
            bound = await hub.events.claim(principal.id, key, stream_id)
            if bound != stream_id:
                return await hub.follow(bound, principal.scope)
        try:
            job = await self.start(request, principal, persist=persist, stream_id=stream_id)
            try:
                meta = job.meta(surface, options)
                return await hub.open(job, principal.id, meta, resume_grace_s)
            except BaseException as exc:
                # No generation will record this turn: end it here (a client that left, too).
                await asyncio.shield(job.abandon(exc if isinstance(exc, ChatRelayError) else None))
                raise
        except BaseException:
            if key is not None:
                await asyncio.shield(hub.events.forget_claim(principal.id, key))
            raise

    async def start(
        self,
        request: ChatRequest,
        principal: Principal,
        *,
        persist: bool = True,
        stream_id: str | None = None,
    ) -> ChatJob:
        """Check the request and the caller's limits, record it in its conversation, and plan
        the job. Nothing is sent upstream yet: that happens when the job's events are read.
        """
        targets = self.router.targets(request.model)
        primary = targets[0]
        self.limits.check(request, primary.spec)
        if request.temperature is not None:
            primary.provider.check_temperature(request.temperature, primary.spec.alias)
        if request.has_images:
            if not primary.spec.accepts_images:
                raise Unsupported(
                    "messages", f"model {primary.spec.alias!r} does not accept images"
                )
            targets = [t for t in targets if t.spec.accepts_images]
        plan = [(t, t.provider.adapt(self._params(request, t.spec))) for t in targets]
        params = plan[0][1]
        primary.provider.check(params)
        warnings = self._warnings(request, primary.spec) + primary.provider.warnings(params)
        for warning in warnings:
            log.warning("%s", warning)
        job = ChatJob(
            stream_id=stream_id or uuid.uuid4().hex,
            requested_model=primary.spec.alias,
            requested_conversation=request.conversation_id,
            plan=plan,
            relay=self.relay,
            thinking=params.thinking is not None,
            warnings=warnings,
            owner=principal.id,
            running=self.running,
            prices=self.prices,
        )
        if principal.limits.counts_money:
            # Spend that could not be counted must not slip past a budget in dollars.
            for target, _ in plan:
                if job.price(target.spec) is None:
                    raise ModelUnpriced(target.spec.alias, target.spec.model)
        if self.metrics is not None:
            job.finishers.append(lambda reply: self._observe(reply, job))
        # The reservation counts what will be sent upstream: with a conversation, that is known
        # once its history is loaded and trimmed, which `begin` does before storing or locking.
        admitted: list[Admission] = []

        async def admit(upstream: list[dict[str, Any]]) -> None:
            admission = await self._admit(principal, job, params, upstream)
            if admission is not None:
                admitted.append(admission)

        try:
            conversations = self.conversations
            if persist and conversations is not None:
                turn = await conversations.begin(
                    request.conversation_id,
                    params.messages,
                    principal.id,
                    job.stream_id,
                    job.requested_model,
                    admit,
                    budget=_history_room(principal.limits, params),
                )
                job.turn, job.conversations = turn, conversations
                job.plan = [
                    (t, dataclasses.replace(p, messages=turn.messages, continues=True))
                    for t, p in plan
                ]
                job.finishers.append(lambda reply: conversations.end(turn, reply))
            else:
                await admit(params.messages)
        except BaseException:
            if admitted and self.quotas is not None:
                await self.quotas.settle(admitted[0], 0)
            raise
        if admitted and self.quotas is not None:
            admission = admitted[0]
            quotas = self.quotas
            job.finishers.append(
                lambda reply: quotas.settle(
                    admission,
                    (reply.input_tokens or 0) + (reply.output_tokens or 0),
                    micro_usd(reply.cost_usd) if reply.cost_usd is not None else None,
                )
            )
        return job

    async def count_tokens(self, request: ChatRequest) -> tuple[int, bool]:
        """The request's input tokens, and whether they are chatrelay's estimate: counted by
        the upstream where its provider can (Anthropic's count_tokens), estimated otherwise
        (`tokens.py`, tool definitions included). Nothing is stored, reserved or generated."""
        target = self.router.targets(request.model)[0]
        params = target.provider.adapt(self._params(request, target.spec))
        target.provider.check(params)
        counted = await target.provider.count_tokens(params)
        if counted is not None:
            return counted, False
        estimate = input_tokens(params.system, params.messages)
        if params.tools:
            estimate += chars_to_tokens(len(orjson.dumps(params.tools)))
        return estimate, True

    async def _observe(self, reply: Reply, job: ChatJob) -> None:
        assert self.metrics is not None
        # Labelled by the models-file entry: an id a pattern served counts under the pattern.
        entries = {target.spec.alias: target.spec.entry for target, _ in job.plan}
        self.metrics.reply(
            entries.get(reply.model, reply.model) if reply.model else "unknown",
            reply.end_reason,
            reply.error_code,
            job.deltas,
            reply.ttft_ms / 1000 if reply.ttft_ms is not None else None,
            (reply.duration_ms or 0) / 1000,
            reply.input_tokens,
            reply.output_tokens,
        )

    async def _admit(
        self,
        principal: Principal,
        job: ChatJob,
        params: ChatParams,
        upstream: list[dict[str, Any]],
    ) -> Admission | None:
        limits = principal.limits
        if self.quotas is None or limits == Limits():
            return None
        # Reserve what the request may cost at most: its whole upstream input (system prompt,
        # stored history, new messages) and all of max_tokens; in money, that at the prices
        # of the dearest model of its plan (a fallback may answer), with no cache discount.
        reserve = 0
        estimate = input_tokens(params.system, upstream)
        if limits.counts_tokens:
            reserve = estimate + params.max_tokens
        dollars = 0
        if limits.counts_money:
            worst = (
                price.worst_case(estimate, target_params.max_tokens)
                for target, target_params in job.plan
                if (price := job.price(target.spec)) is not None
            )
            dollars = micro_usd(max(worst, default=0.0))
        return await self.quotas.admit(principal.id, limits, reserve, job.stream_id, dollars)

    def _params(self, request: ChatRequest, spec: ModelSpec) -> ChatParams:
        sampling = spec.accepts_sampling and not request.thinking
        temperature = request.temperature
        # The guide's default temperature, unless the client chose top_p instead (newer
        # models refuse both at once).
        if temperature is None and request.top_p is None:
            temperature = DEFAULT_TEMPERATURE
        thinking: dict[str, Any] | None = None
        if request.thinking is True:
            thinking = {"type": "adaptive"}
        elif request.thinking:
            thinking = request.thinking.model_dump(exclude_none=True)
        return ChatParams(
            model=spec.model,
            messages=[m.model_dump(mode="json", exclude_none=True) for m in request.messages],
            max_tokens=request.max_tokens or spec.max_tokens or DEFAULT_MAX_TOKENS,
            system=request.system_param(),
            temperature=temperature if sampling else None,
            top_p=request.top_p if sampling else None,
            top_k=request.top_k if sampling else None,
            stop_sequences=request.stop_sequences,
            thinking=thinking,
            metadata=request.metadata or {},
            tools=[t.model_dump(exclude_none=True) for t in request.tools]
            if request.tools
            else None,
            tool_choice=request.tool_choice.model_dump(exclude_none=True)
            if request.tool_choice
            else None,
            output_format=request.output_format.model_dump(by_alias=True, exclude_none=True)
            if request.output_format
            else None,
            prompt_cache=spec.cache_ttl if spec.cache == "auto" else None,
        )

    def _warnings(self, request: ChatRequest, spec: ModelSpec) -> list[str]:
        asked = [
            name for name in ("temperature", "top_p", "top_k") if getattr(request, name) is not None
        ]
        if not asked or (spec.accepts_sampling and not request.thinking):
            return []
        why = "with thinking on" if request.thinking else f"by {spec.model}"
        return [f"{name} is not accepted {why} and was not sent" for name in asked]


def _history_room(limits: Limits, params: ChatParams) -> int | None:
    """The most the stored history may take of the caller's smallest token budget, beside
    the system prompt and max_tokens; None without token limits."""
    budgets = [b for b in (limits.tpm, limits.daily_tokens) if b is not None]
    if not budgets:
        return None
    return min(budgets) - params.max_tokens - input_tokens(params.system, [])
