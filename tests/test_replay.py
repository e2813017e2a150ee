"""The replay engine on hand-built histories, through the public Replayer (no store)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from durable_fx import (
    EventTimeoutError,
    NonDeterminismError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Replayer,
    RetryPolicy,
    TaskFailedError,
    history_from_json,
    history_to_json,
    when_all,
)
from durable_fx.testing import HistoryBuilder

T0 = HistoryBuilder.DEFAULT_START


@pytest.fixture
def registry() -> Registry:
    registry = Registry()

    @registry.activity()
    def greet(name: str) -> str:
        return f"hi {name}"

    @registry.activity()
    def shout(name: str) -> str:
        return name.upper()

    return registry


def test_a_complete_history_replays_to_its_output(registry: Registry) -> None:
    @registry.orchestrator()
    def hello(ctx: OrchestrationContext, names: list[str]) -> Orchestrator[Any]:
        greetings = []
        for name in names:
            greetings.append((yield ctx.call_activity("greet", name)))
        return greetings

    history = (
        HistoryBuilder("hello", ["a", "b"])
        .scheduled(0, "greet")
        .episode()
        .completed(0, "hi a")
        .scheduled(1, "greet")
        .episode()
        .completed(1, "hi b")
    )
    result = Replayer(registry).replay(history.events)
    assert result.status is OrchestrationStatus.COMPLETED
    assert result.output == ["hi a", "hi b"]
    assert result.pending == []


def test_a_history_cut_at_a_wait_leaves_the_code_running(registry: Registry) -> None:
    @registry.orchestrator()
    def waits(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = yield ctx.call_activity("greet", "x")
        second = yield ctx.wait_for_event("go")
        return [first, second]

    history = HistoryBuilder("waits").scheduled(0, "greet").episode().completed(0, "hi x")
    result = Replayer(registry).replay(history.events)
    assert result.status is OrchestrationStatus.RUNNING
    assert result.pending == []


def test_another_activity_at_a_recorded_step_is_non_determinism(registry: Registry) -> None:
    @registry.orchestrator()
    def changed(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity("shout", "x")

    history = HistoryBuilder("changed").scheduled(0, "greet")
    with pytest.raises(NonDeterminismError) as caught:
        Replayer(registry).replay(history.events)
    error = caught.value
    assert error.sequence == 0
    assert "TaskScheduled('greet')" in error.recorded
    assert "call_activity('shout')" in error.produced
    assert "not deterministic" in str(error)


def test_another_action_kind_at_a_recorded_step_is_non_determinism(registry: Registry) -> None:
    @registry.orchestrator()
    def changed(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.create_timer(timedelta(seconds=5))

    history = HistoryBuilder("changed").scheduled(0, "greet")
    with pytest.raises(NonDeterminismError, match="create_timer"):
        Replayer(registry).replay(history.events)


def test_a_recorded_step_the_code_no_longer_takes_is_non_determinism(registry: Registry) -> None:
    @registry.orchestrator()
    def shorter(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity("greet", "x")
        return "done"

    history = (
        HistoryBuilder("shorter")
        .scheduled(0, "greet")
        .episode()
        .completed(0, "hi x")
        .scheduled(1, "greet")
    )
    with pytest.raises(NonDeterminismError, match="no action at that step"):
        Replayer(registry).replay(history.events)


def test_new_steps_beyond_the_history_are_pending_not_errors(registry: Registry) -> None:
    @registry.orchestrator()
    def longer(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_all([ctx.call_activity("greet", "a"), ctx.call_activity("shout", "b")])

    history = HistoryBuilder("longer").scheduled(0, "greet")
    result = Replayer(registry).replay(history.events)
    assert result.status is OrchestrationStatus.RUNNING
    assert result.pending == ["call_activity('shout')"]


def test_a_failed_activity_raises_at_the_yield_and_can_be_caught(registry: Registry) -> None:
    @registry.orchestrator()
    def careful(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity("greet", "x")
        except TaskFailedError as error:
            return f"{error.error_type}: {error.message}"

    history = (
        HistoryBuilder("careful").scheduled(0, "greet").episode().failed(0, ValueError("smtp down"))
    )
    result = Replayer(registry).replay(history.events)
    assert result.output == "ValueError: smtp down"


def test_retry_waits_are_timers_in_the_history(registry: Registry) -> None:
    policy = RetryPolicy(first_interval=timedelta(seconds=5), backoff=2.0, max_attempts=3)

    @registry.orchestrator()
    def retried(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity("greet", "x", retry=policy))

    history = (
        HistoryBuilder("retried").scheduled(0, "greet").episode().failed(0, ValueError("blip"))
    )
    # The first failure asks for a 5 s retry timer at the next sequence number.
    assert Replayer(registry).replay(history.events).pending == [
        f"create_timer({(history.now + timedelta(seconds=5)).isoformat()})"
    ]
    fire_at = history.now + timedelta(seconds=5)
    history.timer(1, fire_at, "retry").episode(5).fired(1).scheduled(2, "greet")
    history.episode().completed(2, "hi x")
    result = Replayer(registry).replay(history.events)
    assert result.status is OrchestrationStatus.COMPLETED
    assert result.output == "hi x"


def test_exhausted_retries_fail_with_the_last_error(registry: Registry) -> None:
    policy = RetryPolicy(first_interval=timedelta(seconds=1), max_attempts=2)

    @registry.orchestrator()
    def retried(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity("greet", "x", retry=policy))

    history = (
        HistoryBuilder("retried").scheduled(0, "greet").episode().failed(0, ValueError("first"))
    )
    fire_at = history.now + timedelta(seconds=1)
    history.timer(1, fire_at, "retry").episode(1).fired(1).scheduled(2, "greet")
    history.episode().failed(2, ValueError("second"))
    result = Replayer(registry).replay(history.events)
    assert result.status is OrchestrationStatus.FAILED
    assert result.failure is not None
    assert result.failure.error_type == "TaskFailedError"
    assert "second" in result.failure.message


def test_events_raised_before_the_wait_are_delivered_in_order(registry: Registry) -> None:
    @registry.orchestrator()
    def collects(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.call_activity("greet", "x")
        first = yield ctx.wait_for_event("Item")
        second = yield ctx.wait_for_event("item")  # names are case-insensitive
        return [first, second]

    history = (
        HistoryBuilder("collects")
        .scheduled(0, "greet")
        .episode()
        .event("Item", 1)
        .event("ITEM", 2)
        .completed(0, "hi x")
    )
    assert Replayer(registry).replay(history.events).output == [1, 2]


def test_an_event_timeout_raises_at_the_yield(registry: Registry) -> None:
    @registry.orchestrator()
    def patient(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            return (yield ctx.wait_for_event("receipt", timeout=timedelta(hours=24)))
        except EventTimeoutError as error:
            return f"gave up on {error.event_name}"

    fire_at = T0 + timedelta(hours=24)
    history = HistoryBuilder("patient").timer(0, fire_at, "event-timeout").episode(86400)
    history.fired(0)
    assert Replayer(registry).replay(history.events).output == "gave up on receipt"


def test_events_during_suspension_apply_after_resume(registry: Registry) -> None:
    @registry.orchestrator()
    def suspended(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("go"))

    history = HistoryBuilder("suspended").episode().suspended()
    history.event("go", "now")
    assert Replayer(registry).replay(history.events).status is OrchestrationStatus.RUNNING
    history.episode().resumed()
    assert Replayer(registry).replay(history.events).output == "now"


def test_current_time_and_uuids_are_the_same_on_every_replay(registry: Registry) -> None:
    @registry.orchestrator()
    def stamps(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = (ctx.current_utc_datetime.isoformat(), str(ctx.new_uuid()))
        yield ctx.call_activity("greet", "x")
        second = (ctx.current_utc_datetime.isoformat(), str(ctx.new_uuid()))
        return [first, second]

    history = HistoryBuilder("stamps").scheduled(0, "greet").episode(7).completed(0, "hi x")
    once = Replayer(registry).replay(history.events).output
    again = Replayer(registry).replay(history.events).output
    assert once == again
    assert once[0][0] == T0.isoformat()
    assert once[1][0] == (T0 + timedelta(seconds=7)).isoformat()
    assert once[0][1] != once[1][1]


@dataclass
class Point:
    x: int
    y: int


def test_results_called_by_name_are_rebuilt_into_the_given_result_type(
    registry: Registry,
) -> None:
    @registry.orchestrator()
    def by_name(ctx: OrchestrationContext) -> Orchestrator[list[str]]:
        point = yield ctx.call_activity("locate", "x", result_type=Point)
        child = yield ctx.call_sub_orchestrator("plot", point, result_type=Point)
        return [type(point).__name__, type(child).__name__, str(child.x)]

    history = (
        HistoryBuilder("by_name")
        .scheduled(0, "locate")
        .episode()
        .completed(0, {"x": 1, "y": 2})
        .sub_orchestration(1, "plot", "c")
        .episode()
        .sub_completed(1, {"x": 3, "y": 4})
    )
    assert Replayer(registry).replay(history.events).output == ["Point", "Point", "3"]


def test_histories_round_trip_through_json(registry: Registry) -> None:
    @registry.orchestrator()
    def hello(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity("greet", "x"))

    history = HistoryBuilder("hello").scheduled(0, "greet").episode().completed(0, "hi x")
    text = history_to_json(history.events)
    assert history_from_json(text) == history.events
    assert Replayer(registry).replay(text).output == "hi x"
