"""OpenTelemetry tracing: one TracerProvider per application, W3C trace context on the wire.

Without an OTLP endpoint spans still get IDs (so logs carry trace_id and
``traceparent`` goes on to the backend) but nothing is recorded or exported:
such spans are made directly as non-recording spans, which costs a fraction
of what the SDK's sampler path does on every request. With one, spans go through a BatchSpanProcessor on a
background thread: a collector that is down never blocks a request, and the
failure is logged once, not once per batch.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from keel_app.config import Config
from keel_app.logs import quiet_opentelemetry

log = logging.getLogger("keel_app.telemetry")

PROPAGATOR = TraceContextTextMapPropagator()


class WarnOnceExporter(SpanExporter):
    """Wrap an exporter so that failing exports are reported by a single warning for the process's life."""

    def __init__(self, inner: SpanExporter, endpoint: str) -> None:
        self._inner = inner
        self._endpoint = endpoint
        self.warned = False
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the worker thread
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.failures += 1
            if not self.warned:
                self.warned = True
                log.warning(
                    "cannot export traces to %s; spans are dropped while it fails (logged once)",
                    self._endpoint,
                    extra={"otlp_endpoint": self._endpoint},
                )
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class Tracing:
    """The tracer provider, tracer and (optional) export pipeline of one application."""

    def __init__(self, config: Config, exporter: SpanExporter | None = None) -> None:
        resource = Resource.create(
            {
                "service.name": config.otel_service_name,
                "service.version": config.version,
                "service.instance.id": config.instance,
            }
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sampler_ratio)),
            resource=resource,
            shutdown_on_exit=False,
        )
        self.processor: BatchSpanProcessor | None = None
        self.exporter: SpanExporter | None = None
        if exporter is None and config.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = f"{config.otlp_endpoint}/v1/traces"
            exporter = WarnOnceExporter(OTLPSpanExporter(endpoint=endpoint), endpoint)
            quiet_opentelemetry()  # WarnOnceExporter reports failures instead, once
        if exporter is not None:
            self.exporter = exporter
            self.processor = BatchSpanProcessor(exporter)
            self.provider.add_span_processor(self.processor)
        self.tracer: Tracer = self.provider.get_tracer("keel_app", config.version)
        # Spans are recorded only when something exports them.
        self.recording = self.processor is not None

    def start_span(
        self,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: Mapping[str, str] | None = None,
    ) -> Span:
        """Start a span as a child of the span in ``parent`` (the current context if None).

        When nothing is exported, return a non-recording span that carries the parent's trace ID
        and sampled flag (or a new trace ID at the root), exactly what the SDK would propagate.
        """
        if self.recording:
            return self.tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        parent_ctx = trace.get_current_span(parent).get_span_context()
        span_id = random.getrandbits(64) or 1
        if parent_ctx.is_valid:
            ctx = SpanContext(parent_ctx.trace_id, span_id, False, parent_ctx.trace_flags, parent_ctx.trace_state)
        else:
            ctx = SpanContext(random.getrandbits(128) or 1, span_id, False, TraceFlags(TraceFlags.DEFAULT))
        return NonRecordingSpan(ctx)

    def shutdown(self, timeout_seconds: float = 3.0) -> None:
        """Flush what is queued and stop the export thread, waiting at most ``timeout_seconds``."""
        if self.processor is None:
            self.provider.shutdown()
            return
        worker = threading.Thread(target=self.provider.shutdown, name="keel-otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_seconds)
        if worker.is_alive():
            already_warned = isinstance(self.exporter, WarnOnceExporter) and self.exporter.warned
            log.log(
                logging.INFO if already_warned else logging.WARNING,
                "trace export did not finish within %gs at shutdown; unsent spans are dropped",
                timeout_seconds,
            )
