"""Optional OpenTelemetry export: one span per generation request, in the caller's trace.

Off unless `server.otel_traces` is set and opentelemetry-sdk is installed:
  "console"        spans printed as JSON on stdout (for a quick look, and the tests);
  "http(s)://..."  OTLP over HTTP to that endpoint (opentelemetry-exporter-otlp-proto-http).
The W3C trace id from `traceparent` is used with or without OpenTelemetry (it is logged
and returned); this module only adds the export.
"""

from __future__ import annotations

from typing import Any


class TracingUnavailable(RuntimeError):
    pass


class RequestTracer:
    def __init__(self, target: str) -> None:
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SimpleSpanProcessor,
            )
        except ImportError:
            raise TracingUnavailable(
                "server.otel_traces is set but opentelemetry-sdk is not installed "
                "(pip install opentelemetry-sdk)"
            ) from None
        provider = TracerProvider(resource=Resource.create({"service.name": "inferflux"}))
        if target == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif target.startswith(("http://", "https://")):
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            except ImportError:
                raise TracingUnavailable(
                    "OTLP export needs opentelemetry-exporter-otlp-proto-http"
                ) from None
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=target)))
        else:
            raise TracingUnavailable(
                f"server.otel_traces must be 'console' or an http(s) URL, got {target!r}"
            )
        self.provider = provider
        self.tracer = provider.get_tracer("inferflux")

    def start(self, name: str, trace_id: str, parent_span_id: str, attributes: dict) -> Any:
        """A started span in trace `trace_id` (hex), child of the caller's span if known."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        parent = SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(parent_span_id, 16) if parent_span_id else 1,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        context = trace.set_span_in_context(NonRecordingSpan(parent))
        return self.tracer.start_span(name, context=context, attributes=attributes)

    def close(self) -> None:
        self.provider.shutdown()
