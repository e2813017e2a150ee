"""A work item's trace context as stores keep it: one JSON text column or property."""

from __future__ import annotations

import functools

from .._history import TraceContext

__all__ = ["trace_of", "trace_text"]


def trace_text(context: TraceContext | None) -> str | None:
    """``context`` as stored (JSON), or ``None``."""
    return None if context is None else _text(context)


def trace_of(text: object) -> TraceContext | None:
    """The trace context stored as ``text``; ``None`` for none, or for one that does not parse.

    A lost parent only detaches a span: it must never fail the work.
    """
    if not isinstance(text, str) or not text:
        return None
    return _parsed(text)


# Every activity of a run carries its run's context: the same few texts over and over,
# and the models are frozen, so one parse (and one dump) of each serves them all.
@functools.lru_cache(maxsize=4096)
def _text(context: TraceContext) -> str:
    return context.model_dump_json(exclude_none=True)


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> TraceContext | None:
    try:
        return TraceContext.model_validate_json(text)
    except ValueError:
        return None
