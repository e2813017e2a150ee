"""What a log line is about: the run the framework is working on, and its trace.

The worker marks the instance (or activity) it runs for the duration
(``running``); ``LogContextFilter`` copies that and the current span's ids
onto every record that passes it, so log lines join up with traces in a
collector. Context variables carry it, into the activity's thread too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from opentelemetry import trace

__all__ = ["LogContextFilter", "log_fields", "running"]

_RUN: ContextVar[dict[str, str] | None] = ContextVar("durable_fx_run", default=None)


@contextmanager
def running(**fields: str | None) -> Iterator[None]:
    """Log records made in this block (this task, its threads) are about ``fields``."""
    token = _RUN.set({k: v for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _RUN.reset(token)


def log_fields() -> dict[str, str]:
    """The run being worked on and the current span's ids, as log fields."""
    fields = dict(_RUN.get() or {})
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


class LogContextFilter(logging.Filter):
    """Adds what a record is about to it: the run's and the trace's ids.

    ``instance_id``, ``orchestration`` (or ``activity``), ``execution_id``,
    ``trace_id`` and ``span_id``, as attributes and together in
    ``record.durable_fx``. Add it to a handler: ``handler.addFilter(LogContextFilter())``. A field a
    record already has (``extra=...``) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = log_fields()
        record.durable_fx = fields
        for key, value in fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
