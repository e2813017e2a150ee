"""Distributed tracing: the spans of a run, and the trace context its work carries.

Only OpenTelemetry's API is used: with no SDK configured every call is a
no-op. A run lives across episodes, processes and days, so no span stays
open across them. Instead the ids are fixed in advance: an execution's span
(``orchestration:NAME``) has a span id derived from its execution id and the
trace id of the span that started it (recorded in ``ExecutionStarted``), so
every episode, activity, timer and child can name it as parent while it
runs, and it is emitted once, when the execution ends, with its real start
time. Spans come from live work only: a replay emits nothing.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._direct_spans import direct_spans
from ._history import ExecutionStarted, FailureDetails, TraceContext

__all__ = [
    "ORCHESTRATION_TYPE",
    "child_trace_context",
    "current_trace_context",
    "emit_execution_span",
    "emit_span",
    "execution_parent",
    "execution_span_context",
    "execution_trace_context",
    "parent_of",
    "recording",
    "span_in",
    "trace_context_of",
    "tracer",
]

TRACER_NAME = "durable_fx"
EXECUTIONS_TRACER_NAME = f"{TRACER_NAME}.executions"  # its ids are chosen, not generated
ORCHESTRATION_TYPE = "orchestration"

_W3C = TraceContextTextMapPropagator()
_CHOSEN_SPAN_ID: ContextVar[int | None] = ContextVar("durable_fx_chosen_span_id", default=None)
_CHOSEN_TRACE_ID: ContextVar[int | None] = ContextVar("durable_fx_chosen_trace_id", default=None)


def tracer() -> Tracer:
    """durable_fx's tracer (the global provider's; a no-op one until an SDK is set)."""
    return _tracer_of(trace.get_tracer_provider(), TRACER_NAME)


@functools.lru_cache(maxsize=8)
def _tracer_of(provider: trace.TracerProvider, name: str) -> Tracer:
    # The SDK makes a new tracer on every call; a provider is set once per process.
    return provider.get_tracer(name)


def recording() -> bool:
    """Whether an SDK is configured: without one, spans are no-ops not worth preparing."""
    return _records(type(trace.get_tracer_provider()))


_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


@functools.lru_cache(maxsize=8)
def _records(provider: type) -> bool:
    # Asked a dozen times an episode; the providers are ABCs, whose isinstance is slow.
    return not issubclass(provider, _NO_SDK)


def current_trace_context() -> TraceContext | None:
    """The active span as a W3C trace context, or ``None`` if there is none."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return _from_carrier(carrier)


def trace_context_of(span: Span) -> TraceContext | None:
    """``span`` as a W3C trace context; the current span's if ``span`` records nothing."""
    context = span.get_span_context()
    if not context.is_valid:
        return current_trace_context()
    state = context.trace_state.to_header() if context.trace_state else None
    made = TraceContext.model_construct(traceparent=_traceparent(context), tracestate=state or None)
    # A worker in this process looks it up as its run's parent: known here, it need not be parsed.
    remote = SpanContext(
        context.trace_id,
        context.span_id,
        is_remote=True,
        trace_flags=context.trace_flags,
        trace_state=context.trace_state,
    )
    _PARENTS.remember(made, remote)
    return made


def _traceparent(context: SpanContext) -> str:
    """What the W3C propagator writes for ``context``, without a carrier to parse."""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def parent_of(context: TraceContext | None) -> Context | None:
    """A context whose current span is the one ``context`` names (``None``: no parent)."""
    if context is None:
        return None
    return _PARENTS.of(context.traceparent, context.tracestate)


class _Parents:
    """Contexts for W3C trace contexts: each parsed once, or known without parsing.

    A run's parent is looked up again for every episode and activity, and an
    execution's own trace context, which its activities and children carry, is
    made here (``remember``). Contexts are immutable, so one serves every thread.
    The oldest entry goes first. Reads take no lock: a dict's ``get`` is atomic.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._contexts: dict[tuple[str, str | None], Context] = {}
        self._writing = threading.Lock()  # finding the oldest iterates the dict

    def of(self, traceparent: str, tracestate: str | None) -> Context:
        key = (traceparent, tracestate)
        context = self._contexts.get(key)
        if context is None:
            carrier = {"traceparent": traceparent}
            if tracestate:
                carrier["tracestate"] = tracestate
            context = self._keep(key, _W3C.extract(carrier))
        return context

    def remember(self, made: TraceContext, span: SpanContext) -> None:
        """Keep the context of ``span``, whose trace context is ``made``, so it is never parsed."""
        context = trace.set_span_in_context(NonRecordingSpan(span), Context())
        self._keep((made.traceparent, made.tracestate), context)

    def _keep(self, key: tuple[str, str | None], context: Context) -> Context:
        contexts = self._contexts
        with self._writing:
            if len(contexts) >= self._size:
                del contexts[next(iter(contexts))]
            contexts[key] = context
        return context


_PARENTS = _Parents(4096)


def execution_span_context(started: ExecutionStarted) -> SpanContext:
    """The ids of ``started``'s execution span: fixed by its execution id and its parent."""
    parent = started.trace_context
    return _execution_span_context(
        started.execution_id,
        parent.traceparent if parent is not None else None,
        parent.tracestate if parent is not None else None,
    )


@functools.lru_cache(maxsize=4096)
def _execution_span_context(
    execution_id: str, traceparent: str | None, tracestate: str | None
) -> SpanContext:
    traced = TraceContext(traceparent=traceparent, tracestate=tracestate) if traceparent else None
    parent = _parent_span_context(traced)
    if parent is not None:
        trace_id, flags = parent.trace_id, parent.trace_flags
        state = parent.trace_state
    else:  # started without a trace: the execution's span is a root
        trace_id, flags = _derived_id(execution_id, 16), TraceFlags(TraceFlags.SAMPLED)
        state = None
    span_id = _derived_id(execution_id, 8)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags, trace_state=state)


def execution_trace_context(started: ExecutionStarted) -> TraceContext:
    """``started``'s execution span as the parent its activities and children record."""
    parent = started.trace_context
    return _execution_trace_context(
        started.execution_id,
        parent.traceparent if parent is not None else None,
        parent.tracestate if parent is not None else None,
    )


@functools.lru_cache(maxsize=4096)
def _execution_trace_context(
    execution_id: str, traceparent: str | None, tracestate: str | None
) -> TraceContext:
    span = _execution_span_context(execution_id, traceparent, tracestate)
    # The execution's span carries on its parent's trace state.
    made = TraceContext(traceparent=_traceparent(span), tracestate=tracestate or None)
    # Its episodes and activities look it up: known here, it need not be parsed.
    _PARENTS.remember(made, span)
    return made


def child_trace_context(started: ExecutionStarted) -> TraceContext | None:
    """The parent ``started``'s activities and children record: its execution span.

    ``None`` when there is no trace to continue and nothing here records one.
    """
    if started.trace_context is None and not recording():
        return None
    return execution_trace_context(started)


def execution_parent(started: ExecutionStarted) -> Context:
    """A context whose current span is ``started``'s execution span, for its children."""
    parent = started.trace_context
    return _execution_parent(
        started.execution_id,
        parent.traceparent if parent is not None else None,
        parent.tracestate if parent is not None else None,
    )


@functools.lru_cache(maxsize=4096)
def _execution_parent(
    execution_id: str, traceparent: str | None, tracestate: str | None
) -> Context:
    # Asked twice an episode: the context remembered with the execution's trace context.
    made = _execution_trace_context(execution_id, traceparent, tracestate)
    return _PARENTS.of(made.traceparent, made.tracestate)


def emit_execution_span(
    started: ExecutionStarted,
    *,
    status: str,
    ended_at: datetime,
    failure: FailureDetails | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Emit ``started``'s execution span, start to end: once, when the execution ends."""
    chosen = execution_span_context(started)
    parent = parent_of(started.trace_context)
    attributes = {
        "durabletask.type": ORCHESTRATION_TYPE,
        "durabletask.task.name": started.name,
        "durabletask.task.instance_id": started.instance_id,
        "durabletask.task.execution_id": started.execution_id,
        "durabletask.task.status": status,
        **({"durabletask.task.version": started.version} if started.version else {}),
        **(attributes or {}),
    }
    span = _start_span(
        _tracer_of(trace.get_tracer_provider(), EXECUTIONS_TRACER_NAME),
        f"orchestration:{started.name}",
        parent if parent is not None else Context(),
        kind=SpanKind.SERVER,
        attributes=attributes,
        start_time=_nanos(started.timestamp),
        ids=(chosen, parent is None),
    )
    if failure is not None:
        span.set_status(Status(StatusCode.ERROR, str(failure)))
        span.add_event(
            "exception",
            {"exception.type": failure.error_type, "exception.message": failure.message},
        )
    span.end(end_time=_nanos(ended_at))


def emit_span(
    name: str,
    parent: Context | None,
    *,
    start: datetime,
    end: datetime,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
    links: Sequence[TraceContext | None] = (),
) -> None:
    """Emit a span that already happened (``start`` to ``end``) under ``parent``.

    ``links`` name other spans it relates to (the span that raised an event).
    """
    linked = [Link(c) for c in map(_parent_span_context, links) if c is not None] if links else ()
    span = _start_span(
        tracer(),
        name,
        parent,
        kind=kind,
        start_time=_nanos(start),
        attributes=attributes,
        links=linked,
    )
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=_nanos(end))


def span_in(
    name: str,
    parent: Context | None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A live span under ``parent``, current while the block runs; errors recorded."""
    return _SpanIn(name, parent, kind, attributes)


class _SpanIn:
    """``span_in``'s block. A class, not a generator: every activity and start enters one."""

    __slots__ = ("_attributes", "_kind", "_name", "_parent", "_span", "_token")

    def __init__(
        self,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self._name, self._parent, self._kind, self._attributes = name, parent, kind, attributes
        self._span: Span = trace.INVALID_SPAN
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        if self._parent is None and not recording():
            return self._span  # nothing to record, no trace to carry on
        # start and attach: start_as_current_span's nested context managers cost more.
        span = _start_span(
            tracer(), self._name, self._parent, kind=self._kind, attributes=self._attributes
        )
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, _type: type[BaseException] | None, error: BaseException | None, _trace: object
    ) -> None:
        if self._token is None:
            return
        span = self._span
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        otel_context.detach(self._token)
        span.end()


def _from_carrier(carrier: Mapping[str, str]) -> TraceContext | None:
    traceparent = carrier.get("traceparent")
    if not traceparent:
        return None
    return TraceContext(traceparent=traceparent, tracestate=carrier.get("tracestate") or None)


def _parent_span_context(context: TraceContext | None) -> SpanContext | None:
    extracted = parent_of(context)
    if extracted is None:
        return None
    span = trace.get_current_span(extracted).get_span_context()
    return span if span.is_valid else None


def _derived_id(execution_id: str, size: int) -> int:
    """A non-zero id of ``size`` bytes derived from the execution id (the same everywhere)."""
    digest = hashlib.blake2b(execution_id.encode(), digest_size=size, person=b"durable_fx").digest()
    return int.from_bytes(digest, "big") or 1


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


class _ChosenIds:
    """An SDK ``IdGenerator`` that hands out the ids set for the span being started.

    The OpenTelemetry API has no way to give a span its id; the SDK asks its
    tracer's ``id_generator``. Only durable_fx's own tracer for execution
    spans gets this one, and only while ``emit_execution_span`` runs are ids chosen.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def generate_span_id(self) -> int:
        return _CHOSEN_SPAN_ID.get() or int(self._inner.generate_span_id())

    def generate_trace_id(self) -> int:
        return _CHOSEN_TRACE_ID.get() or int(self._inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return bool(self._inner.is_trace_id_random())


def _start_span(
    spans: Tracer,
    name: str,
    context: Context | None,
    *,
    kind: SpanKind,
    attributes: Mapping[str, Any] | None,
    links: Sequence[Link] = (),
    start_time: int | None = None,
    ids: tuple[SpanContext, bool] | None = None,
) -> Span:
    """``spans.start_span``, or its direct equivalent when the SDK's pipeline allows it.

    ``ids``: the span's chosen ids, and whether it is a root (whose trace id is chosen too).
    """
    chosen, root = ids if ids is not None else (None, False)
    direct = direct_spans(spans)
    if direct is not None:
        return direct.start(
            name,
            context,
            kind=kind,
            attributes=attributes,
            links=links,
            start_time=start_time,
            span_id=chosen.span_id if chosen is not None else None,
            trace_id=chosen.trace_id if chosen is not None and root else None,
        )
    start = functools.partial(
        spans.start_span,
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        links=links,
        start_time=start_time,
    )
    if chosen is None:
        return start()
    _choose_ids_of(spans)
    trace_token = _CHOSEN_TRACE_ID.set(chosen.trace_id if root else None)
    span_token = _CHOSEN_SPAN_ID.set(chosen.span_id)
    try:
        return start()
    finally:
        _CHOSEN_SPAN_ID.reset(span_token)
        _CHOSEN_TRACE_ID.reset(trace_token)


def _choose_ids_of(spans: Tracer) -> None:
    """Make ``spans`` take its ids from the context vars when they are set (``_ChosenIds``)."""
    inner = getattr(spans, "id_generator", None)  # the SDK's Tracer has one (cached per scope)
    if inner is not None and not isinstance(inner, _ChosenIds):
        spans.id_generator = _ChosenIds(inner)  # type: ignore[attr-defined]
