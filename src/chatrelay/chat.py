"""The chat service: turns a validated request into one relayed reply.

Routes stay thin: they parse the body, call `ChatService.start()`, and hand the job's events
to an encoder (the seed's SSE frames in `sse.py`, OpenAI chunks in `openai_compat.py`) or to
`complete()` for the non-streaming endpoints. Model choice, upstream parameters, warnings and
the log line of every reply live here, so tests drive them without HTTP.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from .errors import ChatRelayError, FieldProblem, InvalidField, Unsupported
from .events import TextDelta, ThinkingDelta, Usage
from .models import ModelSpec
from .providers import ChatParams
from .relay import Answering, End, Relay, RelayEvent
from .routing import Router, Target
from .schemas import ChatRequest

log = logging.getLogger("chatrelay.chat")

# The seed guide's defaults.
DEFAULT_MAX_TOKENS = 2048
DEFAULT_TEMPERATURE = 0.7


@dataclass(slots=True)
class ChatJob:
    """One accepted chat request: its ids, its plan of models, and its reply's events."""

    stream_id: str
    requested_model: str
    conversation_id: str | None
    plan: list[tuple[Target, ChatParams]]
    relay: Relay
    thinking: bool = False
    warnings: list[str] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))

    async def events(self) -> AsyncGenerator[RelayEvent, None]:
        """The relay's events, and one log line when the reply ends (however it ends)."""
        started = time.perf_counter()
        first_at: float | None = None
        deltas = 0
        model = self.requested_model
        end: End | None = None
        try:
            async with aclosing(self.relay.run(self.plan)) as events:
                async for event in events:
                    kind = type(event)
                    if kind is TextDelta or kind is ThinkingDelta:
                        if first_at is None:
                            first_at = time.perf_counter()
                        deltas += 1
                    elif kind is Answering:
                        model = event.target.spec.alias  # type: ignore[union-attr]
                    else:
                        end = event  # type: ignore[assignment]
                    yield event
        finally:
            self._log_end(model, end, deltas, started, first_at)

    def _log_end(
        self, model: str, end: End | None, deltas: int, started: float, first_at: float | None
    ) -> None:
        error = end.error if end else None
        outcome = "disconnected" if end is None else "error" if error else "completed"
        log.info(
            "stream %s ended: %s",
            self.stream_id,
            outcome,
            extra={
                "stream_id": self.stream_id,
                "model": model,
                "outcome": outcome,
                "stop_reason": end.stop_reason if end else None,
                "error_code": error.code if error else None,
                "error_detail": getattr(error, "detail", None),
                "upstream_request_id": getattr(error, "request_id", None),
                "deltas": deltas,
                "attempts": end.attempts if end else None,
                "ttft_ms": round((first_at - started) * 1000, 1) if first_at else None,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                "input_tokens": end.usage.input_tokens if end and end.usage else None,
                "output_tokens": end.usage.output_tokens if end and end.usage else None,
            },
        )


@dataclass(slots=True)
class Completion:
    """A whole reply, for the non-streaming endpoints."""

    job: ChatJob
    model: str
    content: str
    thinking: str
    stop_reason: str | None
    usage: Usage | None
    error: ChatRelayError | None


async def complete(job: ChatJob) -> Completion:
    """Run a job to its end and collect the reply."""
    text: list[str] = []
    thinking: list[str] = []
    model = job.requested_model
    end: End | None = None
    async with aclosing(job.events()) as events:
        async for event in events:
            if type(event) is TextDelta:
                text.append(event.text)
            elif type(event) is ThinkingDelta:
                thinking.append(event.text)
            elif type(event) is Answering:
                model = event.target.spec.alias
            elif type(event) is End:
                end = event
    assert end is not None
    return Completion(
        job, model, "".join(text), "".join(thinking), end.stop_reason, end.usage, end.error
    )


class ChatService:
    """Accepts chat requests and prepares their jobs."""

    def __init__(self, router: Router, relay: Relay, max_tokens_limit: int) -> None:
        self.router = router
        self.relay = relay
        self.max_tokens_limit = max_tokens_limit

    def start(self, request: ChatRequest) -> ChatJob:
        """Check the request against its models and plan the job (nothing is sent yet)."""
        if request.max_tokens is not None and request.max_tokens > self.max_tokens_limit:
            raise InvalidField(
                [FieldProblem("max_tokens", f"must be at most {self.max_tokens_limit}")]
            )
        targets = self.router.targets(request.model)
        primary = targets[0]
        if (
            request.temperature is not None
            and request.temperature > 1
            and primary.spec.provider == "anthropic"
        ):
            raise InvalidField(
                [FieldProblem("temperature", f"must be at most 1 for model {primary.spec.alias!r}")]
            )
        if request.has_images:
            if not primary.spec.accepts_images:
                raise Unsupported(
                    "messages", f"model {primary.spec.alias!r} does not accept images"
                )
            targets = [t for t in targets if t.spec.accepts_images]
        plan = [(target, self._params(request, target.spec)) for target in targets]
        params = plan[0][1]
        primary.provider.check(params)
        warnings = self._warnings(request, primary.spec) + primary.provider.warnings(params)
        for warning in warnings:
            log.warning("%s", warning)
        return ChatJob(
            stream_id=uuid.uuid4().hex,
            requested_model=primary.spec.alias,
            conversation_id=request.conversation_id,
            plan=plan,
            relay=self.relay,
            thinking=params.thinking is not None,
            warnings=warnings,
        )

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
        if temperature is not None and spec.provider == "anthropic":
            temperature = min(temperature, 1.0)  # a fallback Claude model after an OpenAI one
        return ChatParams(
            model=spec.model,
            messages=[m.model_dump(mode="json", exclude_none=True) for m in request.messages],
            max_tokens=request.max_tokens or spec.max_tokens or DEFAULT_MAX_TOKENS,
            system=request.system_text(),
            temperature=temperature if sampling else None,
            top_p=request.top_p if sampling else None,
            top_k=request.top_k if sampling else None,
            stop_sequences=request.stop_sequences,
            thinking=thinking,
            metadata=request.metadata or {},
        )

    def _warnings(self, request: ChatRequest, spec: ModelSpec) -> list[str]:
        asked = [
            name for name in ("temperature", "top_p", "top_k") if getattr(request, name) is not None
        ]
        if not asked or (spec.accepts_sampling and not request.thinking):
            return []
        why = "with thinking on" if request.thinking else f"by {spec.model}"
        return [f"{name} is not accepted {why} and was not sent" for name in asked]
