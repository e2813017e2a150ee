"""A work item's trace context as stores keep it: one JSON text column or property."""

from __future__ import annotations

from .._history import TraceContext

__all__ = ["trace_of", "trace_text"]


def trace_text(context: TraceContext | None) -> str | None:
    """``context`` as stored (JSON), or ``None``."""
    return None if context is None else context.model_dump_json(exclude_none=True)


def trace_of(text: object) -> TraceContext | None:
    """The trace context stored as ``text``; ``None`` for none, or for one that does not parse.

    A lost parent only detaches a span: it must never fail the work.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        return TraceContext.model_validate_json(text)
    except ValueError:
        return None
