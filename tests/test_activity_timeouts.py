"""Activity timeouts: a hung activity no longer holds its orchestration forever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from durable_fx import (
    ActivityContext,
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
)
from durable_fx.history import TaskFailed
from tests.support.instances import history_kinds

WAIT = 20.0
TIMEOUT = timedelta(milliseconds=300)


@pytest.fixture
def stuck() -> Iterator[threading.Event]:
    """Activities that wait on it hang until the test ends."""
    release = threading.Event()
    yield release
    release.set()


def test_a_hung_attempt_times_out_and_the_orchestration_moves_on(
    registry: Registry, worker: Worker, client: DurableClient, stuck: threading.Event
) -> None:
    @registry.activity()
    def hangs(_: None) -> str:
        stuck.wait()
        return "too late"

    @registry.orchestrator()
    def patient(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            return (yield ctx.call_activity(hangs, None, timeout=TIMEOUT))
        except TaskFailedError as error:
            return [error.error_type, str(error)]

    iid = client.start(patient)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    error_type, message = state.output
    assert error_type == "ActivityTimeoutError"
    assert "hangs did not finish within 0:00:00.300000" in message
    stuck.set()  # the late result is dropped: the task was decided
    kinds = history_kinds(client, iid)
    assert "TaskCompleted" not in kinds and kinds.count("TimerFired") == 1


def test_a_timed_out_attempt_counts_for_the_retry_policy(
    registry: Registry, worker: Worker, client: DurableClient, stuck: threading.Event
) -> None:
    attempts: list[int] = []
    retry = RetryPolicy(first_interval=timedelta(milliseconds=20), max_attempts=3)

    @registry.activity()
    def flaky(_: None) -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            stuck.wait()  # the first attempt hangs
        return f"attempt {len(attempts)}"

    @registry.orchestrator()
    def retried(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(flaky, None, retry=retry, timeout=TIMEOUT))

    state = client.wait(client.start(retried), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "attempt 2"


def test_an_attempt_that_finishes_in_time_is_not_disturbed_by_its_timer(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def quick(n: int) -> int:
        return n * 2

    @registry.orchestrator()
    def prompt(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = yield ctx.call_activity(quick, 1, timeout=TIMEOUT)
        yield ctx.create_timer(TIMEOUT * 2)  # the first timeout fires meanwhile
        return first + (yield ctx.call_activity(quick, 2, timeout=TIMEOUT))

    iid = client.start(prompt)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 6


def test_a_timeout_must_be_positive(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def quick(n: int) -> int:
        return n

    @registry.orchestrator()
    def careless(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(quick, 1, timeout=timedelta(0)))

    state = client.wait(client.start(careless), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None and "timeout must be positive" in state.failure.message


# -- heartbeats ----------------------------------------------------------------------------------

BEAT = timedelta(milliseconds=400)


def test_an_activity_that_keeps_beating_outlives_its_heartbeat_timeout(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def long_job(rows: int, ctx: ActivityContext) -> int:
        for row in range(rows):
            time.sleep(0.05)  # 0.8 s in all, twice the heartbeat timeout
            ctx.heartbeat({"row": row})
        return rows

    @registry.orchestrator()
    def job(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(long_job, 16, heartbeat_timeout=BEAT))

    state = client.wait(client.start(job), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 16


def test_a_silent_attempt_times_out_and_the_retry_resumes_from_its_details(
    registry: Registry, worker: Worker, client: DurableClient, stuck: threading.Event
) -> None:
    """Temporal's pattern: progress in the heartbeat, the next attempt carries on from it."""
    retry = RetryPolicy(first_interval=timedelta(milliseconds=20), max_attempts=3)

    @registry.activity()
    def import_rows(total: int, ctx: ActivityContext) -> dict[str, Any]:
        start = ctx.heartbeat_details["next"] if ctx.heartbeat_details else 0
        for row in range(start, total):
            if ctx.attempt == 1 and row == 3:
                stuck.wait()  # the first attempt hangs at row 3, silent
            ctx.heartbeat({"next": row + 1})
        return {"attempt": ctx.attempt, "resumed_at": start}

    @registry.orchestrator()
    def importer(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(import_rows, 5, retry=retry, heartbeat_timeout=BEAT))

    iid = client.start(importer)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"attempt": 2, "resumed_at": 3}
    failed = client.get(iid, history=True)
    assert failed is not None and failed.history is not None
    [timed_out] = [e for e in failed.history if isinstance(e, TaskFailed)]
    assert timed_out.failure.error_type == "ActivityTimeoutError"
    assert "import_rows sent no heartbeat for 0:00:00.400000" in timed_out.failure.message
    assert timed_out.heartbeat_details == '{"next":3}'


def test_heartbeat_details_too_big_fail_the_activity_with_the_reason(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def chatty(_: None, ctx: ActivityContext) -> None:
        ctx.heartbeat("x" * 20_000)

    @registry.orchestrator()
    def talks(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity(chatty, None)
        except TaskFailedError as error:
            return str(error)

    state = client.wait(client.start(talks), timeout=WAIT)
    assert "heartbeat details are 20002 characters of JSON, more than 16384" in state.output


# -- total and registered timeouts ---------------------------------------------------------------


def test_a_total_timeout_ends_the_retries(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    calls: list[int] = []
    retry = RetryPolicy(first_interval=timedelta(milliseconds=100), max_attempts=1000)

    @registry.activity()
    def down(_: None) -> None:
        calls.append(1)
        raise ConnectionError("still down")

    @registry.orchestrator()
    def persistent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity(down, None, retry=retry, total_timeout=TIMEOUT * 2)
        except TaskFailedError as error:
            return [error.error_type, str(error)]

    state = client.wait(client.start(persistent), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    error_type, message = state.output
    assert error_type == "ActivityTimeoutError"
    assert "down did not finish within 0:00:00.600000 of its first scheduling" in message
    assert 2 <= len(calls) <= 8, calls


def test_a_total_timeout_ends_an_attempt_that_hangs(
    registry: Registry, worker: Worker, client: DurableClient, stuck: threading.Event
) -> None:
    retry = RetryPolicy(first_interval=timedelta(milliseconds=20), max_attempts=5)

    @registry.activity()
    def hangs(_: None) -> str:
        stuck.wait()
        return "too late"

    @registry.orchestrator()
    def bounded(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            return (yield ctx.call_activity(hangs, None, retry=retry, total_timeout=TIMEOUT))
        except TaskFailedError as error:
            return error.error_type

    iid = client.start(bounded)
    assert client.wait(iid, timeout=WAIT).output == "ActivityTimeoutError"
    assert history_kinds(client, iid).count("TaskScheduled") == 1, "no retry after the total"


def test_an_activity_registered_with_a_timeout_times_out_without_one_in_the_call(
    registry: Registry, worker: Worker, client: DurableClient, stuck: threading.Event
) -> None:
    @registry.activity(timeout=TIMEOUT)
    def hangs(_: None) -> str:
        stuck.wait()
        return "too late"

    @registry.orchestrator()
    def trusting(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            return (yield ctx.call_activity("hangs"))
        except TaskFailedError as error:
            return error.error_type

    assert client.wait(client.start(trusting), timeout=WAIT).output == "ActivityTimeoutError"


def test_registered_timeouts_must_be_positive(registry: Registry) -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout must be positive"):

        @registry.activity(heartbeat_timeout=timedelta(0))
        def never(_: None) -> None: ...
