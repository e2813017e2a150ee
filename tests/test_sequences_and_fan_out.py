"""Sequences of activities, fan-out/fan-in, when_any, and orchestrator shapes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from durable_fx import (
    ActivityContext,
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    TaskFailedError,
    Worker,
    when_all,
    when_any,
)

WAIT = 20.0


def test_sequence_of_activities(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.activity()
    def greet(name: str) -> str:
        return f"Hello {name}"

    @registry.orchestrator()
    def sequence(ctx: OrchestrationContext, names: list[str]) -> Orchestrator[Any]:
        out = []
        for name in names:
            out.append((yield ctx.call_activity(greet, name)))
        return out

    iid = client.start(sequence, ["Tokyo", "Seattle", "London"])
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["Hello Tokyo", "Hello Seattle", "Hello London"]
    assert state.name == "sequence"
    assert state.input == ["Tokyo", "Seattle", "London"]


def test_activity_called_by_name(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.activity(name="Double")
    def double(x: int) -> int:
        return 2 * x

    @registry.orchestrator(name="ByName")
    def by_name(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        return (yield ctx.call_activity("Double", x))

    iid = client.start("ByName", 21)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 42


@pytest.mark.parametrize("count", [10, 500])
def test_fan_out_fan_in(
    registry: Registry, worker: Worker, client: DurableClient, count: int
) -> None:
    @registry.activity()
    def square(x: int) -> int:
        return x * x

    @registry.orchestrator()
    def fan_out(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        results = yield when_all([ctx.call_activity(square, i) for i in range(n)])
        return results

    iid = client.start(fan_out, count)
    state = client.wait(iid, timeout=60 if count > 100 else WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [i * i for i in range(count)]


def test_when_all_of_nothing(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def nothing(ctx: OrchestrationContext) -> Orchestrator[Any]:
        results = yield when_all([])
        return results

    state = client.wait(client.start(nothing), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == []


def test_when_any_returns_the_first_task(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def fast() -> str:
        return "fast"

    @registry.orchestrator()
    def race(ctx: OrchestrationContext) -> Orchestrator[Any]:
        from datetime import timedelta

        slow = ctx.create_timer(timedelta(seconds=30))
        quick = ctx.call_activity(fast)
        winner = yield when_any([slow, quick])
        return {"quick_won": winner is quick, "result": winner.get_result()}

    state = client.wait(client.start(race), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"quick_won": True, "result": "fast"}


def test_when_any_with_a_failed_task_returns_it(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def broken() -> None:
        raise ValueError("nope")

    @registry.orchestrator()
    def race(ctx: OrchestrationContext) -> Orchestrator[Any]:
        from datetime import timedelta

        failing = ctx.call_activity(broken)
        winner = yield when_any([failing, ctx.create_timer(timedelta(seconds=30))])
        assert winner is failing
        try:
            winner.get_result()
        except TaskFailedError as error:
            return error.error_type
        return "no error"

    state = client.wait(client.start(race), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "ValueError"


def test_failed_task_in_when_all_raises_at_the_yield(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def maybe_fail(x: int) -> int:
        if x == 3:
            raise ValueError(f"bad item {x}")
        return x

    @registry.orchestrator()
    def fan_out(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield when_all([ctx.call_activity(maybe_fail, i) for i in range(6)])
        except TaskFailedError as error:
            return {
                "task": error.task_name,
                "type": error.error_type,
                "message": error.message,
                "has_trace": "bad item 3" in (error.stack_trace or ""),
            }
        return "no error"

    state = client.wait(client.start(fan_out), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {
        "task": "maybe_fail",
        "type": "ValueError",
        "message": "bad item 3",
        "has_trace": True,
    }


def test_uncaught_task_failure_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def explode() -> None:
        raise RuntimeError("kaboom")

    @registry.orchestrator()
    def careless(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity(explode)

    state = client.wait(client.start(careless), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "TaskFailedError"
    assert "RuntimeError" in state.failure.message
    assert "kaboom" in state.failure.message


def test_orchestrator_exception_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def raises(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_all([])
        raise KeyError("missing thing")

    state = client.wait(client.start(raises), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "KeyError"
    assert "missing thing" in state.failure.message
    assert state.failure.stack_trace and "raises" in state.failure.stack_trace


def test_plain_function_orchestrator(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def plain(ctx: OrchestrationContext, x: int) -> int:
        return x + 1

    state = client.wait(client.start(plain, 41), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 42


def test_orchestrator_without_input_parameter(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def answer() -> int:
        return 42

    @registry.orchestrator()
    def no_input(ctx: OrchestrationContext) -> Orchestrator[Any]:
        value = yield ctx.call_activity(answer)
        return {"value": value, "input": ctx.input}

    state = client.wait(client.start(no_input), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"value": 42, "input": None}


def test_activity_without_input_or_output(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    calls: list[str] = []

    @registry.activity()
    def side_effect() -> None:
        calls.append("ran")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        result = yield ctx.call_activity(side_effect)
        return result is None

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output is True
    assert calls == ["ran"]


def test_many_instances_at_once(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.activity()
    def inc(x: int) -> int:
        return x + 1

    @registry.orchestrator()
    def chain(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        for _ in range(3):
            x = yield ctx.call_activity(inc, x)
        return x

    ids = [client.start(chain, i) for i in range(20)]
    outputs = [client.wait(i, timeout=WAIT).output for i in ids]
    assert outputs == [i + 3 for i in range(20)]


def test_two_workers_share_the_work(
    registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    lock = threading.Lock()
    runs: dict[tuple[str, int], int] = {}

    @registry.activity()
    def work(ctx: ActivityContext, x: int) -> int:
        with lock:
            key = (ctx.instance_id, ctx.task_id)
            runs[key] = runs.get(key, 0) + 1
        return x * 2

    @registry.orchestrator()
    def fan(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        first = yield when_all([ctx.call_activity(work, i) for i in range(n)])
        second = yield ctx.call_activity(work, sum(first))
        return second

    make_worker()
    make_worker()
    ids = [client.start(fan, 10) for _ in range(20)]
    outputs = [client.wait(i, timeout=60).output for i in ids]
    assert outputs == [180] * 20
    assert len(runs) == 20 * 11
    assert set(runs.values()) == {1}  # no crash, so no activity ran twice
