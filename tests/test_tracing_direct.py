"""Spans written straight to the SDK's processors are the spans the SDK would export.

When every span processor only looks at ended spans, durable_fx skips the
SDK's ``Span`` and hands its processors a ``ReadableSpan`` it built
(durable_fx/_direct_spans.py). These tests hold that shortcut to the installed
SDK: the same calls through both paths, on providers with the same ids,
export the same JSON; and a processor that watches spans start turns the
shortcut off, so it sees every span start.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    Orchestrator,
    Registry,
    Worker,
)
from durable_fx._direct_spans import direct_spans
from tests.support.instances import custom_status_of, wait_until
from tests.support.spans import Spans, parent_id, span_id, watching_starts

WAIT = 20.0
START, END = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000


class _Counting(IdGenerator):
    """Ids 1, 2, 3...: two providers given the same calls hand out the same ids."""

    def __init__(self) -> None:
        self._next = 0

    def _take(self) -> int:
        self._next += 1
        return self._next

    def generate_span_id(self) -> int:
        return self._take()

    def generate_trace_id(self) -> int:
        return self._take() << 64


class _Marking(Sampler):
    """Samples every span, adding an attribute and a trace state entry (as vendors do)."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE,
            {**(attributes or {}), "sampler.rate": 1},
            TraceState([("vendor", "kept")]),
        )

    def get_description(self) -> str:
        return "Marking"


def _pipeline(**provider: Any) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    made = TracerProvider(
        id_generator=_Counting(), resource=Resource.create({"service.name": "twin"}), **provider
    )
    made.add_span_processor(SimpleSpanProcessor(exporter))
    return made.get_tracer("durable_fx", "1.0"), exporter


def _both(
    scenario: Callable[[Callable[..., trace.Span]], None], **provider: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The JSON of the spans ``scenario`` ends through the SDK, then through the shortcut."""
    sdk, sdk_spans = _pipeline(**provider)
    scenario(lambda name, context=None, **kw: sdk.start_span(name, context, **kw))
    shortcut, direct_spans_out = _pipeline(**provider)
    direct = direct_spans(shortcut)
    assert direct is not None, "the shortcut applies to the SDK's simple processor"
    scenario(direct.start)
    return _exported(sdk_spans), _exported(direct_spans_out)


def _exported(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [json.loads(span.to_json()) | _dropped(span) for span in exporter.get_finished_spans()]


def _dropped(span: ReadableSpan) -> dict[str, int]:
    return {
        "dropped_attributes": span.dropped_attributes,
        "dropped_events": span.dropped_events,
        "dropped_links": span.dropped_links,
    }


def _remote(trace_id: int, span_id: int, *, sampled: bool = True, state: str = "") -> Context:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    context = SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=flags,
        trace_state=TraceState.from_header([state]),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(context))


def _everything(start: Callable[..., trace.Span]) -> None:
    """A root span and a child, using every part of the span API durable_fx and users touch."""
    root = start(
        "orchestration:send",
        Context(),
        kind=SpanKind.SERVER,
        attributes={"durabletask.task.name": "send", "durabletask.task.task_id": 3},
        start_time=START,
    )
    root.set_attribute("recipients", ["a@example.com", "b@example.com"])  # a list: cleaned
    root.set_attributes({"retries": 2, "ratio": 0.5, "ok": True})
    root.add_event("picked", {"queue": "work"}, timestamp=START + 10)
    try:
        raise ConnectionError("the provider is down")
    except ConnectionError as error:
        root.record_exception(error, timestamp=START + 20, escaped=True)
    root.set_status(Status(StatusCode.ERROR, "ConnectionError: the provider is down"))
    root.set_status(StatusCode.UNSET)  # ignored: UNSET never replaces a status
    root.update_name("orchestration:send v2")
    root.add_link(SpanContext(7 << 64, 9, is_remote=True), {"why": "raised the event"})
    child = start(
        "activity:deliver",
        trace.set_span_in_context(root),
        kind=SpanKind.CLIENT,
        links=[Link(SpanContext(5 << 64, 6, is_remote=True)), Link(trace.INVALID_SPAN_CONTEXT)],
        start_time=START + 30,
    )
    child.set_status(Status(StatusCode.OK))
    child.set_status(Status(StatusCode.ERROR, "too late"))  # ignored: OK is final
    child.end(END - 10)
    root.end(END)
    root.set_attribute("after", "the end")  # ignored: the span ended


def test_the_shortcut_exports_what_the_sdk_exports() -> None:
    sdk, direct = _both(_everything)
    assert len(sdk) == 2
    assert direct == sdk


def test_a_remote_parent_and_its_trace_state_carry_over() -> None:
    def scenario(start: Callable[..., trace.Span]) -> None:
        parent = _remote(0xABC << 64, 0xDEF, state="congo=t61rcWkgMzE")
        start("episode", parent, attributes={"n": 1}, start_time=START).end(END)

    sdk, direct = _both(scenario)
    assert direct == sdk
    assert sdk[0]["parent_id"] == "0x0000000000000def"
    assert "t61rcWkgMzE" in sdk[0]["context"]["trace_state"]


def test_a_chosen_span_id_and_root_trace_id_are_the_spans() -> None:
    tracer, exporter = _pipeline()
    direct = direct_spans(tracer)
    assert direct is not None
    direct.start("root", Context(), span_id=0x51, trace_id=0x7 << 64, start_time=START).end(END)
    direct.start("child", _remote(0x9 << 64, 0x3), span_id=0x52, trace_id=0x8).end(END)
    root, child = exporter.get_finished_spans()
    assert root.context is not None and child.context is not None
    assert (root.context.trace_id, root.context.span_id) == (0x7 << 64, 0x51)
    assert (child.context.trace_id, child.context.span_id) == (
        0x9 << 64,
        0x52,
    )  # the parent's trace


def test_span_limits_cut_the_same_attributes_events_links_and_values() -> None:
    limits = SpanLimits(
        max_span_attributes=2,
        max_span_attribute_length=4,
        max_events=1,
        max_links=1,
        max_event_attributes=1,
        max_link_attributes=1,
    )
    sdk, direct = _both(_everything, span_limits=limits)
    assert direct == sdk
    assert sdk[1]["dropped_attributes"] > 0 and sdk[1]["dropped_events"] > 0


def test_a_sampler_that_adds_attributes_and_trace_state_is_followed() -> None:
    sdk, direct = _both(_everything, sampler=_Marking())
    assert direct == sdk
    assert sdk[1]["attributes"]["sampler.rate"] == 1


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(ALWAYS_OFF)], ids=str)
def test_a_span_the_sampler_drops_is_exported_by_neither(sampler: Sampler) -> None:
    carried: list[tuple[SpanContext, SpanContext]] = []

    def scenario(start: Callable[..., trace.Span]) -> None:
        span = start("dropped", _remote(1 << 64, 2, sampled=False), start_time=START)
        assert not span.is_recording()
        root = start("dropped root", Context(), start_time=START)
        carried.append((span.get_span_context(), root.get_span_context()))
        span.end(END)
        root.end(END)

    sdk, direct = _both(scenario, sampler=sampler)
    assert sdk == direct == []
    assert carried[0] == carried[1]  # the ids and flags children would carry on


@pytest.mark.parametrize("sampler", [None, ALWAYS_ON], ids=["default", "always_on"])
def test_the_default_sampler_follows_the_parents_decision(sampler: Sampler | None) -> None:
    def scenario(start: Callable[..., trace.Span]) -> None:
        unsampled = start(
            "under an unsampled parent", _remote(1 << 64, 2, sampled=False), start_time=START
        )
        unsampled.end(END)
        start("under a sampled parent", _remote(3 << 64, 4, state="k=v"), start_time=START).end(END)
        start("a root", Context(), attributes={"n": 1}, start_time=START).end(END)

    sdk, direct = _both(scenario, sampler=sampler)
    assert direct == sdk
    names = [span["name"] for span in sdk]
    assert names[-2:] == ["under a sampled parent", "a root"]
    assert ("under an unsampled parent" in names) is (sampler is ALWAYS_ON)


class _WatchingStarts(SpanProcessor):
    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        pass


def test_an_ended_span_holds_no_objects_of_its_own_beyond_its_context_and_attributes() -> None:
    # An exporter keeps finished spans until it sends them: every object one holds
    # is one more for each garbage collection to walk.
    tracer, exporter = _pipeline()
    direct = direct_spans(tracer)
    assert direct is not None
    for _ in range(2):
        direct.start("plain", None, attributes={"key": 1}).end()
    first, second = exporter.get_finished_spans()

    def held(span: ReadableSpan) -> dict[int, Any]:
        return {id(o): o for o in gc.get_referents(span) if gc.is_tracked(o)}

    shared = held(second)
    own = [o for key, o in held(first).items() if key not in shared]
    assert {type(o) for o in own} <= {SpanContext, dict}, own


def test_a_processor_that_watches_spans_start_turns_the_shortcut_off() -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    tracer = provider.get_tracer("durable_fx")
    assert direct_spans(tracer) is not None
    provider.add_span_processor(_WatchingStarts())  # added later: noticed
    assert direct_spans(tracer) is None
    provider.shutdown()


def test_only_the_sdks_tracer_takes_the_shortcut() -> None:
    assert direct_spans(trace.NoOpTracer()) is None


# The shortcut seen from a run: the same span tree either way.


def _mail(registry: Registry) -> Callable[..., Orchestrator[str]]:
    @registry.activity()
    def deliver(to: str) -> str:
        trace.get_current_span().set_attribute("email.to", to)  # user code on the live span
        return f"sent to {to}"

    @registry.orchestrator()
    def mail(ctx: OrchestrationContext, to: str) -> Orchestrator[str]:
        sent = yield ctx.call_activity(deliver, to)
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("delivered")
        return sent

    return mail


def _send(client: DurableClient, mail: Callable[..., Orchestrator[str]], instance_id: str) -> None:
    with trace.get_tracer("test").start_as_current_span("POST /send"):
        client.start(mail, "a@example.com", instance_id=instance_id)
    wait_until(lambda: custom_status_of(client, instance_id) == "waiting", timeout=WAIT)
    client.raise_event(instance_id, "delivered", None)
    assert client.wait(instance_id, timeout=WAIT).output == "sent to a@example.com"


def _tree(spans: Spans) -> list[tuple[Any, ...]]:
    """Each span by name, kind, status, attributes and its parent's name; ids left out."""
    names = {span_id(s): s.name for s in spans.all()}
    return sorted(
        (
            s.name,
            s.kind,
            s.status.status_code,
            tuple(sorted((k, v) for k, v in (s.attributes or {}).items() if "_id" not in k)),
            names.get(parent_id(s) or 0, "(outside)"),
            len(s.links),
            tuple(e.name for e in s.events),
        )
        for s in spans.all()
    )


def test_a_run_has_the_same_spans_with_and_without_the_shortcut(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    mail = _mail(registry)
    _send(client, mail, "shortcut-run")
    spans.settle()
    shortcut = _tree(spans)
    assert ("activity:deliver", SpanKind.SERVER) in {(t[0], t[1]) for t in shortcut}
    spans.clear()
    with watching_starts() as started:
        _send(client, mail, "sdk-run")
        spans.settle()
    assert _tree(spans) == shortcut
    assert sorted(started) == sorted(s.name for s in spans.all())  # each span was seen starting
