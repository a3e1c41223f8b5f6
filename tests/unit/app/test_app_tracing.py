"""api -> backend: trace context and request ID travel, and both services' logs agree on them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from keel_app.config import load_config
from keel_app.telemetry import Tracing, WarnOnceExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


class HeaderRecorder:
    """ASGI middleware that remembers the request headers the wrapped app received."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


def access_lines(lines: list[dict[str, Any]], service: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "keel_app.access" and line["service"] == service]


def call_api_through_backend(
    make_app: Any, running: Any, *, record_spans: bool = False, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, HeaderRecorder, list[Any]]:
    """GET / on an api whose backend runs in-process; returns the response, the backend's view, the spans."""
    exporters = [InMemorySpanExporter(), InMemorySpanExporter()] if record_spans else [None, None]
    backend = make_app("backend", exporter=exporters[0], KEEL_APP_INSTANCE="be-1")
    recorder = HeaderRecorder(backend)
    api = make_app("api", exporter=exporters[1], backend_transport=httpx.ASGITransport(app=recorder))

    async def scenario() -> httpx.Response:
        await backend.startup()
        try:
            async with running(api) as client:
                return await client.get("/", headers=headers or {})
        finally:
            await backend.shutdown()

    response = asyncio.run(scenario())
    spans = [span for exporter in exporters if exporter is not None for span in exporter.get_finished_spans()]
    return response, recorder, spans


def test_trace_and_request_id_cross_services_with_recorded_spans(make_app: Any, running: Any, json_logs: Any) -> None:
    response, recorder, spans = call_api_through_backend(
        make_app, running, record_spans=True, headers={"x-request-id": "req-42"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "api"
    assert body["backend"] == {"service": "backend", "version": "1.0.0", "instance": "be-1"}
    assert response.headers["x-request-id"] == "req-42"

    api_server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == "GET /")
    api_client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    backend_server = next(s for s in spans if s.kind is SpanKind.SERVER and s.name == "GET /work")
    trace_id = api_server.context.trace_id

    (seen,) = recorder.seen
    version, sent_trace_id, sent_span_id, flags = seen["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 0x01  # sampled
    assert int(sent_trace_id, 16) == trace_id
    assert int(sent_span_id, 16) == api_client.context.span_id
    assert seen["x-request-id"] == "req-42"
    assert api_client.parent.span_id == api_server.context.span_id
    assert backend_server.context.trace_id == trace_id
    assert backend_server.parent.span_id == api_client.context.span_id
    assert backend_server.attributes["http.route"] == "/work"

    lines = json_logs()
    (api_line,) = access_lines(lines, "api")
    (backend_line,) = access_lines(lines, "backend")
    for line in (api_line, backend_line):
        assert line["trace_id"] == f"{trace_id:032x}"
        assert line["request_id"] == "req-42"
        assert line["status"] == 200
        assert line["method"] == "GET"
        assert isinstance(line["duration_ms"], float)
    assert api_line["route"] == "/"
    assert backend_line["route"] == "/work"
    assert api_line["span_id"] == f"{api_server.context.span_id:016x}"
    assert backend_line["span_id"] == f"{backend_server.context.span_id:016x}"


def test_ids_without_an_exporter(make_app: Any, running: Any, json_logs: Any) -> None:
    """No OTLP endpoint: nothing is recorded, but IDs exist, propagate and reach the logs."""
    response, recorder, spans = call_api_through_backend(make_app, running)
    assert spans == []
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32

    (seen,) = recorder.seen
    _, sent_trace_id, _, _ = seen["traceparent"].split("-")
    assert seen["x-request-id"] == request_id
    lines = json_logs()
    (api_line,) = access_lines(lines, "api")
    (backend_line,) = access_lines(lines, "backend")
    assert api_line["trace_id"] == backend_line["trace_id"] == sent_trace_id
    assert api_line["request_id"] == backend_line["request_id"] == request_id
    assert api_line["span_id"] != backend_line["span_id"]


def test_incoming_traceparent_is_continued(make_app: Any, running: Any, json_logs: Any) -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response, recorder, spans = call_api_through_backend(
        make_app, running, record_spans=True, headers={"traceparent": incoming}
    )
    assert response.status_code == 200
    assert recorder.seen[0]["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    api_server = next(s for s in spans if s.name == "GET /")
    assert api_server.parent.span_id == 0x00F067AA0BA902B7
    assert all(line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" for line in access_lines(json_logs(), "api"))


def test_export_failures_warn_once(json_logs: Any) -> None:
    class Failing:
        calls = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.calls += 1
            return SpanExportResult.FAILURE

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    inner = Failing()
    exporter = WarnOnceExporter(inner, "http://127.0.0.1:1/v1/traces")  # type: ignore[arg-type]
    for _ in range(5):
        assert exporter.export([]) is SpanExportResult.FAILURE
    warnings = [line for line in json_logs() if line["level"] == "warning"]
    assert inner.calls == 5
    assert len(warnings) == 1
    assert "cannot export traces" in warnings[0]["message"]


def test_dead_collector_does_not_block_requests(make_app: Any, running: Any, free_port: int) -> None:
    """An OTLP endpoint where nothing listens: requests are served at once and shutdown is bounded."""
    config = load_config(
        {"KEEL_APP_SERVICE": "backend", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port}"}
    )
    tracing = Tracing(config)
    assert tracing.recording

    async def scenario() -> float:
        from keel_app.app import KeelApp

        app = KeelApp(config, tracing=tracing)
        await app.startup()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            started = time.monotonic()
            for _ in range(20):
                assert (await client.get("/hello")).status_code == 200
            elapsed = time.monotonic() - started
        await app.shutdown(trace_flush_seconds=1.0)
        return elapsed

    started = time.monotonic()
    elapsed = asyncio.run(scenario())
    assert elapsed < 2.0
    assert time.monotonic() - started < 5.0


def test_start_span_without_exporter_continues_parent() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    tracing = Tracing(load_config({"KEEL_APP_SERVICE": "backend"}))
    assert not tracing.recording
    root = tracing.start_span("GET /", None, SpanKind.SERVER)
    assert root.get_span_context().is_valid
    assert not root.is_recording()
    parent = SpanContext(0xABC, 0xDEF, True, TraceFlags(TraceFlags.SAMPLED))
    child = tracing.start_span("GET /", trace.set_span_in_context(NonRecordingSpan(parent)), SpanKind.SERVER)
    assert child.get_span_context().trace_id == 0xABC
    assert child.get_span_context().span_id not in (0, 0xDEF)
    assert child.get_span_context().trace_flags.sampled
