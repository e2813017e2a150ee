"""Turning telemetry on: one switch, read from the environment.

durable_fx emits its spans and metrics through the OpenTelemetry API; they go
nowhere until an SDK with an exporter is configured. ``configure_telemetry``
does that from the standard settings, so that ``durable-fx serve`` and a
``DurableApp`` under the Functions host need no code:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: the Azure Monitor distro
  (``azure-monitor-opentelemetry``) sends spans, metrics and log records to
  Application Insights. Its Azure SDK instrumentation stays off: the stores
  poll their tables and queues, and each poll would be a dependency. Every
  trace is kept unless ``OTEL_TRACES_SAMPLER`` says otherwise (the distro's
  own default keeps about five spans a second, chosen span by span, which
  tears a run's trace apart).
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``):
  spans and metrics to that collector over OTLP/HTTP (protobuf): spans
  batched, metrics every ``OTEL_METRIC_EXPORT_INTERVAL`` ms (60 s); the
  exporters read the rest of their ``OTEL_EXPORTER_OTLP_*`` settings. With
  both settings, both receive everything.
- neither: nothing is configured and the API stays a no-op.

An SDK configured already (by the application, or by the Functions worker
with ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``) is left alone.
``LogContextFilter`` puts the run's and the trace's ids on log records
(``serve`` adds it to its handler, and it is added to the distro's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from ._log_context import LogContextFilter

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource

__all__ = ["LogContextFilter", "configure_telemetry"]

log = logging.getLogger("durable_fx.telemetry")

APPLICATION_INSIGHTS_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
_OTLP_SETTINGS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_telemetry(
    service_name: str = "durable-fx", environ: Mapping[str, str] | None = None
) -> str | None:
    """Configure the OpenTelemetry SDK from ``environ`` (default ``os.environ``).

    Returns what was configured (``"azure-monitor"``, ``"otlp"`` or
    ``"azure-monitor+otlp"``), ``"existing"`` if an SDK was set already, or
    ``None`` when no setting asks for telemetry. ``OTEL_SERVICE_NAME``
    overrides ``service_name`` (Application Insights shows it as the cloud
    role). Raises ``ImportError`` naming the ``otel`` extra when a setting
    asks for it and the packages are missing.
    """
    environ = os.environ if environ is None else environ
    connection = environ.get(APPLICATION_INSIGHTS_SETTING) or None
    endpoint = next((environ[k] for k in _OTLP_SETTINGS if environ.get(k)), None)
    if connection is None and endpoint is None:
        return None
    if _sdk_configured():
        return "existing"
    # Named by its setting: a connection string holds the instrumentation key.
    wanted = APPLICATION_INSIGHTS_SETTING if connection else endpoint
    try:
        from opentelemetry.sdk.resources import Resource
    except ImportError as missing:
        raise _missing(wanted, missing) from missing
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    resource = Resource.create({"service.name": name})
    otlp = _otlp_exporters(wanted) if endpoint is not None else None
    if connection is None:
        assert otlp is not None
        _configure_otlp_only(resource, otlp)
        log.info("spans and metrics go to %s over OTLP/HTTP as service %r", endpoint, name)
        return "otlp"
    _configure_azure_monitor(connection, resource, otlp)
    log.info("spans, metrics and logs go to Application Insights as service %r", name)
    if otlp is not None:
        log.info("and over OTLP/HTTP to %s", endpoint)
        return "azure-monitor+otlp"
    return "azure-monitor"


def _otlp_exporters(wanted: str | None) -> tuple[Any, Any]:
    """A span processor and a metric reader exporting over OTLP/HTTP."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as missing:
        raise _missing(wanted, missing) from missing
    return (
        BatchSpanProcessor(OTLPSpanExporter()),
        PeriodicExportingMetricReader(OTLPMetricExporter()),
    )


def _configure_otlp_only(resource: Resource, otlp: tuple[Any, Any]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    span_processor, metric_reader = otlp
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(span_processor)
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[metric_reader]))


def _configure_azure_monitor(
    connection: str, resource: Resource, otlp: tuple[Any, Any] | None
) -> None:
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
    except ImportError as missing:
        raise _missing(APPLICATION_INSIGHTS_SETTING, missing) from missing
    extra: dict[str, Any] = {}
    if otlp is not None:
        extra.update(span_processors=[otlp[0]], metric_readers=[otlp[1]])
    if not os.environ.get("OTEL_TRACES_SAMPLER"):
        # The distro's default sampler keeps about 5 spans a second, deciding span by span as
        # they end; a run's spans end hours apart, so it kept activities of runs it dropped.
        # A fixed ratio decides by trace id: a whole run is kept or dropped.
        extra["sampling_ratio"] = 1.0
    root = logging.getLogger()
    before = list(root.handlers)
    configure_azure_monitor(
        connection_string=connection,
        resource=resource,
        instrumentation_options={"azure_sdk": {"enabled": False}},
        **extra,
    )
    added = [handler for handler in root.handlers if handler not in before]
    # The distro's log handler exports records: with the run's ids on them.
    for handler in added:
        handler.addFilter(LogContextFilter())
    framework = logging.getLogger("durable_fx")
    if not framework.propagate:
        # serve gives durable_fx's records a handler of their own and keeps them from the
        # root (each line printed once); the distro's handler on the root needs them too.
        for handler in added:
            framework.addHandler(handler)


def _missing(wanted: str | None, missing: ImportError) -> ImportError:
    return ImportError(
        f"telemetry is asked for ({wanted}) but the OpenTelemetry packages are missing: "
        f"pip install 'durable-fx[otel]' ({missing})"
    )


def _sdk_configured() -> bool:
    """Whether a real provider (not the API's default proxy) is set already."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
