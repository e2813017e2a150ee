"""Recording spans in tests: the SDK with an in-memory exporter, and ways to read it.

The provider is process-global (OpenTelemetry allows one), so it records only
while a test holds the ``spans`` fixture (conftest.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


class WhileRecording(SpanProcessor):
    """Passes ended spans on only while a test of this file records (the provider is global)."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.inner = SimpleSpanProcessor(exporter)
        self.on = False
        self.slow: tuple[str, float] | None = None
        """The next span of this name takes this many seconds to end (a slow exporter)."""

    def on_end(self, span: ReadableSpan) -> None:
        if not self.on:
            return
        if self.slow is not None and span.name == self.slow[0]:
            seconds, self.slow = self.slow[1], None
            time.sleep(seconds)
        self.inner.on_end(span)


class Spans:
    """The spans ended so far, and ways to find them."""

    def __init__(self, exporter: InMemorySpanExporter, recording: WhileRecording) -> None:
        self._exporter = exporter
        self._recording = recording

    def slow_down(self, name: str, seconds: float) -> None:
        """The next span named ``name`` takes ``seconds`` to end, in the thread ending it."""
        self._recording.slow = (name, seconds)

    def settle(self) -> None:
        """Wait until no new span has ended for a moment.

        A client sees an instance finish as soon as its commit lands; the worker
        ends the episode's and the execution's spans just after.
        """
        deadline = time.monotonic() + 5
        seen = -1
        while time.monotonic() < deadline and len(self.all()) != seen:
            seen = len(self.all())
            time.sleep(0.1)

    def clear(self) -> None:
        self._exporter.clear()

    def all(self) -> Sequence[ReadableSpan]:
        return self._exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.all()])
        return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


class _StartWatcher(SpanProcessor):
    """A processor that looks at spans as they start (so no span may skip the SDK's)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started.append(span.name)


@contextmanager
def watching_starts() -> Iterator[list[str]]:
    """The names of the spans started in the block, seen by a processor of the global provider."""
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    watcher = _StartWatcher()
    provider.add_span_processor(watcher)
    try:
        yield watcher.started
    finally:
        # The SDK has no way to remove a processor: put the tuple back as it was.
        chain = provider._active_span_processor
        chain._span_processors = tuple(p for p in chain._span_processors if p is not watcher)
