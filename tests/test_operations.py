"""What an operator watches: /metrics, /readyz, request ids, one log line per request and per
stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import USER_HI, make_settings, serve, stream_chat
from .fakes.anthropic_upstream import FakeAnthropic
from .test_cli import chatrelay, env, free_port, running


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_completed_failed_and_stopped_streams(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    settings = make_settings(
        provider="mock",
        mock_delay_s=0.02,
        max_retries=1,
        retry_base_s=0.01,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/m.db",
    )
    async with serve(settings) as url:
        await stream_chat(client, url, {"messages": USER_HI})
        await stream_chat(
            client, url, {"messages": USER_HI, "metadata": {"mock": {"fail_after": 2}}}
        )
        await stream_chat(
            client,
            url,
            {
                "messages": USER_HI,
                "metadata": {"mock": {"fail_after": 0, "fail_code": "overloaded"}},
            },
        )
        async with client.stream(
            "POST",
            f"{url}/ai/stream/chat",
            json={"messages": USER_HI, "metadata": {"mock": {"words": 200}}},
        ) as response:
            stream_id = response.headers["x-stream-id"]
            async for line in response.aiter_lines():
                if line.startswith('data: {"content"'):
                    await client.post(f"{url}/ai/stream/{stream_id}/stop")
                    break
        text = (await client.get(f"{url}/metrics")).text
    found = samples(text)
    assert value(found, "chatrelay_streams_total", model="mock", reason="completed") == 1
    assert value(found, "chatrelay_streams_total", model="mock", reason="error") == 2
    assert value(found, "chatrelay_streams_total", model="mock", reason="stopped") == 1
    assert value(found, "chatrelay_upstream_errors_total", model="mock", code="overloaded") == 2
    assert value(found, "chatrelay_retries_total", model="mock", code="overloaded") == 1
    assert value(found, "chatrelay_stream_duration_seconds_count", model="mock") == 4
    assert value(found, "chatrelay_time_to_first_token_seconds_count", model="mock") == 3
    assert value(found, "chatrelay_deltas_total", model="mock") >= 14 + 2 + 1
    assert value(found, "chatrelay_tokens_total", model="mock", kind="output") >= 14
    assert value(found, "chatrelay_active_streams") == 0
    assert (
        value(
            found, "chatrelay_requests_total", route="/ai/stream/chat", method="POST", status="200"
        )
        == 4
    )
    assert (
        value(
            found,
            "chatrelay_requests_total",
            route="/ai/stream/{stream_id}/stop",
            method="POST",
            status="200",
        )
        == 1
    )
    assert stream_id not in text  # no ids as label values


async def test_rate_limit_refusals_are_counted(client: httpx.AsyncClient, tmp_path: Path) -> None:
    settings = make_settings(
        provider="mock", limits_public="rpm=1", database_url=f"sqlite+aiosqlite:///{tmp_path}/r.db"
    )
    async with serve(settings) as url:
        await client.post(f"{url}/ai/stream/chat", json={"messages": USER_HI})
        refused = await client.post(f"{url}/ai/stream/chat", json={"messages": USER_HI})
        found = samples((await client.get(f"{url}/metrics")).text)
    assert refused.status_code == 429
    assert value(found, "chatrelay_rate_limited_total", limit="requests_per_minute") == 1


async def test_request_ids_are_echoed_kept_and_quoted_in_errors(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with serve(
        make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/i.db")
    ) as url:
        mine = await client.get(f"{url}/healthz", headers={"x-request-id": "trace-42"})
        odd = await client.get(f"{url}/healthz", headers={"x-request-id": "bad id\twith tab"})
        failed = await client.post(f"{url}/ai/stream/chat", json={"messages": []})
        streamed = await stream_chat(
            client, url, {"messages": USER_HI, "metadata": {"mock": {"fail_after": 1}}}
        )
    assert mine.headers["x-request-id"] == "trace-42"
    assert (
        odd.headers["x-request-id"] != "bad id\twith tab" and len(odd.headers["x-request-id"]) == 32
    )
    assert failed.json()["error"]["request_id"] == failed.headers["x-request-id"]
    frame = next(e for e in streamed.events if e.data.startswith('{"error"'))
    assert json.loads(frame.data)["request_id"] == streamed.headers["x-request-id"]


async def test_readyz_checks_the_database_and_the_default_model(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.gpt]\nprovider = "openai"\nmodel = "gpt-5.4-mini"\napi_key_env = "NOT_SET_HERE"\n'
    )
    database = f"sqlite+aiosqlite:///{tmp_path}/z.db"
    async with serve(make_settings(provider="mock", database_url=database)) as url:
        ready = await client.get(f"{url}/readyz")
    async with serve(make_settings(models_file=models, database_url=database)) as url:
        unready = await client.get(f"{url}/readyz")
        alive = await client.get(f"{url}/healthz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "not used", "provider": "ok"},  # the mock
    }
    assert unready.status_code == 503
    assert unready.json()["checks"]["provider"] == "default model unavailable"
    assert alive.status_code == 200


async def test_readyz_says_the_provider_is_configured_and_the_probe_reaches_it(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Plain /readyz does not reach the upstream, and says so (`configured`);
    `?probe=upstream` does: an Anthropic upstream on a closed port is unreachable (503)."""
    closed = free_port()  # bound then released: nothing listens there
    settings = make_settings(
        provider="anthropic",
        anthropic_api_key="sk-ant-test-key",
        anthropic_base_url=f"http://127.0.0.1:{closed}",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/u.db",
    )
    async with serve(settings) as url:
        plain = await client.get(f"{url}/readyz")
        probed = await client.get(f"{url}/readyz", params={"probe": "upstream"})
        bad = await client.get(f"{url}/readyz", params={"probe": "everything"})
    assert plain.status_code == 200, plain.text
    assert plain.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "not used", "provider": "configured"},
    }
    assert probed.status_code == 503, probed.text
    assert probed.json() == {
        "status": "not ready",
        "checks": {
            "database": "ok",
            "redis": "not used",
            "provider": "unreachable: connection refused",
        },
        "upstreams": {"claude-sonnet-5-5": "unreachable: connection refused"},
    }
    assert str(closed) not in probed.text  # no addresses on an open route
    assert bad.status_code == 422


async def test_readyz_probe_reaches_a_listening_upstream_without_spending_tokens(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with FakeAnthropic() as fake:
        settings = make_settings(
            provider="anthropic",
            anthropic_api_key="sk-ant-test-key",
            anthropic_base_url=fake.base_url,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/v.db",
        )
        async with serve(settings) as url:
            probed = await client.get(f"{url}/readyz?probe=upstream")
            again = await client.get(f"{url}/readyz?probe=upstream")
    assert probed.status_code == 200, probed.text
    assert probed.json()["checks"]["provider"] == "reachable"
    assert probed.json()["upstreams"] == {"claude-sonnet-5-5": "reachable"}
    assert again.json() == probed.json()
    # One plain GET, shared by both probes (cached): no key sent, no message requested.
    assert [(r.method, r.api_key) for r in fake.requests] == [("GET", None)]


def test_one_json_log_line_per_request_and_per_finished_stream(tmp_path: Path) -> None:
    port = free_port()
    environ = env(CHATRELAY_LOG_FORMAT="json", DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/l.db")
    with running(chatrelay("serve", "--port", str(port)), environ, port, tmp_path) as server:
        response = httpx.post(
            f"http://127.0.0.1:{port}/ai/stream/chat",
            json={"messages": USER_HI},
            headers={"x-request-id": "req-abc"},
            timeout=10,
        )
    assert response.status_code == 200
    lines = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    streams = [line for line in lines if line.get("logger") == "chatrelay.chat"]
    requests = [
        line
        for line in lines
        if line.get("logger") == "chatrelay.access" and line.get("request_id") == "req-abc"
    ]
    [stream] = streams
    assert stream["request_id"] == "req-abc"
    assert stream["principal"] == "public"
    assert stream["model"] == "mock" and stream["outcome"] == "completed"
    assert stream["stop_reason"] == "end_turn"
    assert stream["input_tokens"] == 2 and stream["output_tokens"] == 14
    assert stream["ttft_ms"] is not None and stream["duration_ms"] >= stream["ttft_ms"]
    [request] = requests
    assert request["route"] == "/ai/stream/chat" and request["status"] == 200
    assert request["method"] == "POST" and request["principal"] == "public"


async def traced_chat(client: httpx.AsyncClient, tmp_path: Path) -> Any:
    """One chat through a mock-provider server with tracing to memory; its span exporter."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from chatrelay.app import create_app

    from .conftest import serve_app

    app = create_app(
        make_settings(provider="mock", database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")
    )
    exporter = InMemorySpanExporter()
    app.state.span_exporter = exporter
    async with serve_app(app) as url:
        await stream_chat(client, url, {"messages": USER_HI})
    return exporter


async def test_tracing_gives_a_server_span_per_request_and_an_upstream_child(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    from chatrelay.tracing import wanted

    exporter = await traced_chat(client, tmp_path)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    server, upstream = spans["POST /ai/stream/chat"], spans["upstream"]
    assert server.attributes["http.response.status_code"] == 200
    assert upstream.parent is not None
    assert upstream.parent.span_id == server.context.span_id
    assert upstream.attributes["chatrelay.model"] == "mock"
    assert upstream.attributes["chatrelay.outcome"] == "completed"
    assert not wanted({}) and not wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})


async def test_a_global_tracer_provider_does_not_double_the_spans(
    client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto-instrumentation (or any library) setting OpenTelemetry's global provider does not
    make the framework trace requests as well: each request is traced once, by chatrelay."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    global_spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(global_spans))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    ours = await traced_chat(client, tmp_path)
    assert [span.name for span in global_spans.get_finished_spans()] == []
    assert "POST /ai/stream/chat" in [span.name for span in ours.get_finished_spans()]
