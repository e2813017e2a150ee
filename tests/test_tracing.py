"""Distributed tracing: the span tree of a run on every store, via the SDK's in-memory exporter."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from durable_fx import (
    ActivityContext,
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    Worker,
)
from durable_fx.telemetry import LogContextFilter
from tests.support.instances import custom_status_of, wait_until
from tests.support.spans import Spans, parent_id, span_id, trace_id

WAIT = 20.0


def test_a_run_is_one_trace_under_the_request_that_started_it(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.activity()
    def step(n: int) -> int:
        return n + 1

    @registry.orchestrator()
    def traced(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        n = yield ctx.call_activity(step, n)
        yield ctx.create_timer(timedelta(milliseconds=20))
        return (yield ctx.call_activity(step, n))

    with trace.get_tracer("test").start_as_current_span("POST /send") as request:
        iid = client.start(traced, 1)
    assert client.wait(iid, timeout=WAIT).output == 3
    spans.settle()

    create = spans.one("create_orchestration:traced")
    assert create.kind is SpanKind.PRODUCER
    assert parent_id(create) == request.get_span_context().span_id
    run = spans.one("orchestration:traced")
    assert run.kind is SpanKind.SERVER and parent_id(run) == span_id(create)
    assert run.attributes is not None and run.attributes["durabletask.task.status"] == "COMPLETED"
    steps = spans.named("activity:step")
    episodes = spans.named("orchestration:traced episode")
    assert len(steps) == 2 and len(episodes) >= 3
    for child in [*steps, *episodes]:
        assert parent_id(child) == span_id(run), child.name
        assert trace_id(child) == trace_id(run) == request.get_span_context().trace_id
    assert run.start_time is not None and run.end_time is not None
    assert all(run.start_time <= s.start_time <= s.end_time <= run.end_time for s in steps)  # type: ignore[operator]


def test_the_callers_trace_state_is_carried_by_every_span_of_the_run(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.activity()
    def step(n: int) -> int:
        return n + 1

    @registry.orchestrator()
    def stated(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        return (yield ctx.call_activity(step, n))

    state = TraceState([("vendor", "kept")])
    caller = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(caller)))
    try:
        iid = client.start(stated, 1)
    finally:
        otel_context.detach(token)
    assert client.wait(iid, timeout=WAIT).output == 2
    spans.settle()
    run = [
        spans.one("orchestration:stated"),
        spans.one("activity:step"),
        *spans.named("orchestration:stated episode"),
    ]
    assert len(run) >= 4
    for span in run:
        assert span.context is not None and span.context.trace_state == state, span.name


def test_a_failed_run_and_a_failed_activity_carry_the_error(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.activity()
    def broken(_: None) -> None:
        raise ConnectionError("the provider is down")

    @registry.orchestrator()
    def fails(ctx: OrchestrationContext) -> Orchestrator[None]:
        yield ctx.call_activity(broken, None)

    iid = client.start(fails)
    assert client.wait(iid, timeout=WAIT).status is OrchestrationStatus.FAILED
    spans.settle()
    activity = spans.one("activity:broken")
    assert activity.status.status_code is StatusCode.ERROR
    assert [e.name for e in activity.events] == ["exception"]
    assert activity.events[0].attributes == {
        "exception.type": "ConnectionError",
        "exception.message": "the provider is down",
        "exception.stacktrace": activity.events[0].attributes["exception.stacktrace"],  # type: ignore[index]
    }
    run = spans.one("orchestration:fails")
    assert run.status.status_code is StatusCode.ERROR
    assert "ConnectionError: the provider is down" in (run.status.description or "")


def test_each_attempt_is_a_span_with_its_number_and_each_retry_delay_a_timer(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    calls = {"n": 0}

    @registry.activity()
    def flaky(_: None) -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError(f"blip {calls['n']}")
        return "sent"

    @registry.orchestrator()
    def retried(ctx: OrchestrationContext) -> Orchestrator[str]:
        policy = RetryPolicy(first_interval=timedelta(milliseconds=20), max_attempts=3)
        return (yield ctx.call_activity(flaky, None, retry=policy))

    iid = client.start(retried)
    assert client.wait(iid, timeout=WAIT).output == "sent"
    spans.settle()

    attempts = sorted(
        spans.named("activity:flaky"),
        key=lambda s: s.attributes["durable_fx.activity.attempt"],  # type: ignore[index]
    )
    assert [a.attributes["durable_fx.activity.attempt"] for a in attempts] == [1, 2, 3]  # type: ignore[index]
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [a.attributes["durabletask.task.result"] for a in attempts] == [  # type: ignore[index]
        "Failed",
        "Failed",
        "Succeeded",
    ]
    # Each attempt's work item came once: a delivery number shows only on a redelivery.
    assert all("durable_fx.activity.delivery" not in (a.attributes or {}) for a in attempts)
    waits = spans.named("orchestration:retried:timer")
    assert len(waits) == 2
    assert all((w.attributes or {}).get("durable_fx.timer.purpose") == "retry" for w in waits)
    run = spans.one("orchestration:retried")
    assert all(parent_id(s) == span_id(run) for s in [*attempts, *waits])


def test_a_restarted_worker_continues_the_trace_and_emits_nothing_twice(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    spans: Spans,
) -> None:
    @registry.activity()
    def step(n: int) -> int:
        return n + 1

    @registry.orchestrator()
    def waits(ctx: OrchestrationContext) -> Orchestrator[int]:
        n = yield ctx.call_activity(step, 0)
        ctx.set_custom_status("waiting")
        extra = yield ctx.wait_for_event("go")
        return (yield ctx.call_activity(step, n + extra))

    first = make_worker()
    iid = client.start(waits)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    first.stop()
    spans.settle()
    episodes_before = len(spans.named("orchestration:waits episode"))
    make_worker()  # cold: it replays the history before it runs the event
    client.raise_event(iid, "go", 10)
    assert client.wait(iid, timeout=WAIT).output == 12
    spans.settle()

    run = spans.one("orchestration:waits")
    steps = spans.named("activity:step")
    assert len(steps) == 2, "a replayed activity was traced again"
    # Two live episodes after the restart (the event, the result); the replay is not one.
    assert len(spans.named("orchestration:waits episode")) == episodes_before + 2
    assert {parent_id(s) for s in steps} == {span_id(run)}
    assert {trace_id(s) for s in spans.all()} == {trace_id(run)}


def test_a_child_runs_under_its_parent_and_each_generation_has_its_span(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, n: int) -> int:
        return n * 2

    @registry.orchestrator()
    def generations(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        doubled = yield ctx.call_sub_orchestrator(child, n)
        if n < 2:
            ctx.continue_as_new(n + 1)
            return None
        return doubled

    iid = client.start(generations, 0)
    assert client.wait(iid, timeout=WAIT).output == 4
    spans.settle()
    runs = spans.named("orchestration:generations")
    children = spans.named("orchestration:child")
    assert len(runs) == 3 and len(children) == 3
    statuses = sorted(str((r.attributes or {})["durabletask.task.status"]) for r in runs)
    assert statuses == ["COMPLETED", "CONTINUED_AS_NEW", "CONTINUED_AS_NEW"]
    assert len({span_id(r) for r in runs}) == 3
    assert {parent_id(c) for c in children} == {span_id(r) for r in runs}
    assert len({trace_id(s) for s in spans.all()}) == 1


def test_the_activity_span_is_current_inside_the_activity(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.activity()
    def sync_work(_: None, ctx: ActivityContext) -> None:
        with trace.get_tracer("app").start_as_current_span("sync inside"):
            pass

    @registry.activity()
    async def async_work(_: None) -> None:
        with trace.get_tracer("app").start_as_current_span("async inside"):
            pass

    @registry.orchestrator()
    def both(ctx: OrchestrationContext) -> Orchestrator[None]:
        yield ctx.call_activity(sync_work, None)
        yield ctx.call_activity(async_work, None)

    assert client.wait(client.start(both), timeout=WAIT).status is OrchestrationStatus.COMPLETED
    spans.settle()
    assert parent_id(spans.one("sync inside")) == span_id(spans.one("activity:sync_work"))
    assert parent_id(spans.one("async inside")) == span_id(spans.one("activity:async_work"))


def test_timers_and_waits_are_spans_and_the_event_links_to_who_raised_it(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    @registry.orchestrator()
    def patient(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.create_timer(timedelta(milliseconds=50))
        ctx.set_custom_status("waiting")
        return (yield ctx.wait_for_event("DeliveryReceipt"))

    iid = client.start(patient)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    with trace.get_tracer("test").start_as_current_span("POST /webhooks/receipt") as webhook:
        client.raise_event(iid, "DeliveryReceipt", "delivered")
    assert client.wait(iid, timeout=WAIT).output == "delivered"
    spans.settle()

    run = spans.one("orchestration:patient")
    timer = spans.one("orchestration:patient:timer")
    wait = spans.one("orchestration:patient:event DeliveryReceipt")
    assert parent_id(timer) == parent_id(wait) == span_id(run)
    assert timer.attributes is not None and "durabletask.fire_at" in timer.attributes
    assert wait.kind is SpanKind.CONSUMER
    assert [link.context.span_id for link in wait.links] == [webhook.get_span_context().span_id]
    assert timer.end_time is not None and wait.start_time is not None
    assert timer.end_time <= wait.start_time, "the wait began after the timer fired"


def test_framework_log_lines_carry_the_run_and_its_trace(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(LogContextFilter())
    logger = logging.getLogger("durable_fx")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    @registry.activity()
    def refused(_: None) -> None:
        raise PermissionError("the mailbox is closed")

    @registry.orchestrator()
    def logs(ctx: OrchestrationContext) -> Orchestrator[None]:
        ctx.logger.info("about to send")
        yield ctx.call_activity(refused, None)

    try:
        iid = client.start(logs)
        client.wait(iid, timeout=WAIT)
        spans.settle()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [failed] = [r for r in records if r.getMessage().startswith("activity refused")]
    activity = spans.one("activity:refused")
    assert failed.durable_fx == {  # type: ignore[attr-defined]
        "instance_id": iid,
        "activity": "refused",
        "execution_id": failed.durable_fx["execution_id"],  # type: ignore[attr-defined]
        "trace_id": format(trace_id(activity), "032x"),
        "span_id": format(span_id(activity), "016x"),
    }
    [said] = [r for r in records if r.getMessage() == "about to send"]
    run = spans.one("orchestration:logs")
    assert said.durable_fx["orchestration"] == "logs"  # type: ignore[attr-defined]
    assert said.durable_fx["span_id"] == format(span_id(run), "016x")  # type: ignore[attr-defined]
