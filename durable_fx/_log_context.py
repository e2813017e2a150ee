"""What a log line is about: the run the framework is working on, and its trace.

The worker marks the instance (or activity) it runs for the duration
(``running``); ``LogContextFilter`` copies that and the current span's ids
onto every record that passes it, so log lines join up with traces in a
collector. Context variables carry it, into the activity's thread too.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token

from opentelemetry import trace

__all__ = ["LogContextFilter", "log_fields", "running"]

_RUN: ContextVar[dict[str, str] | None] = ContextVar("durable_fx_run", default=None)


class running:
    """Log records made in this block (this task, its threads) are about ``fields``.

    A class, not a generator: it wraps every episode and activity.
    """

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str | None) -> None:
        self._fields = {k: v for k, v in fields.items() if v is not None}
        self._token: Token[dict[str, str] | None] | None = None

    def __enter__(self) -> None:
        self._token = _RUN.set(self._fields)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _RUN.reset(self._token)


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
