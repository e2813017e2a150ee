"""The Functions host's trace as the parent of what a function invocation does.

The host passes each invocation its trace context (``context.trace_context``:
the W3C ``traceparent`` of the request or message it is handling). The Python
worker makes it current only when its own OpenTelemetry support is on
(``PYTHON_ENABLE_OPENTELEMETRY`` or ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY``);
otherwise a start made by the function would begin a trace of its own,
detached from the request Application Insights shows. ``host_trace`` makes it
current unless a span is current already.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from .._history import TraceContext
from .._tracing import parent_of

__all__ = ["host_trace"]


@contextmanager
def host_trace(context: Any) -> Iterator[None]:
    """Within the block, the invocation's ``context.trace_context`` is the current span."""
    parent = _host_parent(context)
    if parent is None:
        yield
        return
    token = otel_context.attach(parent)
    try:
        yield
    finally:
        otel_context.detach(token)


def _host_parent(context: Any) -> otel_context.Context | None:
    if context is None or trace.get_current_span().get_span_context().is_valid:
        return None
    traced = getattr(context, "trace_context", None)
    traceparent = getattr(traced, "trace_parent", None)
    if not traceparent or not isinstance(traceparent, str):
        return None
    tracestate = getattr(traced, "trace_state", None)
    parent = parent_of(
        TraceContext(
            traceparent=traceparent,
            tracestate=tracestate if isinstance(tracestate, str) and tracestate else None,
        )
    )
    # A malformed traceparent extracts to no span: then no parent at all.
    if parent is None or not trace.get_current_span(parent).get_span_context().is_valid:
        return None
    return parent
