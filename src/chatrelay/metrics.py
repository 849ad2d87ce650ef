"""Prometheus metrics, in a registry of the app's own (several apps may live in one process).

Labels are bounded: routes are path templates, models are configured aliases (an id a
pattern serves counts under the pattern), codes and reasons come from fixed lists; no
conversation, stream or user ids.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# First tokens and stream lengths of chat replies: milliseconds to minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 40, 60, 120, 300, 600)


class Metrics:
    """Every instrument the service reports, and the one place that updates them."""

    def __init__(self, active_streams: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "chatrelay_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.streams = Counter(
            "chatrelay_streams",
            "Chat replies by model and how they ended",
            ["model", "reason"],
            registry=r,
        )
        self.active = Gauge(
            "chatrelay_active_streams", "Replies being generated on this instance", registry=r
        )
        self.active.set_function(active_streams)
        self.ttft = Histogram(
            "chatrelay_time_to_first_token_seconds",
            "From request to the first text",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "chatrelay_stream_duration_seconds",
            "From request to the end of the reply",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.deltas = Counter(
            "chatrelay_deltas", "Text and thinking deltas relayed", ["model"], registry=r
        )
        self.tokens = Counter(
            "chatrelay_tokens",
            "Tokens used, by model and kind (input, output)",
            ["model", "kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "chatrelay_upstream_errors",
            "Upstream failures by model and code",
            ["model", "code"],
            registry=r,
        )
        self.retries = Counter(
            "chatrelay_retries",
            "Retries of a model before its first token",
            ["model", "code"],
            registry=r,
        )
        self.fallbacks = Counter(
            "chatrelay_fallbacks",
            "Fallbacks from one model to the next",
            ["from_model", "to_model"],
            registry=r,
        )
        self.rate_limited = Counter(
            "chatrelay_rate_limited",
            "Requests refused by a spending limit",
            ["limit"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def request(self, route: str, method: str, status: int) -> None:
        self.requests.labels(route, method, str(status)).inc()

    def reply(
        self,
        model: str,
        reason: str,
        error_code: str | None,
        deltas: int,
        ttft_s: float | None,
        duration_s: float,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> None:
        self.streams.labels(model, reason).inc()
        self.duration.labels(model).observe(duration_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        if deltas:
            self.deltas.labels(model).inc(deltas)
        if input_tokens:
            self.tokens.labels(model, "input").inc(input_tokens)
        if output_tokens:
            self.tokens.labels(model, "output").inc(output_tokens)
        if error_code is not None:
            self.upstream_errors.labels(model, error_code).inc()

    def retry(self, model: str, code: str) -> None:
        self.retries.labels(model, code).inc()

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.labels(from_model, to_model).inc()

    def limited(self, limit: str) -> None:
        self.rate_limited.labels(limit).inc()
