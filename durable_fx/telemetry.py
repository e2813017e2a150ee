"""Turning telemetry on: one switch, read from the environment.

durable_fx emits its spans through the OpenTelemetry API; they go nowhere
until an SDK with an exporter is configured. ``configure_telemetry`` does
that from the standard settings, so that ``durable-fx serve`` (and any app
that calls it) needs no code:

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``):
  spans and metrics to that collector over OTLP/HTTP (protobuf): spans
  batched, metrics every ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60 s); the
  exporters read the rest of their ``OTEL_EXPORTER_OTLP_*`` settings.
- neither: nothing is configured and the API stays a no-op.

An SDK the application configured itself is left alone. ``LogContextFilter``
puts the run's and the trace's ids on log records (``serve`` adds it to its
handler).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import metrics, trace

from ._log_context import LogContextFilter

__all__ = ["LogContextFilter", "configure_telemetry"]

log = logging.getLogger("durable_fx.telemetry")

_OTLP_SETTINGS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_telemetry(
    service_name: str = "durable-fx", environ: Mapping[str, str] | None = None
) -> str | None:
    """Configure the OpenTelemetry SDK from ``environ`` (default ``os.environ``).

    Returns what was configured (``"otlp"``), ``"existing"`` if the application
    had set an SDK already, or ``None`` when no setting asks for telemetry.
    ``OTEL_SERVICE_NAME`` overrides ``service_name``. Raises ``ImportError``
    naming the ``otel`` extra when a setting asks for it and the SDK is missing.
    """
    environ = os.environ if environ is None else environ
    endpoint = next((environ[k] for k in _OTLP_SETTINGS if environ.get(k)), None)
    if endpoint is None:
        return None
    if _sdk_configured():
        return "existing"
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as missing:
        raise ImportError(
            f"telemetry is asked for ({endpoint}) but the OpenTelemetry SDK is missing: "
            f"pip install 'durable-fx[otel]' ({missing})"
        ) from missing
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    resource = Resource.create({"service.name": name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    log.info("spans go to %s over OTLP/HTTP as service %r", endpoint, name)
    return "otlp"


def _sdk_configured() -> bool:
    """Whether a real provider (not the API's default proxy) is set already."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
