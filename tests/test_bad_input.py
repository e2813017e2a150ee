"""Bad input: invalid ids, unknown names, bad yields, changed code, and misuse of the API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from durable_fx import (
    ActivityContext,
    DurableClient,
    InvalidInstanceIdError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
    validate_instance_id,
    when_all,
)

WAIT = 20.0

BAD_IDS = [
    pytest.param("a/b", "'/'", id="slash"),
    pytest.param("a\\b", "'\\\\'", id="backslash"),
    pytest.param("a#b", "'#'", id="hash"),
    pytest.param("a?b", "'?'", id="question-mark"),
    pytest.param("a\x00b", "U+0000", id="nul"),
    pytest.param("a\nb", "U+000A", id="newline"),
    pytest.param("a\x7fb", "U+007F", id="delete"),
    pytest.param("x" * 257, "257 characters, at most 256", id="too-long"),
    pytest.param("", "empty", id="empty"),
    pytest.param(" padded", "whitespace", id="leading-space"),
]


# -- instance ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(("instance_id", "problem"), BAD_IDS)
def test_invalid_instance_id_is_rejected(
    registry: Registry, client: DurableClient, instance_id: str, problem: str
) -> None:
    @registry.orchestrator()
    def anything(ctx: OrchestrationContext) -> None:
        return None

    with pytest.raises(InvalidInstanceIdError) as raised:
        client.start(anything, instance_id=instance_id)
    assert problem in str(raised.value)
    assert raised.value.instance_id == instance_id
    assert problem in raised.value.reason
    for operation in (
        lambda: client.raise_event(instance_id, "e"),
        lambda: client.terminate(instance_id),
        lambda: client.purge(instance_id),
    ):
        with pytest.raises(InvalidInstanceIdError, match="invalid instance id"):
            operation()
    assert client.query().items == []


def test_valid_instance_ids_are_accepted(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def echo(ctx: OrchestrationContext) -> str:
        return ctx.instance_id

    for instance_id in ["x" * 256, "order:42@eu-west", "ünïcödé-名前", "with space inside"]:
        assert validate_instance_id(instance_id) == instance_id
        assert client.wait(client.start(echo, instance_id=instance_id), timeout=WAIT).output == (
            instance_id
        )


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        pytest.param("", "may not be empty", id="empty"),
        pytest.param("E" * 5000, "5000 characters, at most 256", id="5000-chars"),
        pytest.param("a\nb", "U+000A", id="newline"),
        pytest.param("a\u202eb", "U+202E", id="bidi-override"),
    ],
)
def test_a_bad_event_name_is_refused_before_anything_is_raised(
    registry: Registry, client: DurableClient, name: str, problem: str
) -> None:
    # The management API refuses these names (400); the client keeps the same rule.
    @registry.orchestrator()
    def waits(ctx: OrchestrationContext) -> Any:
        return (yield ctx.wait_for_event("go"))

    iid = client.start(waits)
    with pytest.raises(ValueError, match="invalid event name") as raised:
        client.raise_event(iid, name, 1)
    assert problem in str(raised.value)


def test_invalid_sub_orchestrator_id_fails_the_orchestrator(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext) -> None:
        return None

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            ctx.call_sub_orchestrator(child, instance_id="bad/child")
        except InvalidInstanceIdError as error:
            bad_child = str(error)
        try:
            ctx.send_event("bad#target", "e")
        except InvalidInstanceIdError as error:
            bad_target = str(error)
        yield when_all([])
        return [bad_child, bad_target]

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert "'/'" in state.output[0]
    assert "'#'" in state.output[1]


# -- unknown names ----------------------------------------------------------------------------


def test_unknown_orchestrator_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def known_one(ctx: OrchestrationContext) -> None:
        return None

    @registry.orchestrator()
    def known_two(ctx: OrchestrationContext) -> None:
        return None

    state = client.wait(client.start("no_such_orchestrator"), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "UnknownNameError"
    assert "'no_such_orchestrator'" in state.failure.message
    assert "known_one, known_two" in state.failure.message


def test_unknown_activity_fails_the_task(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def real_activity() -> None:
        return None

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity("no_such_activity", 1)
        except TaskFailedError as error:
            return {"task": error.task_name, "type": error.error_type, "message": error.message}
        return "no error"

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["task"] == "no_such_activity"
    assert state.output["type"] == "UnknownNameError"
    assert "'no_such_activity'" in state.output["message"]
    assert "real_activity" in state.output["message"]


def test_unknown_sub_orchestrator_fails_the_task(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_sub_orchestrator("no_such_child")
        except TaskFailedError as error:
            return error.message
        return "no error"

    state = client.wait(client.start(parent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert "'no_such_child'" in state.output
    assert "parent" in state.output


def test_registration_mistakes_are_reported_at_once(registry: Registry) -> None:
    @registry.activity()
    def taken() -> None:
        return None

    def other() -> None:
        return None

    with pytest.raises(ValueError, match="'taken' is already registered"):
        registry.activity(name="taken")(other)

    def two_inputs(a: int, b: int) -> int:
        return a + b

    with pytest.raises(TypeError, match="one input"):
        registry.activity()(two_inputs)

    def unregistered() -> None:
        return None

    with (
        DurableClient("memory://") as client,
        pytest.raises(TypeError, match="not a registered orchestrator or activity"),
    ):
        client.start(unregistered)  # type: ignore[arg-type]  # the mistake under test


def test_async_orchestrator_is_refused_at_registration(registry: Registry) -> None:
    async def async_orchestrator(ctx: OrchestrationContext) -> int:
        return 1

    async def async_generator_orchestrator(ctx: OrchestrationContext) -> AsyncIterator[Any]:
        yield ctx.create_timer(ctx.current_utc_datetime)

    for fn in (async_orchestrator, async_generator_orchestrator):
        with pytest.raises(TypeError, match="generator function") as raised:
            registry.orchestrator()(fn)
        assert fn.__name__ in str(raised.value)
    assert registry.orchestrator_names == []


def test_calling_an_orchestrator_as_an_activity_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def helper(ctx: OrchestrationContext) -> None:
        return None

    @registry.orchestrator()
    def confused(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity(helper)  # type: ignore[arg-type]  # the mistake under test

    state = client.wait(client.start(confused), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "'helper' is registered as an orchestrator, not an activity" in state.failure.message


# -- orchestrator mistakes ------------------------------------------------------------------------


def test_yielding_a_non_task_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def sloppy(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield 42  # type: ignore[misc]  # the mistake under test

    state = client.wait(client.start(sloppy), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "'sloppy' yielded int" in state.failure.message
    assert "ctx.call_activity" in state.failure.message


def test_yielding_a_coroutine_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    async def not_a_task() -> None:
        return None

    @registry.orchestrator()
    def confused(ctx: OrchestrationContext) -> Orchestrator[Any]:
        coroutine = not_a_task()
        try:
            yield coroutine  # type: ignore[misc]  # the mistake under test
        finally:
            coroutine.close()

    state = client.wait(client.start(confused), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "yielded coroutine" in state.failure.message


def _changed_code_registry(second: Callable[[OrchestrationContext], Any]) -> Registry:
    changed = Registry()

    @changed.activity()
    def fetch() -> str:
        return "fetched"

    @changed.activity()
    def validate() -> str:
        return "validated"

    changed.orchestrator(name="pipeline")(second)
    return changed


def test_changed_code_fails_with_non_determinism(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.activity()
    def fetch() -> str:
        return "fetched"

    @registry.orchestrator(name="pipeline")
    def original(ctx: OrchestrationContext) -> Orchestrator[Any]:
        data = yield ctx.call_activity("fetch")
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")
        return data

    def edited(ctx: OrchestrationContext) -> Orchestrator[Any]:
        data = yield ctx.call_activity("validate")  # was "fetch"
        yield ctx.wait_for_event("go")
        return data

    worker = make_worker()
    iid = client.start("pipeline")
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    worker.stop()
    make_worker(_changed_code_registry(edited))
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "NonDeterminismError"
    assert "TaskScheduled('fetch')" in state.failure.message
    assert "call_activity('validate')" in state.failure.message
    assert iid in state.failure.message


@pytest.mark.parametrize(
    ("edited_step", "produced"),
    [
        pytest.param("timer", "create_timer", id="timer-instead-of-activity"),
        pytest.param("nothing", "no action at that step", id="step-removed"),
    ],
)
def test_other_code_changes_fail_with_non_determinism(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
    edited_step: str,
    produced: str,
) -> None:
    from datetime import timedelta

    @registry.activity()
    def fetch() -> str:
        return "fetched"

    @registry.orchestrator(name="pipeline")
    def original(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity("fetch")
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")

    def edited(ctx: OrchestrationContext) -> Orchestrator[Any]:
        if edited_step == "timer":
            yield ctx.create_timer(timedelta(0))
        yield ctx.wait_for_event("go")

    worker = make_worker()
    iid = client.start("pipeline")
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    worker.stop()
    make_worker(_changed_code_registry(edited))
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "NonDeterminismError"
    assert "TaskScheduled('fetch')" in state.failure.message
    assert produced in state.failure.message


def test_orchestrator_removed_while_an_instance_runs(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def retired(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")

    worker = make_worker()
    iid = client.start(retired)
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    worker.stop()
    redeployed = Registry()

    @redeployed.orchestrator()
    def replacement(ctx: OrchestrationContext) -> None:
        return None

    make_worker(redeployed)
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "'retired'" in state.failure.message
    assert "replacement" in state.failure.message


def test_unchanged_code_replays_on_a_new_worker(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    calls: list[int] = []

    @registry.activity()
    def step(i: int) -> int:
        calls.append(i)
        return i

    @registry.orchestrator()
    def steps(ctx: OrchestrationContext) -> Orchestrator[Any]:
        done = []
        for i in range(3):
            done.append((yield ctx.call_activity(step, i)))
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")
        done.append((yield ctx.call_activity(step, 3)))
        return done

    worker = make_worker()
    iid = client.start(steps)
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    worker.stop()
    make_worker()
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [0, 1, 2, 3]
    assert calls == [0, 1, 2, 3]  # replay re-ran no activity


# -- activities -------------------------------------------------------------------------------


def test_sync_and_async_activities(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def sync_double(x: int) -> dict[str, Any]:
        return {"value": 2 * x, "thread": threading.current_thread().name}

    @registry.activity()
    async def async_triple(x: int) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"value": 3 * x, "in_loop": asyncio.get_running_loop().is_running()}

    @registry.activity()
    async def async_fails() -> None:
        await asyncio.sleep(0)
        raise LookupError("async failure")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        sync_result = yield ctx.call_activity(sync_double, 5)
        async_result = yield ctx.call_activity(async_triple, 5)
        try:
            yield ctx.call_activity(async_fails)
        except TaskFailedError as error:
            failure = f"{error.error_type}: {error.message}"
        return [sync_result, async_result, failure]

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    sync_result, async_result, failure = state.output
    assert sync_result["value"] == 10
    assert sync_result["thread"].startswith("durable-fx-activity")
    assert async_result == {"value": 15, "in_loop": True}
    assert failure == "LookupError: async failure"


def test_activity_context_fields(registry: Registry, worker: Worker, client: DurableClient) -> None:
    seen: list[ActivityContext] = []

    @registry.activity()
    def introspect(ctx: ActivityContext, label: str) -> str:
        seen.append(ctx)
        if ctx.attempt == 1 and label == "retried":
            raise ConnectionError("first attempt fails")
        return label

    @registry.activity()
    def context_only(ctx: ActivityContext) -> int:
        seen.append(ctx)
        return ctx.task_id

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        from datetime import timedelta

        policy = RetryPolicy(first_interval=timedelta(milliseconds=10), max_attempts=2)
        yield ctx.call_activity(introspect, "plain")
        yield ctx.call_activity(introspect, "retried", retry=policy)
        task_id = yield ctx.call_activity(context_only)
        return {"execution_id": ctx.execution_id, "task_id": task_id}

    iid = client.start(orchestrate, instance_id="ctx-fields")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert [(c.name, c.attempt) for c in seen] == [
        ("introspect", 1),
        ("introspect", 1),
        ("introspect", 2),
        ("context_only", 1),
    ]
    assert {c.instance_id for c in seen} == {"ctx-fields"}
    assert {c.execution_id for c in seen} == {state.execution_id, state.output["execution_id"]}
    assert all(c.delivery_count == 1 for c in seen)
    task_ids = [c.task_id for c in seen]
    assert len(set(task_ids)) == 4  # each attempt is its own task
    assert task_ids[-1] == state.output["task_id"]


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error fails")


def test_activities_failing_in_unusual_ways_fail_their_task_only(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    import sys

    @registry.activity()
    def calls_sys_exit() -> None:
        sys.exit(3)

    @registry.activity()
    async def async_sys_exit() -> None:
        raise SystemExit("async exit")

    @registry.activity()
    async def raises_cancelled() -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError("the activity's own cancellation")

    @registry.activity()
    def unprintable() -> None:
        raise _UnprintableError

    @registry.activity()
    def healthy() -> str:
        return "still working"

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        outcomes = {}
        for name in ("calls_sys_exit", "async_sys_exit", "raises_cancelled", "unprintable"):
            try:
                yield ctx.call_activity(name)
                outcomes[name] = "no error"
            except TaskFailedError as error:
                outcomes[name] = error.error_type
        outcomes["healthy"] = yield ctx.call_activity(healthy)
        return outcomes

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {
        "calls_sys_exit": "SystemExit",
        "async_sys_exit": "SystemExit",
        "raises_cancelled": "CancelledError",
        "unprintable": "_UnprintableError",
        "healthy": "still working",
    }
    # The worker survived all of it.
    assert client.wait(client.start(orchestrate), timeout=WAIT).output == state.output


def test_orchestrator_calling_sys_exit_fails_its_instance_only(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    import sys

    @registry.orchestrator()
    def exits_after_a_step(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_all([])
        sys.exit("orchestrator gave up")

    @registry.orchestrator()
    def exits_at_once(ctx: OrchestrationContext) -> None:
        sys.exit(2)

    @registry.orchestrator()
    def healthy(ctx: OrchestrationContext) -> str:
        return "still working"

    cases = [(exits_after_a_step, "orchestrator gave up"), (exits_at_once, "2")]
    for orchestrator, message in cases:
        state = client.wait(client.start(orchestrator), timeout=WAIT)
        assert state.status is OrchestrationStatus.FAILED
        assert state.failure is not None
        assert (state.failure.error_type, state.failure.message) == ("SystemExit", message)
    assert client.wait(client.start(healthy), timeout=WAIT).output == "still working"
