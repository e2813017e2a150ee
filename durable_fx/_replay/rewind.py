"""Rewind: the history a failed execution runs on from, and what it still waits for.

A rewind keeps every successful result and drops the failure: the failed
results that reached the orchestrator code and the ``ExecutionCompleted``.
The execution runs on under a new execution id (as the Durable Task SDKs
rewind): a result of the failed run that was still on its way (an activity
attempt running as the instance failed) is then no answer to the rewound
one, which sent that work again. Sub-orchestrations and entities are not
sent again, so their answers to the replaced execution still count (see
``HistoryState.superseded``).
Replaying what is left schedules nothing new (every kept ``TaskScheduled``
matches the code's action at the same id), so whoever commits the rewind
sends the work that history leaves open again: the activities, the timers,
the sub-orchestrations (see ``OpenWork``). Attempts a retry policy followed
with a retry timer stay in history, so the ids of what follows stay aligned.

An orchestrator that caught a failure and went on to fail elsewhere cannot
be rewound cleanly: the dropped failure is awaited again while history holds
what the code did after it, and the replay reports a non-determinism.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from .._history import (
    ExecutionCompleted,
    ExecutionRewound,
    ExecutionStarted,
    HistoryEvent,
    OrchestratorStarted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
)
from .admission import HistoryState

__all__ = ["OpenWork", "open_work", "rewound_history"]


def rewound_history(
    history: Sequence[HistoryEvent],
    failures: Collection[int] | None,
    rewound: ExecutionRewound,
    now: datetime,
    execution_id: str,
) -> list[HistoryEvent]:
    """``history`` without its failure, run on as ``execution_id``, ending with ``rewound``.

    ``failures`` are the ids of the failed results to drop (the executor's
    ``failures_raised``); ``None`` drops every failed result, for a history
    the current code cannot replay (it will then fail again, saying why).
    A rewound sub-orchestration reports to its parent's execution named in
    ``rewound.parent_execution_id``, if any.
    """
    kept: list[HistoryEvent] = []
    previous: str | None = None
    for event in history:
        if isinstance(event, ExecutionCompleted) or _dropped(event, failures):
            continue
        if isinstance(event, ExecutionStarted):
            previous = event.execution_id
            event = _renamed(event, execution_id, rewound.parent_execution_id)
        kept.append(event)
    marker = rewound.model_copy(update={"previous_execution_id": previous})
    return [*kept, OrchestratorStarted(timestamp=now), marker]


def _renamed(
    started: ExecutionStarted, execution_id: str, parent_execution_id: str | None
) -> ExecutionStarted:
    update: dict[str, object] = {"execution_id": execution_id}
    if started.parent is not None and parent_execution_id:
        update["parent"] = started.parent.model_copy(update={"execution_id": parent_execution_id})
    return started.model_copy(update=update)


def _dropped(event: HistoryEvent, failures: Collection[int] | None) -> bool:
    if not isinstance(event, TaskFailed | SubOrchestrationInstanceFailed):
        return False
    return failures is None or event.task_scheduled_id in failures


@dataclass(frozen=True, slots=True)
class OpenWork:
    """What a history schedules and has no result for, by kind."""

    activities: list[TaskScheduled]
    timers: list[TimerCreated]
    children: list[SubOrchestrationInstanceCreated]


def open_work(history: Sequence[HistoryEvent]) -> OpenWork:
    """The activities, timers and sub-orchestrations ``history`` still waits for."""
    open_ids = HistoryState.of(history).open_ids
    # The last scheduling of an id wins (a retry may schedule the same id again).
    waiting = list({e.event_id: e for e in history if e.event_id in open_ids}.values())
    return OpenWork(
        activities=[e for e in waiting if isinstance(e, TaskScheduled)],
        timers=[e for e in waiting if isinstance(e, TimerCreated)],
        children=[e for e in waiting if isinstance(e, SubOrchestrationInstanceCreated)],
    )
