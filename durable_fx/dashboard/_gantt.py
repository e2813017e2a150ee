"""An execution's history as bars on a time axis: what ran, waited, and how long.

Pure: history events in, ``Bar`` rows out. Activities run from their
``TaskScheduled`` to their result (each retry is its own bar, numbered by
attempt); timers from ``TimerCreated`` to ``TimerFired``; a wait for an event
with a timeout from its timer to the event that ended it (or the timeout);
sub-orchestrations from their creation to their result. Anything without an
end yet is open (``end`` is ``None``) and drawn up to "now".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .._history import (
    EventRaised,
    ExecutionCompleted,
    ExecutionStarted,
    HistoryEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)

__all__ = ["Bar", "Gantt", "gantt_of"]

BarKind = Literal["activity", "timer", "wait", "sub-orchestration", "event"]
Outcome = Literal["completed", "failed", "running", "fired", "arrived", "timed out"]


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of the chart; ``end`` is ``None`` while it is still going."""

    kind: BarKind
    label: str
    start: datetime
    end: datetime | None
    outcome: Outcome
    detail: str = ""
    event_id: int = -1

    def duration(self, now: datetime) -> timedelta:
        return (self.end or now) - self.start


@dataclass(frozen=True, slots=True)
class Gantt:
    """The bars of one execution and the time axis they share."""

    started: datetime
    ended: datetime | None
    bars: list[Bar]

    def extent(self, now: datetime) -> timedelta:
        """The axis' length: start to end (or now), at least a millisecond."""
        end = self.ended or max([now, *(b.end or now for b in self.bars)])
        return max(end - self.started, timedelta(milliseconds=1))

    def position(self, bar: Bar, now: datetime) -> tuple[float, float]:
        """Left offset and width of ``bar`` as percentages of the axis."""
        extent = self.extent(now).total_seconds()
        left = (bar.start - self.started).total_seconds() / extent * 100
        width = bar.duration(now).total_seconds() / extent * 100
        left = min(max(left, 0.0), 100.0)
        return round(left, 3), round(min(max(width, 0.0), 100.0 - left), 3)


def gantt_of(history: Sequence[HistoryEvent]) -> Gantt | None:
    """The bars of the last execution in ``history`` (``None`` if it never started)."""
    started_at = _last_start(history)
    if started_at is None:
        return None
    events = history[started_at:]
    start = events[0]
    assert isinstance(start, ExecutionStarted)
    ended = next((e.timestamp for e in events if isinstance(e, ExecutionCompleted)), None)
    return Gantt(start.timestamp, ended, _bars(events))


def _last_start(history: Sequence[HistoryEvent]) -> int | None:
    for index in range(len(history) - 1, -1, -1):
        if isinstance(history[index], ExecutionStarted):
            return index
    return None


def _bars(events: Sequence[HistoryEvent]) -> list[Bar]:
    bars: list[Bar] = []
    open_tasks: dict[int, TaskScheduled] = {}
    open_children: dict[int, SubOrchestrationInstanceCreated] = {}
    open_timers: dict[int, TimerCreated] = {}
    waits: list[TimerCreated] = []  # event-timeout timers, oldest first
    ends: dict[int, Bar] = {}
    for event in events:
        match event:
            case TaskScheduled():
                open_tasks[event.event_id] = event
            case TaskCompleted() | TaskFailed():
                scheduled = open_tasks.pop(event.task_scheduled_id, None)
                if scheduled is not None:
                    ends[scheduled.event_id] = _activity(scheduled, event)
            case SubOrchestrationInstanceCreated():
                open_children[event.event_id] = event
            case SubOrchestrationInstanceCompleted() | SubOrchestrationInstanceFailed():
                created = open_children.pop(event.task_scheduled_id, None)
                if created is not None:
                    ends[created.event_id] = _child(created, event)
            case TimerCreated() if event.purpose == "event-timeout":
                waits.append(event)
                open_timers[event.event_id] = event
            case TimerCreated():
                open_timers[event.event_id] = event
            case TimerFired():
                timer = open_timers.pop(event.timer_id, None)
                if timer is not None:
                    if timer in waits:
                        waits.remove(timer)
                    ends[timer.event_id] = _timer(timer, event.timestamp)
            case EventRaised():
                bars.append(Bar("event", event.name, event.timestamp, event.timestamp, "arrived"))
                # The oldest wait still open ended with this event (its timer is let go).
                if waits:
                    wait = waits.pop(0)
                    open_timers.pop(wait.event_id, None)
                    ends[wait.event_id] = Bar(
                        "wait", f"wait → {event.name}", wait.timestamp, event.timestamp,
                        "arrived", f"timeout at {wait.fire_at.isoformat()}", wait.event_id,
                    )  # fmt: skip
            case _:
                pass
    bars.extend(ends.values())
    bars.extend(_still_open(open_tasks, open_children, open_timers))
    bars.sort(key=lambda b: (b.start, b.event_id))
    return bars


def _activity(scheduled: TaskScheduled, result: TaskCompleted | TaskFailed) -> Bar:
    label = scheduled.name if scheduled.attempt == 1 else f"{scheduled.name} #{scheduled.attempt}"
    if isinstance(result, TaskFailed):
        detail = f"{result.failure.error_type}: {result.failure.message}"
        return Bar("activity", label, scheduled.timestamp, result.timestamp, "failed", detail,
                   scheduled.event_id)  # fmt: skip
    return Bar("activity", label, scheduled.timestamp, result.timestamp, "completed", "",
               scheduled.event_id)  # fmt: skip


def _child(
    created: SubOrchestrationInstanceCreated,
    result: SubOrchestrationInstanceCompleted | SubOrchestrationInstanceFailed,
) -> Bar:
    failed = isinstance(result, SubOrchestrationInstanceFailed)
    detail = created.instance_id
    if isinstance(result, SubOrchestrationInstanceFailed):
        detail += f": {result.failure.error_type}: {result.failure.message}"
    return Bar("sub-orchestration", created.name, created.timestamp, result.timestamp,
               "failed" if failed else "completed", detail, created.event_id)  # fmt: skip


def _timer(timer: TimerCreated, fired_at: datetime) -> Bar:
    if timer.purpose == "event-timeout":
        return Bar("wait", "wait (timed out)", timer.timestamp, fired_at, "timed out",
                   f"timeout at {timer.fire_at.isoformat()}", timer.event_id)  # fmt: skip
    label = "timer" if timer.purpose == "timer" else f"timer ({timer.purpose})"
    return Bar("timer", label, timer.timestamp, fired_at, "fired",
               f"due {timer.fire_at.isoformat()}", timer.event_id)  # fmt: skip


def _still_open(
    tasks: dict[int, TaskScheduled],
    children: dict[int, SubOrchestrationInstanceCreated],
    timers: dict[int, TimerCreated],
) -> list[Bar]:
    bars = [
        Bar("activity", t.name if t.attempt == 1 else f"{t.name} #{t.attempt}", t.timestamp,
            None, "running", "", t.event_id)
        for t in tasks.values()
    ]  # fmt: skip
    bars += [
        Bar("sub-orchestration", c.name, c.timestamp, None, "running", c.instance_id, c.event_id)
        for c in children.values()
    ]
    for timer in timers.values():
        kind: BarKind = "wait" if timer.purpose == "event-timeout" else "timer"
        label = "wait" if kind == "wait" else "timer"
        bars.append(Bar(kind, label, timer.timestamp, None, "running",
                        f"due {timer.fire_at.isoformat()}", timer.event_id))  # fmt: skip
    return bars
