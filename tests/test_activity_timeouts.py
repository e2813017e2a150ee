"""Activity timeouts: a hung activity no longer holds its orchestration forever."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
)
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
