"""RetryPolicy on activities: attempts, back-off, caps, timeout, and the handle predicate."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from durable_fx import (
    ActivityContext,
    DurableClient,
    HistoryEvent,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
)

WAIT = 20.0
MS = timedelta(milliseconds=1)


class Attempts:
    """Records the ``ActivityContext.attempt`` of every call, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[int] = []

    def record(self, ctx: ActivityContext) -> int:
        with self._lock:
            self.seen.append(ctx.attempt)
            return len(self.seen)


def _retry_timers(client: DurableClient, iid: str) -> list[HistoryEvent]:
    state = client.get(iid, history=True)
    assert state is not None and state.history is not None
    return [e for e in state.history if e.kind == "TimerCreated" and e.purpose == "retry"]


def _waits(client: DurableClient, iid: str) -> list[timedelta]:
    """The wait each retry timer was created with (fire_at minus when it was created)."""
    return [e.fire_at - e.timestamp for e in _retry_timers(client, iid)]  # type: ignore[union-attr]


def test_retries_until_success(registry: Registry, worker: Worker, client: DurableClient) -> None:
    attempts = Attempts()

    @registry.activity()
    def flaky(ctx: ActivityContext) -> str:
        if attempts.record(ctx) < 3:
            raise ConnectionError("try again")
        return f"succeeded on attempt {ctx.attempt}"

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=50 * MS, max_attempts=5)
        return (yield ctx.call_activity(flaky, retry=policy))

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "succeeded on attempt 3"
    assert attempts.seen == [1, 2, 3]
    assert len(_retry_timers(client, iid)) == 2


def test_exhausted_attempts_fail_the_instance_with_the_last_error(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    attempts = Attempts()

    @registry.activity()
    def always_fails(ctx: ActivityContext) -> None:
        attempts.record(ctx)
        raise ConnectionError(f"failure #{ctx.attempt}")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=20 * MS, max_attempts=3)
        yield ctx.call_activity(always_fails, retry=policy)

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert attempts.seen == [1, 2, 3]
    assert state.failure is not None
    assert state.failure.error_type == "TaskFailedError"
    assert "ConnectionError" in state.failure.message
    assert "failure #3" in state.failure.message
    assert len(_retry_timers(client, iid)) == 2


def test_exhausted_attempts_can_be_caught(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def always_fails() -> None:
        raise ValueError("permanent")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=10 * MS, max_attempts=2)
        try:
            yield ctx.call_activity(always_fails, retry=policy)
        except TaskFailedError as error:
            return f"gave up: {error.error_type}: {error.message}"

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "gave up: ValueError: permanent"


def test_backoff_and_max_interval(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    attempts = Attempts()

    @registry.activity()
    def always_fails(ctx: ActivityContext) -> None:
        attempts.record(ctx)
        raise ConnectionError("down")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(
            first_interval=10 * MS, backoff=2.0, max_attempts=5, max_interval=30 * MS
        )
        yield ctx.call_activity(always_fails, retry=policy)

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert attempts.seen == [1, 2, 3, 4, 5]
    # 10 ms, 20 ms, then 40 and 80 ms capped at 30 ms.
    assert _waits(client, iid) == [10 * MS, 20 * MS, 30 * MS, 30 * MS]


def test_handle_returning_false_stops_retrying(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    attempts = Attempts()

    @registry.activity()
    def fails(ctx: ActivityContext) -> None:
        n = attempts.record(ctx)
        if n == 1:
            raise ConnectionError("transient")
        raise PermissionError("permanent")

    def transient_only(error: TaskFailedError) -> bool:
        return error.error_type == "ConnectionError"

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=10 * MS, max_attempts=10, handle=transient_only)
        yield ctx.call_activity(fails, retry=policy)

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert attempts.seen == [1, 2]
    assert state.failure is not None and "PermissionError" in state.failure.message
    assert len(_retry_timers(client, iid)) == 1


def test_timeout_stops_retrying(registry: Registry, worker: Worker, client: DurableClient) -> None:
    attempts = Attempts()

    @registry.activity()
    def always_fails(ctx: ActivityContext) -> None:
        attempts.record(ctx)
        raise ConnectionError("down")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        # Waits of 0.2 s then 2 s: the second would end past the 1.5 s timeout. The
        # margins are wide so a loaded machine's slow attempts cannot blur them.
        policy = RetryPolicy(
            first_interval=200 * MS, backoff=10.0, max_attempts=10, timeout=1500 * MS
        )
        yield ctx.call_activity(always_fails, retry=policy)

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert attempts.seen == [1, 2]
    assert len(_retry_timers(client, iid)) == 1


def test_unknown_activity_is_not_retried(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=10 * MS, max_attempts=5)
        try:
            yield ctx.call_activity("no_such_activity", retry=policy)
        except TaskFailedError as error:
            return error.error_type

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "UnknownNameError"
    assert _retry_timers(client, iid) == []


def test_retries_of_fanned_out_tasks_are_independent(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    lock = threading.Lock()
    failed_once: set[int] = set()

    @registry.activity()
    def fails_once(item: int) -> int:
        with lock:
            first = item not in failed_once
            failed_once.add(item)
        if first and item % 2 == 0:
            raise ConnectionError(f"item {item} failed once")
        return item

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        from durable_fx import when_all

        policy = RetryPolicy(first_interval=10 * MS, max_attempts=2)
        return (yield when_all([ctx.call_activity(fails_once, i, retry=policy) for i in range(6)]))

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == list(range(6))
    assert len(_retry_timers(client, iid)) == 3


def test_handle_that_raises_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    attempts = Attempts()

    @registry.activity()
    def fails(ctx: ActivityContext) -> None:
        attempts.record(ctx)
        raise ConnectionError("down")

    def buggy_handle(error: TaskFailedError) -> bool:
        raise AttributeError("the handle predicate is buggy")

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        policy = RetryPolicy(first_interval=10 * MS, max_attempts=3, handle=buggy_handle)
        yield ctx.call_activity(fails, retry=policy)

    iid = client.start(orchestrate)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "AttributeError"
    assert "the handle predicate is buggy" in state.failure.message
    assert state.failure.stack_trace is not None and "buggy_handle" in state.failure.stack_trace
    assert attempts.seen == [1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"first_interval": timedelta(0)}, "first_interval must be positive"),
        ({"first_interval": MS, "backoff": 0.5}, "backoff must be at least 1.0"),
        ({"first_interval": MS, "max_attempts": 0}, "max_attempts must be at least 1"),
    ],
)
def test_invalid_policy_is_rejected(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**options)  # type: ignore[arg-type]
