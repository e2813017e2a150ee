"""Metrics: runs counted and timed, read back from the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Worker,
)
from tests.support.instances import custom_status_of, wait_until

WAIT = 20.0


@pytest.fixture(scope="session")
def metric_reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


Key = tuple[str, frozenset[tuple[str, Any]]]


def key(metric: str, **attributes: Any) -> Key:
    """A point's key: the metric and its attributes (dots written as __ in the names)."""
    return metric, frozenset((k.replace("__", "."), v) for k, v in attributes.items())


@pytest.fixture
def read(metric_reader: InMemoryMetricReader) -> Callable[[], dict[Key, float]]:
    """Reads the points recorded since the test began."""
    before = _points(metric_reader)

    def since() -> dict[Key, float]:
        now = _points(metric_reader)
        return {k: value - before.get(k, 0) for k, value in now.items()}

    return since


def _points(reader: InMemoryMetricReader) -> dict[Key, float]:
    """Counters' sums and histograms' counts, by metric and attributes (cumulative)."""
    found: dict[Key, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = frozenset((point.attributes or {}).items())
                    found[(metric.name, attributes)] = float(
                        getattr(point, "value", getattr(point, "count", 0))
                    )
    return found


def test_runs_activities_and_events_are_counted_and_timed(
    registry: Registry, worker: Worker, client: DurableClient, read: Callable[[], dict[Key, float]]
) -> None:
    @registry.activity()
    def works(_: None) -> str:
        return "done"

    @registry.activity()
    def breaks(_: None) -> None:
        raise ValueError("no")

    @registry.orchestrator()
    def measured(ctx: OrchestrationContext, fail: bool) -> Orchestrator[Any]:
        yield ctx.call_activity(works, None)
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")
        if fail:
            yield ctx.call_activity(breaks, None)
        return "ok"

    ok, failing = client.start(measured, False), client.start(measured, True)
    for iid in (ok, failing):
        wait_until(lambda iid=iid: custom_status_of(client, iid) == "waiting")
        client.raise_event(iid, "go")
    assert client.wait(ok, timeout=WAIT).status is OrchestrationStatus.COMPLETED
    assert client.wait(failing, timeout=WAIT).status is OrchestrationStatus.FAILED
    task = {"durabletask__task__name": "measured"}
    failed = key("durable_fx.orchestrations.ended", **task, durabletask__task__status="FAILED")
    points = wait_until(lambda: (found := read()).get(failed) and found)  # ended after its commit
    assert points[key("durable_fx.orchestrations.started", **task)] == 2
    completed = key(
        "durable_fx.orchestrations.ended", **task, durabletask__task__status="COMPLETED"
    )
    assert points[completed] == 1
    activity = "durable_fx.activity.duration"
    succeeded = key(
        activity, durabletask__task__name="works", durabletask__task__result="Succeeded"
    )
    broke = key(activity, durabletask__task__name="breaks", durabletask__task__result="Failed")
    assert (points[succeeded], points[broke]) == (2, 1)
    assert points[key("durable_fx.event.delay", **task, durabletask__event__name="go")] == 2
    assert points[key("durable_fx.episode.duration", **task)] >= 6
    lookups = sum(v for (metric, _), v in points.items() if metric == "durable_fx.executor.lookups")
    assert lookups >= 4  # every episode after an instance's first looked its state up


def _gauges(reader: InMemoryMetricReader, metric: str) -> dict[str, float]:
    """The gauge's current value by queue."""
    return {
        dict(attributes)["messaging.destination.name"]: value
        for (name, attributes), value in _points(reader).items()
        if name == metric
    }


def test_each_queues_backlog_and_its_oldest_messages_age_are_gauges(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    store_kind: str,
    metric_reader: InMemoryMetricReader,
) -> None:
    release = threading.Event()

    @registry.activity()
    def slow(_: None) -> str:
        release.wait(WAIT)
        return "done"

    @registry.orchestrator()
    def queued(ctx: OrchestrationContext, _: None) -> Orchestrator[str]:
        return (yield ctx.call_activity(slow, None))

    make_worker(max_concurrent_activities=1)
    started = [client.start(queued, None) for _ in range(3)]

    # Both other activities wait behind the running one once every orchestration has
    # scheduled its own; Azure's counts are approximate, so any waiting one will do there.
    least = 1 if store_kind == "azure" else 2

    def waiting() -> tuple[str, float, float] | None:
        """A queue with work waiting behind the running activity for a second: its gauges."""
        backlog = _gauges(metric_reader, "durable_fx.queue.backlog")
        ages = _gauges(metric_reader, "durable_fx.queue.oldest_age")
        full = [queue for queue, due in backlog.items() if due >= least and ages[queue] > 1]
        return (full[0], backlog[full[0]], ages[full[0]]) if full else None

    try:
        queue, due, age = wait_until(waiting, timeout=WAIT, what="activities waiting")
        assert age < 60
        if store_kind != "azure":  # Azure's store gathers work items; its counts are approximate
            assert (queue, due) == ("activities", 2)
    finally:
        release.set()
    for iid in started:
        assert client.wait(iid, timeout=WAIT).status is OrchestrationStatus.COMPLETED

    def backlog() -> dict[str, float]:
        return _gauges(metric_reader, "durable_fx.queue.backlog")

    drained = wait_until(
        lambda: (found := backlog()).get(queue) == 0 and found, timeout=WAIT, what=f"{queue} empty"
    )
    assert set(drained.values()) == {0}
    assert _gauges(metric_reader, "durable_fx.queue.oldest_age")[queue] == 0


def test_poisoned_messages_are_counted_by_queue(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    read: Callable[[], dict[Key, float]],
) -> None:
    runs: list[None] = []

    @registry.activity()
    async def hangs(_: None) -> None:
        runs.append(None)
        await asyncio.Event().wait()  # every worker gives up on it when stopped

    @registry.orchestrator()
    def stuck(ctx: OrchestrationContext, _: None) -> Orchestrator[None]:
        yield ctx.call_activity(hangs, None)

    client.start(stuck, None)
    for deliveries in range(1, 6):  # the stores' max_dequeue_count
        worker = make_worker(shutdown_grace=0.05)
        wait_until(lambda deliveries=deliveries: len(runs) >= deliveries, timeout=WAIT)
        worker.stop()
    wait_until(client.poisoned, timeout=WAIT, what="the activity poisoned")
    counted = read()
    by_queue = {
        dict(attributes)["messaging.destination.name"]: value
        for (metric, attributes), value in counted.items()
        if metric == "durable_fx.messages.poisoned" and value
    }
    # The activity queue: "activities", or the Azure hub's work item queue.
    [(queue, count)] = by_queue.items()
    assert count == 1 and queue.endswith(("activities", "-workitems")), by_queue
