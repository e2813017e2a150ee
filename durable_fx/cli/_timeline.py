"""An instance's history as a readable timeline.

``timeline_rows`` turns history events into rows (offset from the start, kind,
a one-line detail); ``render_timeline`` lays the same rows out as a rich
table. The CLI's ``history`` command and the demo both use them, and
``TimelineRow.as_dict`` gives the rows as plain JSON data for scripts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.table import Table
from rich.text import Text

from .._history import (
    ContinueAsNew,
    EventRaised,
    EventSent,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestratorCompleted,
    OrchestratorStarted,
    PatchApplied,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from .._state import OrchestrationState

__all__ = ["TimelineRow", "format_offset", "preview", "render_timeline", "timeline_rows"]

PREVIEW_WIDTH = 60
_FAILURE_WIDTH = 120

# Episode markers open every replay step; they are noise when reading what an
# orchestration did, so they are shown only on request.
_EPISODE_MARKERS = (OrchestratorStarted, OrchestratorCompleted)

_KIND_STYLES = {
    "ExecutionStarted": "bold",
    "ExecutionCompleted": "bold green",
    "ExecutionTerminated": "bold red",
    "ExecutionSuspended": "yellow",
    "ExecutionResumed": "yellow",
    "ContinueAsNew": "bold",
    "OrchestratorStarted": "dim",
    "OrchestratorCompleted": "dim",
    "TaskScheduled": "blue",
    "TaskCompleted": "green",
    "TaskFailed": "red",
    "SubOrchestrationInstanceCreated": "blue",
    "SubOrchestrationInstanceCompleted": "green",
    "SubOrchestrationInstanceFailed": "red",
    "TimerCreated": "cyan",
    "TimerFired": "cyan",
    "EventSent": "magenta",
    "PatchApplied": "blue",
    "EventRaised": "magenta",
}


_TIMER_PURPOSES = {
    "timer": "timer",
    "retry": "retry back-off",
    "event-timeout": "event timeout",
    "activity-timeout": "activity timeout",
    "http-poll": "HTTP poll wait",
    "http-timeout": "HTTP call timeout",
}


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One history event, summarised for reading."""

    offset: timedelta
    """Time since the instance's earliest event."""
    kind: str
    """The event kind, e.g. ``"TaskScheduled"``."""
    detail: str
    """A one-line summary: names, ids and truncated payloads."""
    event: HistoryEvent
    """The event itself."""

    @property
    def offset_text(self) -> str:
        """The offset as ``+0.012s`` (minutes, hours and days for long runs)."""
        return format_offset(self.offset)

    @property
    def failed(self) -> bool:
        """True for events that record a failure."""
        if isinstance(self.event, ExecutionCompleted):
            return self.event.status in ("FAILED", "TERMINATED")
        return isinstance(
            self.event, TaskFailed | SubOrchestrationInstanceFailed | ExecutionTerminated
        )

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready data, with the full event under ``"event"``."""
        return {
            "offset": self.offset_text,
            "offset_seconds": round(self.offset.total_seconds(), 6),
            "timestamp": self.event.timestamp.isoformat().replace("+00:00", "Z"),
            "kind": self.kind,
            "event_id": self.event.event_id,
            "detail": self.detail,
            "event": self.event.model_dump(mode="json"),
        }


def timeline_rows(
    history: OrchestrationState | Sequence[HistoryEvent], *, show_episodes: bool = False
) -> list[TimelineRow]:
    """The timeline of a history, in history order.

    Args:
        history: A state fetched with ``client.get(id, history=True)``, or the events.
        show_episodes: Include the OrchestratorStarted/Completed episode markers.

    Raises:
        ValueError: ``history`` is a state fetched without its history.
    """
    events = _events_of(history)
    if not events:
        return []
    # The earliest timestamp, not the first event's: an episode's
    # OrchestratorStarted comes first in history but is stamped after the
    # ExecutionStarted the client wrote, and offsets should never be negative.
    start = min(event.timestamp for event in events)
    names = _task_names(events)
    return [
        TimelineRow(event.timestamp - start, event.kind, _detail(event, start, names), event)
        for event in events
        if show_episodes or not isinstance(event, _EPISODE_MARKERS)
    ]


def render_timeline(
    history: OrchestrationState | Sequence[HistoryEvent],
    *,
    show_episodes: bool = False,
    title: str | None = None,
) -> Table:
    """A rich table of the timeline: offset, event kind and detail per row.

    Args:
        history: A state fetched with ``client.get(id, history=True)``, or the events.
        show_episodes: Include the OrchestratorStarted/Completed episode markers.
        title: The table's title; by default the instance's name, id and status.
    """
    if title is None and isinstance(history, OrchestrationState):
        title = f"{history.name} {history.instance_id} ({history.status.value})"
    table = Table(
        title=Text(title, style="bold") if title is not None else None,
        title_justify="left",
        header_style="bold",
    )
    table.add_column("time", justify="right", style="dim", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for row in timeline_rows(history, show_episodes=show_episodes):
        # Text, not markup strings: payloads and names are user data and may
        # contain "[...]" that rich would otherwise read as style tags.
        detail = Text(row.detail, style="red" if row.failed else "")
        table.add_row(row.offset_text, Text(row.kind, style=_KIND_STYLES.get(row.kind, "")), detail)
    return table


def format_offset(offset: timedelta) -> str:
    """``+0.012s``, ``+12.345s``, ``+2m03.456s``, ``+1h02m03s`` or ``+2d03h04m``."""
    seconds = offset.total_seconds()
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.3f}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{sign}{int(minutes)}m{secs:06.3f}s"
    hours, minutes = divmod(int(minutes), 60)
    if hours < 24:
        return f"{sign}{hours}h{minutes:02d}m{int(secs):02d}s"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d{hours:02d}h{minutes:02d}m"


def preview(payload: str | None, width: int = PREVIEW_WIDTH) -> str:
    """Compact one-line JSON of a payload, cut to ``width`` characters with ``…``."""
    if payload is None:
        return "null"
    try:
        text = json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False)
    except ValueError:  # not JSON (e.g. written by another SDK): show it as it is
        text = " ".join(payload.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _events_of(history: OrchestrationState | Sequence[HistoryEvent]) -> Sequence[HistoryEvent]:
    if not isinstance(history, OrchestrationState):
        return history
    if history.history is None:
        raise ValueError(
            f"the state of {history.instance_id!r} was fetched without its history; "
            "use client.get(instance_id, history=True)"
        )
    return history.history


def _task_names(events: Sequence[HistoryEvent]) -> dict[int, str]:
    """Task and sub-orchestration names by the event id their results refer to."""
    names: dict[int, str] = {}
    for event in events:
        if isinstance(event, TaskScheduled | SubOrchestrationInstanceCreated):
            names[event.event_id] = event.name
    return names


def _failure(failure: FailureDetails | None) -> str:
    if failure is None:
        return "failed"
    # Longer than a payload preview: the message is usually what the reader came for.
    message = " ".join(failure.message.split())
    if len(message) > _FAILURE_WIDTH:
        message = message[: _FAILURE_WIDTH - 1] + "…"
    return f"{failure.error_type}: {message}"


def _at(moment: datetime, start: datetime) -> str:
    """The offset of ``moment`` and its wall time (with the date once it is another day)."""
    if moment.date() == start.date():
        wall = f"{moment:%H:%M:%S.%f}"[:-3]
    else:
        wall = f"{moment:%Y-%m-%d %H:%M:%S}"
    return f"{format_offset(moment - start)} ({wall})"


def _reason(payload: str | None) -> str:
    return "" if payload is None else f"reason: {preview(payload)}"


def _detail(event: HistoryEvent, start: datetime, names: dict[int, str]) -> str:
    match event:
        case ExecutionStarted():
            detail = f"{event.name}({preview(event.input)})"
            if event.scheduled_start is not None:
                detail += f" scheduled for {_at(event.scheduled_start, start)}"
            if event.parent is not None:
                detail += f" sub-orchestration of {event.parent.instance_id}"
            return detail
        case ExecutionCompleted():
            if event.failure is not None:
                return f"{event.status} {_failure(event.failure)}"
            return f"{event.status} → {preview(event.result)}"
        case ExecutionTerminated() | ExecutionSuspended() | ExecutionResumed():
            return _reason(event.input)
        case ExecutionRewound():
            return event.reason or ""
        case ContinueAsNew():
            return f"new input {preview(event.input)}"
        case TaskScheduled():
            attempt = f" attempt {event.attempt}" if event.attempt > 1 else ""
            return f"#{event.event_id} {event.name}({preview(event.input)}){attempt}"
        case TaskCompleted() | SubOrchestrationInstanceCompleted():
            name = names.get(event.task_scheduled_id, "?")
            return f"#{event.task_scheduled_id} {name} → {preview(event.result)}"
        case TaskFailed() | SubOrchestrationInstanceFailed():
            name = names.get(event.task_scheduled_id, "?")
            return f"#{event.task_scheduled_id} {name} {_failure(event.failure)}"
        case SubOrchestrationInstanceCreated():
            return (
                f"#{event.event_id} {event.name}({preview(event.input)}) "
                f"instance {event.instance_id}"
            )
        case TimerCreated():
            purpose = _TIMER_PURPOSES.get(event.purpose, event.purpose)
            return f"#{event.event_id} {purpose} fires at {_at(event.fire_at, start)}"
        case TimerFired():
            return f"#{event.timer_id} fired"
        case EventSent():
            return f"#{event.event_id} {event.name}({preview(event.input)}) → {event.instance_id}"
        case EventRaised():
            return f"{event.name} {preview(event.input)}"
        case PatchApplied():
            return f"#{event.event_id} {event.name}"
        case _:
            return ""
