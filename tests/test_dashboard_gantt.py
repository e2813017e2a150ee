"""The dashboard's timeline: history events in, bars out (a pure function)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from durable_fx.dashboard import gantt_of
from durable_fx.history import (
    EventRaised,
    ExecutionCompleted,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(seconds: float = 0) -> ExecutionStarted:
    return ExecutionStarted(timestamp=at(seconds), name="email", instance_id="i", execution_id="e")


def test_retries_failures_timers_waits_and_children_are_bars() -> None:
    boom = FailureDetails(error_type="SMTPError", message="421 try later")
    history: list[HistoryEvent] = [
        started(),
        TaskScheduled(event_id=0, timestamp=at(0), name="send"),
        TaskFailed(timestamp=at(2), task_scheduled_id=0, failure=boom),
        TimerCreated(event_id=1, timestamp=at(2), fire_at=at(7), purpose="retry"),
        TimerFired(timestamp=at(7), timer_id=1, fire_at=at(7)),
        TaskScheduled(event_id=2, timestamp=at(7), name="send", attempt=2),
        TaskCompleted(timestamp=at(8), task_scheduled_id=2, result='"m-1"'),
        TimerCreated(event_id=3, timestamp=at(8), fire_at=at(68), purpose="event-timeout"),
        EventRaised(timestamp=at(20), name="Receipt", input="{}"),
        TimerCreated(event_id=4, timestamp=at(20), fire_at=at(30), purpose="event-timeout"),
        TimerFired(timestamp=at(30), timer_id=4, fire_at=at(30)),
        SubOrchestrationInstanceCreated(
            event_id=5, timestamp=at(30), name="escalate", instance_id="c"
        ),
        SubOrchestrationInstanceFailed(timestamp=at(35), task_scheduled_id=5, failure=boom),
        ExecutionCompleted(timestamp=at(40), status="COMPLETED"),
    ]
    gantt = gantt_of(history)
    assert gantt is not None and gantt.ended == at(40)
    rows = [(b.kind, b.label, b.outcome, b.start, b.end) for b in gantt.bars]
    assert rows == [
        ("activity", "send", "failed", at(0), at(2)),
        ("timer", "timer (retry)", "fired", at(2), at(7)),
        ("activity", "send #2", "completed", at(7), at(8)),
        ("wait", "wait → Receipt", "arrived", at(8), at(20)),
        ("event", "Receipt", "arrived", at(20), at(20)),
        ("wait", "wait (timed out)", "timed out", at(20), at(30)),
        ("sub-orchestration", "escalate", "failed", at(30), at(35)),
    ]
    assert "SMTPError: 421 try later" in gantt.bars[0].detail
    # Positions are shares of the execution's 40 s.
    assert gantt.position(gantt.bars[1], now=at(100)) == (5.0, 12.5)


def test_what_has_not_ended_is_open_and_drawn_to_now() -> None:
    history: list[HistoryEvent] = [
        started(),
        TaskScheduled(event_id=0, timestamp=at(1), name="send"),
        TimerCreated(event_id=1, timestamp=at(1), fire_at=at(86_400), purpose="event-timeout"),
    ]
    gantt = gantt_of(history)
    assert gantt is not None and gantt.ended is None
    assert [(b.kind, b.outcome, b.end) for b in gantt.bars] == [
        ("activity", "running", None),
        ("wait", "running", None),
    ]
    assert gantt.position(gantt.bars[0], now=at(11)) == (9.091, 90.909)  # 1 s of 11, then 10


def test_only_the_last_execution_is_drawn() -> None:
    history: list[HistoryEvent] = [
        started(0),
        TaskScheduled(event_id=0, timestamp=at(0), name="old"),
        TaskCompleted(timestamp=at(1), task_scheduled_id=0),
        ExecutionCompleted(timestamp=at(2), status="CONTINUED_AS_NEW"),
        started(2),
        TaskScheduled(event_id=0, timestamp=at(3), name="new"),
        TaskCompleted(timestamp=at(4), task_scheduled_id=0),
    ]
    gantt = gantt_of(history)
    assert gantt is not None and [b.label for b in gantt.bars] == ["new"]
    assert gantt_of([]) is None
