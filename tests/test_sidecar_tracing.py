"""Traces through the sidecar: the official Python SDK's spans join up across episodes.

The SDK emits its own spans (client, orchestration, activity); the sidecar
carries the protocol's trace context fields so they form one tree, and hands
every episode the same execution span (id and start) without storing it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from durabletask import client as dt_client
from durabletask import task
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tests.support.sidecar import (
    SIDECAR_STORES,
    WAIT,
    Steps,
    running_sidecar,
    start_worker,
    store_url_for,
)
from tests.support.spans import Spans, parent_id, span_id, trace_id


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"hi {name}"


def twice(ctx: task.OrchestrationContext, name: str) -> Steps:
    once = yield ctx.call_activity(greet, input=name)
    return (yield ctx.call_activity(greet, input=once))


@pytest.fixture(params=SIDECAR_STORES)
def address(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    server = running_sidecar(store_url_for(request.param, tmp_path, request))
    try:
        yield server.address
    finally:
        server.stop()


def test_an_sdk_run_is_one_trace_across_its_episodes(address: str, spans: Spans) -> None:
    worker = start_worker(address, [twice], [greet])
    sdk = dt_client.TaskHubGrpcClient(host_address=address)
    try:
        with trace.get_tracer("test").start_as_current_span("POST /greet") as request:
            instance_id = sdk.schedule_new_orchestration(twice, input="ada")
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        worker.stop()
        sdk.close()
    assert state is not None and state.serialized_output == '"hi hi ada"'
    spans.settle()

    create = spans.one("create_orchestration:twice")
    run = spans.one("orchestration:twice")
    calls = [s for s in spans.named("activity:greet") if s.kind is SpanKind.CLIENT]
    runs = [s for s in spans.named("activity:greet") if s.kind is SpanKind.SERVER]
    assert parent_id(create) == request.get_span_context().span_id
    assert parent_id(run) == span_id(create)
    # Each episode was handed the same execution span: both calls hang under it.
    assert len(calls) == 2 and {parent_id(c) for c in calls} == {span_id(run)}
    assert sorted(parent_id(r) or 0 for r in runs) == sorted(span_id(c) for c in calls)
    assert {trace_id(s) for s in spans.all()} == {request.get_span_context().trace_id}
