"""Optional OpenTelemetry tracing: off unless the standard `OTEL_*` variables turn it on.

`OTEL_TRACES_EXPORTER` (`otlp`, the SDK's default, or `console`) or
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` enable it; the SDK reads
the rest itself (`OTEL_SERVICE_NAME`, headers, sampling). Each request gets a server span
(named after its route template) and each model tried for a reply a child span `upstream`.
The SDK is imported only when tracing is on, and is an optional extra (`chatrelay[otel]`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("chatrelay.tracing")


def wanted(environ: Mapping[str, str]) -> bool:
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(environ: Mapping[str, str], exporter: Any = None) -> Any:
    """A tracer when `environ` (`Settings.otel_variables()`) wants tracing, or an exporter is
    given (in tests), else None."""
    if exporter is None and not wanted(environ):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.error("OTEL_* asks for tracing but the SDK is missing: pip install 'chatrelay[otel]'")
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "chatrelay")})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("tracing on")
    return provider.get_tracer("chatrelay")
