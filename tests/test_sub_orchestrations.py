"""Sub-orchestrations: results, instance ids, failures, retries and recursive terminate."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    ParentClosePolicy,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
    when_all,
    when_any,
)
from tests.support.instances import status_of

WAIT = 20.0
RETRY = RetryPolicy(first_interval=timedelta(milliseconds=50), max_attempts=3)


def test_sub_orchestrator_result(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.activity()
    def add(pair: list[int]) -> int:
        return pair[0] + pair[1]

    @registry.orchestrator()
    def child(ctx: OrchestrationContext, pair: list[int]) -> Orchestrator[Any]:
        return (yield ctx.call_activity(add, pair))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = yield ctx.call_sub_orchestrator(child, [1, 2])
        second = yield ctx.call_sub_orchestrator("child", [first, 10])
        return second

    iid = client.start(parent)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 13
    children = client.query(name="child").items
    assert len(children) == 2
    assert {c.status for c in children} == {OrchestrationStatus.COMPLETED}
    assert {c.output for c in children} == {3, 13}


def test_sub_orchestrator_with_chosen_instance_id(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, x: int) -> Any:
        return {"me": ctx.instance_id, "x": x}

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_sub_orchestrator(child, 7, instance_id="my-child"))

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"me": "my-child", "x": 7}
    child_state = client.get("my-child")
    assert child_state is not None
    assert child_state.status is OrchestrationStatus.COMPLETED
    assert child_state.name == "child"
    assert child_state.input == 7


def test_fan_out_to_sub_orchestrators(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, x: int) -> int:
        return x * 10

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield when_all([ctx.call_sub_orchestrator(child, i) for i in range(10)]))

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [i * 10 for i in range(10)]


def test_nested_sub_orchestrators(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def nested(ctx: OrchestrationContext, depth: int) -> Orchestrator[Any]:
        if depth == 0:
            return ["leaf"]
        below = yield ctx.call_sub_orchestrator(nested, depth - 1)
        return [f"level {depth}", *below]

    state = client.wait(client.start(nested, 3), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["level 3", "level 2", "level 1", "leaf"]


def test_sub_orchestrator_failure_raises_task_failed(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_all([])
        raise ValueError("child is broken")

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_sub_orchestrator(child, instance_id="broken-child")
        except TaskFailedError as error:
            return {"task": error.task_name, "type": error.error_type, "message": error.message}
        return "no error"

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"task": "child", "type": "ValueError", "message": "child is broken"}
    child_state = client.get("broken-child")
    assert child_state is not None and child_state.status is OrchestrationStatus.FAILED


def test_uncaught_sub_orchestrator_failure_fails_the_parent(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def explode() -> None:
        raise RuntimeError("deep failure")

    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity(explode)

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_sub_orchestrator(child)

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "deep failure" in state.failure.message


def test_retry_of_a_failing_sub_orchestrator(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    lock = threading.Lock()
    calls: list[str] = []

    @registry.activity()
    def flaky(who: str) -> str:
        with lock:
            calls.append(who)
            count = len(calls)
        if count < 3:
            raise ConnectionError(f"attempt {count} failed")
        return f"ok after {count}"

    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(flaky, ctx.instance_id))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_sub_orchestrator(child, retry=RETRY))

    iid = client.start(parent)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "ok after 3"
    assert len(calls) == 3
    # Each attempt ran as its own child instance.
    assert len(set(calls)) == 3
    history = client.get(iid, history=True)
    assert history is not None and history.history is not None
    kinds = [e.kind for e in history.history]
    assert kinds.count("SubOrchestrationInstanceCreated") == 3
    assert kinds.count("SubOrchestrationInstanceFailed") == 2


def test_retry_of_a_sub_orchestrator_with_a_fixed_instance_id(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    lock = threading.Lock()
    calls: list[str] = []

    @registry.activity()
    def flaky(who: str) -> str:
        with lock:
            calls.append(who)
            count = len(calls)
        if count < 2:
            raise ConnectionError("first attempt fails")
        return "ok"

    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(flaky, ctx.instance_id))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_sub_orchestrator(child, instance_id="fixed-child", retry=RETRY))

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "ok"
    assert calls == ["fixed-child", "fixed-child"]
    child_state = client.get("fixed-child")
    assert child_state is not None and child_state.status is OrchestrationStatus.COMPLETED


def test_sub_orchestrator_id_already_running_fails_the_task(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def blocker(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("never")

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_sub_orchestrator(blocker, instance_id="busy")
        except TaskFailedError as error:
            return error.error_type
        return "started"

    client.start(blocker, instance_id="busy")
    wait_until(lambda: status_of(client, "busy") is OrchestrationStatus.RUNNING)
    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "InstanceExistsError"
    assert status_of(client, "busy") is OrchestrationStatus.RUNNING


def test_recursive_terminate_stops_running_children(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def grandchild(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("never")

    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_sub_orchestrator(grandchild, instance_id="grandchild")

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_sub_orchestrator(child, instance_id="child")

    iid = client.start(parent)
    wait_until(lambda: status_of(client, "grandchild") is OrchestrationStatus.RUNNING)
    client.terminate(iid, "enough")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.TERMINATED
    assert state.output == "enough"
    for descendant in ("child", "grandchild"):
        done = client.wait(descendant, timeout=WAIT)
        assert done.status is OrchestrationStatus.TERMINATED, descendant


def test_non_recursive_terminate_leaves_children_running(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("finish"))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_sub_orchestrator(child, instance_id="survivor")

    iid = client.start(parent)
    wait_until(lambda: status_of(client, "survivor") is OrchestrationStatus.RUNNING)
    client.terminate(iid, "parent only", recursive=False)
    assert client.wait(iid, timeout=WAIT).status is OrchestrationStatus.TERMINATED
    assert status_of(client, "survivor") is OrchestrationStatus.RUNNING
    # The orphan still works, and finishing it does not disturb the terminated parent.
    client.raise_event("survivor", "finish", "done")
    assert client.wait("survivor", timeout=WAIT).output == "done"
    parent_state = client.get(iid)
    assert parent_state is not None and parent_state.status is OrchestrationStatus.TERMINATED


def test_sub_orchestrator_that_continues_as_new(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def countdown(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        yield ctx.create_timer(timedelta(0))
        if n > 0:
            ctx.continue_as_new(n - 1)
            return None
        return "liftoff"

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_sub_orchestrator(countdown, 3, instance_id="countdown"))

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "liftoff"
    child_state = client.get("countdown")
    assert child_state is not None and child_state.input == 0


def test_parent_that_continues_as_new_reuses_child_ids(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, n: int) -> int:
        return n * n

    @registry.orchestrator()
    def looping(ctx: OrchestrationContext, state: list[int]) -> Orchestrator[Any]:
        square = yield ctx.call_sub_orchestrator(child, len(state))
        state = [*state, square]
        if len(state) < 4:
            ctx.continue_as_new(state)
            return None
        return state

    state = client.wait(client.start(looping, []), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [0, 1, 4, 9]


def test_terminating_a_child_fails_the_parents_task(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("never")

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_sub_orchestrator(child, instance_id="doomed-child")
        except TaskFailedError as error:
            return {"type": error.error_type, "message": error.message}
        return "no error"

    iid = client.start(parent)
    wait_until(lambda: status_of(client, "doomed-child") is OrchestrationStatus.RUNNING)
    client.terminate("doomed-child", "cancelled by operator")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["type"] == "OrchestrationTerminated"
    assert "doomed-child" in state.output["message"]
    assert "cancelled by operator" in state.output["message"]


def test_two_children_started_together_under_one_id(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        yield ctx.create_timer(timedelta(milliseconds=50))
        return x

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        tasks = [ctx.call_sub_orchestrator(child, i, instance_id="shared") for i in range(2)]
        outcomes = []
        for task in tasks:
            try:
                outcomes.append((yield task))
            except TaskFailedError as error:
                outcomes.append(error.error_type)
        return outcomes

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    # One start wins the id and runs; the other is refused, and nobody waits forever.
    refused = [o for o in state.output if o == "InstanceExistsError"]
    ran = [o for o in state.output if o != "InstanceExistsError"]
    assert len(refused) == 1 and len(ran) == 1
    shared = client.get("shared")
    assert shared is not None and shared.status is OrchestrationStatus.COMPLETED
    assert shared.output == ran[0]


def test_parent_close_policy_terminates_a_child_that_lost_a_race(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    """The parent gave up waiting and completed: its TERMINATE child ends, its ABANDON one runs."""

    @registry.orchestrator()
    def slow(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("finish"))

    @registry.orchestrator()
    def impatient(ctx: OrchestrationContext) -> Orchestrator[str]:
        doomed = ctx.call_sub_orchestrator(
            slow, instance_id="doomed", parent_close_policy=ParentClosePolicy.TERMINATE
        )
        kept = ctx.call_sub_orchestrator(slow, instance_id="kept")
        winner = yield when_any([doomed, kept, ctx.create_timer(timedelta(milliseconds=300))])
        return "answered" if winner in (doomed, kept) else "gave up"

    iid = client.start(impatient)
    state = client.wait(iid, timeout=WAIT)
    assert state.output == "gave up"
    doomed = client.wait("doomed", timeout=WAIT)
    assert doomed.status is OrchestrationStatus.TERMINATED
    assert iid in str(doomed.output) and "completed" in str(doomed.output)
    assert status_of(client, "kept") is OrchestrationStatus.RUNNING
    client.raise_event("kept", "finish", "late")
    assert client.wait("kept", timeout=WAIT).output == "late"


def test_parent_close_policy_applies_when_the_parent_fails_or_continues_as_new(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def slow(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("finish"))

    @registry.orchestrator()
    def generations(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        ctx.call_sub_orchestrator(
            slow, instance_id=f"gen-{n}", parent_close_policy=ParentClosePolicy.TERMINATE
        )
        yield ctx.create_timer(timedelta(milliseconds=50))
        if n == 0:
            ctx.continue_as_new(1)
            return None
        raise RuntimeError("the second generation fails")

    iid = client.start(generations, 0)
    assert client.wait(iid, timeout=WAIT).status is OrchestrationStatus.FAILED
    for child, verb in (("gen-0", "continued as new"), ("gen-1", "failed")):
        state = client.wait(child, timeout=WAIT)
        assert state.status is OrchestrationStatus.TERMINATED, child
        assert verb in str(state.output), state.output
