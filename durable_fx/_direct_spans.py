"""Spans handed straight to the OpenTelemetry SDK's span processors.

The SDK's own ``Span`` costs tens of microseconds: a lock, attribute
validation, a copy made when it ends. A W1 orchestration emits nine
spans, most of them after the fact, so that cost is most of tracing's.
When the configured pipeline cannot tell the difference, durable_fx builds the
SDK's ``ReadableSpan`` itself and gives it to the processors' ``on_end``: the
tracer must be the SDK's, enabled, and every processor one that does nothing
when a span starts or is ending (the SDK's batch and simple processors). Any
other pipeline (a processor that looks at live spans, a tracer from another
SDK) gets spans from ``tracer.start_span`` as before.

Sampling, ids, trace flags, resource, scope and span limits follow the SDK's
rules (its default sampler and always-on by their documented rule, any other
sampler asked); tests compare the exported spans of both paths field by field.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["DirectSpan", "direct_spans"]

_PLAIN = frozenset((str, bool, int, float))  # values the SDK keeps as they are
# Shared, not one per span: a finished span lives on in an exporter's queue, and
# every object it holds is one more for each garbage collection to walk.
_FLAGS = {flags: TraceFlags(flags) for flags in range(4)}  # SAMPLED | RANDOM_TRACE_ID
_UNSET = Status(StatusCode.UNSET)


class _Enabled:
    is_enabled = True  # an SDK from before tracer configurators: every tracer records


_ENABLED = _Enabled()


def direct_spans(tracer: trace.Tracer) -> DirectSpans | None:
    """A writer of ``tracer``'s spans that skips the SDK's ``Span``, if that is safe."""
    if type(tracer).__module__ != "opentelemetry.sdk.trace":
        return None  # no SDK, or another one: the SDK is an optional extra
    writer: DirectSpans | None = getattr(tracer, "_durable_fx_direct", None)
    if writer is None:
        writer = DirectSpans(tracer)
        tracer._durable_fx_direct = writer  # type: ignore[attr-defined]
    return writer if writer.usable() else None


class DirectSpans:
    """One SDK tracer's sampler, ids and processors, used without its ``Span`` class."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, sampling
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        self._tracer = tracer
        self._readable = ReadableSpan
        # The SDK's default sampler (and always-on): what they decide is documented,
        # so it is applied here rather than asked for, three context lookups a span.
        self._follows_parent = (sampling.DEFAULT_ON, sampling.ALWAYS_ON)
        self._sampled: Any = sampling.Decision.RECORD_AND_SAMPLE  # the SDK types it loosely
        self._dropped: Any = sampling.Decision.DROP
        quiet = (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)  # hooks that do nothing
        self._quiet_starts = {cls.on_start for cls in quiet}
        self._quiet_endings = {cls._on_ending for cls in quiet}
        metrics = getattr(tracer, "_tracer_metrics", None)  # the SDK's own span counts, if on
        self._metrics = None if type(metrics).__name__ == "NoOpTracerMetrics" else metrics
        self._checked: tuple[Any, bool] = (None, False)  # (processors, whether all are quiet)

    def usable(self) -> bool:
        """Whether every processor only needs finished spans (checked again when they change)."""
        tracer = self._tracer
        processors = getattr(tracer.span_processor, "_span_processors", None)
        checked, quiet = self._checked
        if processors is not checked:
            quiet = processors is not None and self._quiet(processors)
            self._checked = (processors, quiet)  # one assignment: threads see both or neither
        return quiet and getattr(tracer, "_tracer_config", _ENABLED).is_enabled

    def _quiet(self, processors: Sequence[Any]) -> bool:
        limits = getattr(self._tracer, "_span_limits", None)
        if limits is None or not hasattr(self._tracer, "_instrumentation_scope"):
            return False
        return all(
            getattr(type(p), "on_start", None) in self._quiet_starts
            and getattr(type(p), "_on_ending", None) in self._quiet_endings
            for p in processors
        )

    def start(
        self,
        name: str,
        context: Context | None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[Link] = (),
        start_time: int | None = None,
        span_id: int | None = None,
        trace_id: int | None = None,
    ) -> trace.Span:
        """A span started as the SDK's ``Tracer.start_span`` would start it.

        ``span_id`` (and, for a root, ``trace_id``) replace the generated ids.
        An unsampled span is a ``NonRecordingSpan`` carrying the decision on.
        """
        tracer = self._tracer
        ids = tracer.id_generator
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        parent_flags: TraceFlags | None = None
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = trace_id or ids.generate_trace_id()
            random_trace_id = ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            parent_flags = parent.trace_flags  # a property: read once
            random_trace_id = parent_flags.random_trace_id
        sampler = tracer.sampler
        if sampler in self._follows_parent:
            sampled = (
                sampler is self._follows_parent[1] or parent_flags is None or parent_flags.sampled
            )
            decision = self._sampled if sampled else self._dropped
            state = parent.trace_state if parent is not None else None
            recording = sampled
        else:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            decision = result.decision
            state, attributes = result.trace_state, result.attributes
            sampled, recording = decision.is_sampled(), decision.is_recording()
        flags = (TraceFlags.SAMPLED if sampled else 0) | (
            TraceFlags.RANDOM_TRACE_ID if random_trace_id else 0
        )
        span_context = SpanContext(
            trace_id,
            span_id or ids.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[flags],
            trace_state=state,
        )
        ended = self._metrics.start_span(parent, decision) if self._metrics is not None else None
        if not recording:
            return trace.NonRecordingSpan(span_context)
        return DirectSpan(
            self,
            name,
            span_context,
            parent,
            kind=kind,
            attributes=dict(attributes) if attributes else {},
            links=links,
            start_time=start_time if start_time is not None else time.time_ns(),
            on_end=ended,
        )

    def finish(self, span: DirectSpan, end_time: int) -> None:
        """Hand ``span``, ended at ``end_time``, to the processors as a ``ReadableSpan``."""
        tracer = self._tracer
        limits = tracer._span_limits
        readable = self._readable(
            name=span.name,
            context=span.get_span_context(),
            parent=span.parent,
            resource=tracer.resource,
            attributes=span.bounded_attributes(limits),
            # Most spans have neither: no call, and no empty list for the exporter to keep
            # (one more object for every garbage collection to walk, per span).
            events=span.bounded_events(limits) if span._events else (),
            links=span.bounded_links(limits) if span._links else (),
            kind=span.kind,
            instrumentation_info=tracer.instrumentation_info,
            status=span.status,
            start_time=span.start_time,
            end_time=end_time,
            instrumentation_scope=tracer._instrumentation_scope,
        )
        tracer.span_processor.on_end(readable)


class DirectSpan(trace.Span):
    """A recording span that becomes a ``ReadableSpan`` when it ends, and nothing before.

    Used from one task or thread at a time, as durable_fx does (an activity's
    code may set attributes on it while it is current).
    """

    def __init__(
        self,
        writer: DirectSpans,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        *,
        kind: SpanKind,
        attributes: dict[str, Any],
        links: Sequence[Link],
        start_time: int,
        on_end: Any,
    ) -> None:
        self._writer = writer
        self.name = name
        self._context = context
        self.parent = parent
        self.kind = kind
        self._attributes = attributes
        # Attributes durable_fx sets are plain; anything else the SDK's rules clean at the end.
        self._clean = {*map(type, attributes.values())} <= _PLAIN
        # Tuples, grown when used: most spans get no event and no link, and make no list.
        self._events: tuple[Any, ...] = ()
        self._links: tuple[Link, ...] = (
            tuple(link for link in links if _valid_link(link.context, link.attributes))
            if links
            else ()
        )
        self.start_time = start_time
        self.status = _UNSET
        self._on_end = on_end
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._ended:
            return
        if type(value) not in _PLAIN:
            self._clean = False
        self._attributes[key] = value

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if not self._ended:
            at = timestamp if timestamp is not None else time.time_ns()
            self._events += ((name, attributes, at),)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not self._ended and _valid_link(context, attributes):
            self._links += (Link(context, attributes),)

    def update_name(self, name: str) -> None:
        if not self._ended:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET changes nothing.
        if self._ended or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self.status = status
        elif status is not StatusCode.UNSET:
            self.status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        kind = type(exception)
        module, qualname = kind.__module__, kind.__qualname__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        self.add_event("exception", {**recorded, **(attributes or {})}, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            self._on_end()
        self._writer.finish(self, end_time if end_time is not None else time.time_ns())

    def bounded_attributes(self, limits: Any) -> Mapping[str, Any]:
        """The attributes under the span limits, cleaned by the SDK when not all plain."""
        most = limits.max_span_attributes
        if (
            self._clean
            and (most is None or len(self._attributes) <= most)
            and limits.max_span_attribute_length is None
        ):
            return self._attributes
        from opentelemetry.attributes import BoundedAttributes

        return BoundedAttributes(
            limits.max_span_attributes,
            self._attributes,
            immutable=True,
            max_value_len=limits.max_span_attribute_length,
        )

    def bounded_events(self, limits: Any) -> Sequence[Any]:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.trace import Event
        from opentelemetry.sdk.util import BoundedList

        events: BoundedList[Any] = BoundedList(limits.max_events)
        for name, attributes, timestamp in self._events:
            bounded = BoundedAttributes(
                limits.max_event_attributes,
                attributes,
                max_value_len=limits.max_attribute_length,
                immutable=True,
            )
            events.append(Event(name, bounded, timestamp))
        return events

    def bounded_links(self, limits: Any) -> Sequence[Link]:
        from opentelemetry.attributes import BoundedAttributes
        from opentelemetry.sdk.util import BoundedList

        links: BoundedList[Link] = BoundedList(limits.max_links)
        for link in self._links:
            bounded = BoundedAttributes(
                limits.max_link_attributes,
                link.attributes,
                max_value_len=limits.max_attribute_length,
                immutable=True,
            )
            links.append(Link(link.context, bounded))
        return links


def _valid_link(context: SpanContext | None, attributes: types.Attributes) -> bool:
    return bool(context and (context.is_valid or attributes or context.trace_state))
