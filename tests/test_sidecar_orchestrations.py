"""The official Python SDK's orchestrations, run through the sidecar on SQLite and Azurite.

One sidecar and one SDK worker per store serve the whole module; each test
starts its own instances with the SDK's client and checks what comes back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from durabletask import client as dt_client
from durabletask import task

import durable_fx
from durable_fx.sidecar import SidecarServer
from tests.support.sidecar import (
    SIDECAR_STORES,
    WAIT,
    RunCounter,
    Status,
    Steps,
    client_for,
    running_sidecar,
    start_worker,
    store_url_for,
    wait_for,
)

# -- activities ---------------------------------------------------------------------------------

_attempts = RunCounter()


def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello {name}!"


def double(ctx: task.ActivityContext, value: int) -> int:
    return value * 2


def flaky(ctx: task.ActivityContext, succeed_on: int) -> int:
    """Fails until its ``succeed_on``-th attempt for this instance, then returns the attempt."""
    attempt = _attempts.add(ctx.orchestration_id)
    if attempt < succeed_on:
        raise RuntimeError(f"attempt {attempt} failed")
    return attempt


def fail(ctx: task.ActivityContext, message: str) -> None:
    raise ValueError(message)


# -- orchestrators -----------------------------------------------------------------------------


def sequence(ctx: task.OrchestrationContext, names: list[str]) -> Steps:
    greetings = []
    for name in names:
        greetings.append((yield ctx.call_activity(greet, input=name)))
    return greetings


def fan_out(ctx: task.OrchestrationContext, count: int) -> Steps:
    doubled = yield task.when_all([ctx.call_activity(double, input=i) for i in range(count)])
    return sum(doubled)


def child(ctx: task.OrchestrationContext, value: int) -> Steps:
    if value < 0:
        yield ctx.call_activity(fail, input="negative input")
    return (yield ctx.call_activity(double, input=value))


def parent(ctx: task.OrchestrationContext, _: Any) -> Steps:
    first = yield ctx.call_sub_orchestrator(child, input=1)
    second = yield ctx.call_sub_orchestrator(child, input=2, instance_id=f"{ctx.instance_id}-kid")
    try:
        yield ctx.call_sub_orchestrator(child, input=-1)
    except task.TaskFailedError as error:
        return [first, second, error.details.message]
    return [first, second, None]


def approval(ctx: task.OrchestrationContext, timeout_s: float | None) -> Steps:
    event = ctx.wait_for_external_event("approve")
    if timeout_s is None:
        return {"approved": (yield event)}
    timer = ctx.create_timer(timedelta(seconds=timeout_s))
    winner = yield task.when_any([event, timer])
    if winner == timer:
        return {"approved": None, "timed_out": True}
    return {"approved": event.get_result(), "timed_out": False}


def two_events(ctx: task.OrchestrationContext, _: Any) -> Steps:
    first = yield ctx.wait_for_external_event("e")
    second = yield ctx.wait_for_external_event("e")
    return [first, second]


def sleeper(ctx: task.OrchestrationContext, seconds: float) -> Steps:
    start = ctx.current_utc_datetime
    yield ctx.create_timer(timedelta(seconds=seconds))
    return (ctx.current_utc_datetime - start).total_seconds()


def retrying(ctx: task.OrchestrationContext, succeed_on: int) -> Steps:
    policy = task.RetryPolicy(
        first_retry_interval=timedelta(milliseconds=100), max_number_of_attempts=3
    )
    return (yield ctx.call_activity(flaky, input=succeed_on, retry_policy=policy))


def counter(ctx: task.OrchestrationContext, state: dict[str, int]) -> Steps:
    if state["n"] < 3:
        yield ctx.create_timer(timedelta(0))
        ctx.continue_as_new({"n": state["n"] + 1})
        return None
    return state["n"]


def event_counter(ctx: task.OrchestrationContext, total: int) -> Steps:
    value = yield ctx.wait_for_external_event("add")
    total += value
    if total < 6:
        ctx.continue_as_new(total, save_events=True)
        return None
    return total


def with_status(ctx: task.OrchestrationContext, _: Any) -> Steps:
    ctx.set_custom_status({"stage": "waiting"})
    yield ctx.wait_for_external_event("go")
    ctx.set_custom_status({"stage": "done"})
    return "ok"


def failing(ctx: task.OrchestrationContext, message: str) -> Steps:
    yield ctx.call_activity(fail, input=message)


def waits_forever(ctx: task.OrchestrationContext, _: Any) -> Steps:
    yield ctx.wait_for_external_event("never")


def parent_of_waiter(ctx: task.OrchestrationContext, _: Any) -> Steps:
    yield ctx.call_sub_orchestrator(waits_forever, instance_id=f"{ctx.instance_id}-child")


def collect_while_suspended(ctx: task.OrchestrationContext, _: Any) -> Steps:
    values = []
    for _ in range(2):
        values.append((yield ctx.wait_for_external_event("value")))
    return values


def double_later(ctx: task.OrchestrationContext, _: Any) -> str:
    return "started late"


_rewind_runs = RunCounter()


def fails_once(ctx: task.ActivityContext, _: Any) -> str:
    if _rewind_runs.add(ctx.orchestration_id) == 1:
        raise RuntimeError("not yet")
    return "second worked"


def rewindable(ctx: task.OrchestrationContext, _: Any) -> Steps:
    first = yield ctx.call_activity(greet, input="first")
    second = yield ctx.call_activity(fails_once)
    return [first, second]


ORCHESTRATORS = [
    sequence,
    fan_out,
    child,
    parent,
    approval,
    two_events,
    sleeper,
    retrying,
    counter,
    event_counter,
    with_status,
    failing,
    waits_forever,
    parent_of_waiter,
    collect_while_suspended,
    double_later,
    rewindable,
]
ACTIVITIES = [greet, double, flaky, fail, fails_once]


# -- fixtures: one sidecar and one SDK worker per store for the module -----------------------------


@pytest.fixture(scope="module", params=SIDECAR_STORES)
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return store_url_for(request.param, tmp_path_factory.mktemp("sidecar"), request)


@pytest.fixture(scope="module")
def sidecar(store_url: str) -> Iterator[SidecarServer]:
    server = running_sidecar(store_url)
    worker = start_worker(server.address, ORCHESTRATORS, ACTIVITIES)
    yield server
    worker.stop()
    server.stop()


@pytest.fixture(scope="module")
def sdk(sidecar: SidecarServer) -> Iterator[dt_client.TaskHubGrpcClient]:
    yield from client_for(sidecar)


def finished(sdk: dt_client.TaskHubGrpcClient, instance_id: str) -> dt_client.OrchestrationState:
    state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    assert state is not None
    return state


def output(state: dt_client.OrchestrationState) -> Any:
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    return state.get_output()


def started(sdk: dt_client.TaskHubGrpcClient, orchestrator: Any, value: Any = None) -> str:
    instance_id = sdk.schedule_new_orchestration(orchestrator, input=value)
    state = sdk.wait_for_orchestration_start(instance_id, timeout=WAIT)
    assert state is not None
    return instance_id


# -- orchestration patterns ----------------------------------------------------------------------


def test_a_sequence_of_activities(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(sequence, input=["Tokyo", "Seattle", "London"])
    assert output(finished(sdk, instance_id)) == [
        "Hello Tokyo!",
        "Hello Seattle!",
        "Hello London!",
    ]


def test_fan_out_and_fan_in(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(fan_out, input=50)
    assert output(finished(sdk, instance_id)) == sum(2 * i for i in range(50))


def test_sub_orchestrations_return_results_and_failures(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(parent)
    first, second, failure = output(finished(sdk, instance_id))
    assert (first, second) == (2, 4)
    assert "negative input" in failure
    kid = sdk.get_orchestration_state(f"{instance_id}-kid")
    assert kid is not None and kid.runtime_status == Status.COMPLETED


def test_an_external_event_resumes_the_orchestration(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = started(sdk, approval)
    sdk.raise_orchestration_event(instance_id, "approve", data={"by": "ana"})
    assert output(finished(sdk, instance_id)) == {"approved": {"by": "ana"}}


def test_an_event_wait_with_a_timeout_times_out(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(approval, input=0.3)
    assert output(finished(sdk, instance_id)) == {"approved": None, "timed_out": True}


def test_an_event_before_the_timeout_wins(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = started(sdk, approval, 30)
    sdk.raise_orchestration_event(instance_id, "approve", data=True)
    assert output(finished(sdk, instance_id)) == {"approved": True, "timed_out": False}


def test_events_raised_early_are_kept_in_order(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(two_events)
    sdk.raise_orchestration_event(instance_id, "e", data=1)
    sdk.raise_orchestration_event(instance_id, "e", data=2)
    assert output(finished(sdk, instance_id)) == [1, 2]


def test_a_durable_timer_fires(sdk: dt_client.TaskHubGrpcClient) -> None:
    begun = time.monotonic()
    instance_id = sdk.schedule_new_orchestration(sleeper, input=0.5)
    slept = output(finished(sdk, instance_id))
    assert slept >= 0.5
    assert time.monotonic() - begun >= 0.5


def test_a_retry_policy_retries_a_failing_activity(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(retrying, input=3)
    assert output(finished(sdk, instance_id)) == 3
    kinds = [type(e).__name__ for e in sdk.get_orchestration_history(instance_id)]
    assert kinds.count("TaskFailedEvent") == 2
    assert kinds.count("TimerFiredEvent") == 2


def test_an_exhausted_retry_policy_fails_the_orchestration(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    instance_id = sdk.schedule_new_orchestration(retrying, input=10)
    state = finished(sdk, instance_id)
    assert state.runtime_status == Status.FAILED
    assert state.failure_details is not None
    assert "attempt 3 failed" in state.failure_details.message


def test_continue_as_new_starts_over_with_new_input(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(counter, input={"n": 0})
    assert output(finished(sdk, instance_id)) == 3
    history = sdk.get_orchestration_history(instance_id)
    started_event: Any = next(e for e in history if type(e).__name__ == "ExecutionStartedEvent")
    assert json.loads(started_event.input) == {"n": 3}


def test_continue_as_new_can_carry_unprocessed_events(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(event_counter, input=0)
    for value in (1, 2, 3):
        sdk.raise_orchestration_event(instance_id, "add", data=value)
    assert output(finished(sdk, instance_id)) == 6


def test_custom_status_is_visible_while_running_and_after(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    instance_id = started(sdk, with_status)
    wait_for(lambda: _custom_status(sdk, instance_id) == {"stage": "waiting"})
    sdk.raise_orchestration_event(instance_id, "go")
    finished(sdk, instance_id)
    assert _custom_status(sdk, instance_id) == {"stage": "done"}


def _custom_status(sdk: dt_client.TaskHubGrpcClient, instance_id: str) -> Any:
    state = sdk.get_orchestration_state(instance_id)
    return None if state is None else state.get_custom_status()


def test_a_failed_activity_fails_the_orchestration_with_its_details(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    instance_id = sdk.schedule_new_orchestration(failing, input="card declined")
    state = finished(sdk, instance_id)
    assert state.runtime_status == Status.FAILED
    assert state.failure_details is not None
    assert "card declined" in state.failure_details.message


def test_an_event_raised_before_a_scheduled_start_is_kept(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=0.5)
    instance_id = sdk.schedule_new_orchestration(approval, start_at=start_at)
    sdk.raise_orchestration_event(instance_id, "approve", data="early")
    assert output(finished(sdk, instance_id)) == {"approved": "early"}


def test_a_scheduled_start_waits_until_its_time(sdk: dt_client.TaskHubGrpcClient) -> None:
    start_at = datetime.now(UTC) + timedelta(seconds=0.5)
    instance_id = sdk.schedule_new_orchestration(double_later, start_at=start_at)
    state = sdk.get_orchestration_state(instance_id)
    assert state is not None and state.runtime_status == Status.PENDING
    assert output(finished(sdk, instance_id)) == "started late"


# -- steering: terminate, suspend, resume ----------------------------------------------------------


def test_terminate_ends_the_instance_and_its_children(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = started(sdk, parent_of_waiter)
    child_id = f"{instance_id}-child"
    wait_for(lambda: sdk.get_orchestration_state(child_id) is not None)
    sdk.wait_for_orchestration_start(child_id, timeout=WAIT)
    sdk.terminate_orchestration(instance_id, output="cancelled by test")
    state = finished(sdk, instance_id)
    assert state.runtime_status == Status.TERMINATED
    assert state.get_output() == "cancelled by test"
    assert finished(sdk, child_id).runtime_status == Status.TERMINATED


def test_suspend_holds_events_until_resume(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = started(sdk, collect_while_suspended)
    sdk.suspend_orchestration(instance_id, reason="maintenance")
    wait_for(lambda: _status(sdk, instance_id) == Status.SUSPENDED)
    sdk.raise_orchestration_event(instance_id, "value", data=1)
    sdk.raise_orchestration_event(instance_id, "value", data=2)
    time.sleep(0.3)
    assert _status(sdk, instance_id) == Status.SUSPENDED
    sdk.resume_orchestration(instance_id, reason="back")
    assert output(finished(sdk, instance_id)) == [1, 2]


def _status(sdk: dt_client.TaskHubGrpcClient, instance_id: str) -> Status | None:
    state = sdk.get_orchestration_state(instance_id)
    return None if state is None else state.runtime_status


# -- purge, restart, history -----------------------------------------------------------------------


def test_purge_deletes_a_finished_instance_and_its_children(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    instance_id = sdk.schedule_new_orchestration(parent)
    finished(sdk, instance_id)
    result = sdk.purge_orchestration(instance_id, recursive=True)
    assert result.deleted_instance_count == 4  # the parent and its three children
    assert sdk.get_orchestration_state(instance_id) is None
    assert sdk.get_orchestration_state(f"{instance_id}-kid") is None


def test_purge_by_filter(sdk: dt_client.TaskHubGrpcClient) -> None:
    since = datetime.now(UTC)
    ids = [sdk.schedule_new_orchestration(failing, input="x") for _ in range(2)]
    for instance_id in ids:
        finished(sdk, instance_id)
    result = sdk.purge_orchestrations_by(created_time_from=since, runtime_status=[Status.FAILED])
    assert result.deleted_instance_count >= 2
    assert all(sdk.get_orchestration_state(i) is None for i in ids)


def test_restart_runs_a_finished_instance_again(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(sequence, input=["again"])
    finished(sdk, instance_id)
    assert sdk.restart_orchestration(instance_id) == instance_id
    assert output(finished(sdk, instance_id)) == ["Hello again!"]
    new_id = sdk.restart_orchestration(instance_id, restart_with_new_instance_id=True)
    assert new_id != instance_id
    assert output(finished(sdk, new_id)) == ["Hello again!"]


def test_history_maps_every_event_one_to_one(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(sequence, input=["a", "b"])
    finished(sdk, instance_id)
    kinds = [type(e).__name__ for e in sdk.get_orchestration_history(instance_id)]
    assert kinds == [
        "OrchestratorStartedEvent",
        "ExecutionStartedEvent",
        "TaskScheduledEvent",
        "OrchestratorStartedEvent",
        "TaskCompletedEvent",
        "TaskScheduledEvent",
        "OrchestratorStartedEvent",
        "TaskCompletedEvent",
        "ExecutionCompletedEvent",
    ]


def test_query_and_list_finished_ids(sdk: dt_client.TaskHubGrpcClient) -> None:
    ids = {sdk.schedule_new_orchestration(sequence, input=[]) for _ in range(3)}
    for instance_id in ids:
        finished(sdk, instance_id)
    states = sdk.get_all_orchestration_states(
        dt_client.OrchestrationQuery(runtime_status=[Status.COMPLETED])
    )
    assert ids <= {s.instance_id for s in states}
    listed: set[str] = set()
    continuation = None
    while True:
        page = sdk.list_instance_ids(page_size=2, continuation_token=continuation)
        listed |= set(page.items)
        continuation = page.continuation_token
        if continuation is None:
            break
    assert ids <= listed


def test_rewind_reruns_the_failed_work_only(sdk: dt_client.TaskHubGrpcClient) -> None:
    instance_id = sdk.schedule_new_orchestration(rewindable)
    assert finished(sdk, instance_id).runtime_status == Status.FAILED
    sdk.rewind_orchestration(instance_id, reason="fixed the bug")
    wait_for(lambda: _status(sdk, instance_id) != Status.FAILED)
    assert output(finished(sdk, instance_id)) == ["Hello first!", "second worked"]
    kinds = [type(e).__name__ for e in sdk.get_orchestration_history(instance_id)]
    assert "ExecutionRewoundEvent" in kinds


# -- the store is durable_fx's: its own client reads what the SDK wrote ----------------------------


def test_durable_fx_clients_see_sdk_instances(
    sdk: dt_client.TaskHubGrpcClient, store_url: str
) -> None:
    instance_id = sdk.schedule_new_orchestration(sequence, input=["interop"])
    finished(sdk, instance_id)
    with durable_fx.DurableClient(store_url) as ours:
        state = ours.get(instance_id, history=True)
    assert state is not None
    assert state.status is durable_fx.OrchestrationStatus.COMPLETED
    assert state.output == ["Hello interop!"]
    assert state.history is not None
    assert [e.kind for e in state.history][-1] == "ExecutionCompleted"


def test_a_stopped_sidecar_says_it_cannot_run_again(tmp_path: Any) -> None:
    server = running_sidecar(f"sqlite:///{tmp_path / 'hub.db'}")
    server.stop()
    with pytest.raises(RuntimeError, match="this sidecar has run already and cannot run again"):
        server.start()
