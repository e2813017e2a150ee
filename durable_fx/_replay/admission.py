"""Admission: which new events an episode records in history.

A message can reach an instance more than once (an activity that ran twice,
a redelivered timer) or too late (a result for a task the code gave up on,
an event after the orchestration ended). The rule that keeps those out of
history lives here once, for the built-in executor (which knows its open
tasks from the running code) and for the gRPC sidecar (whose orchestrator
code runs in another process, so it reads them off the history instead).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from .._history import (
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    HistoryEvent,
    OrchestratorStarted,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)

__all__ = ["HistoryState", "admits"]

_RESULT_EVENTS = (
    TaskCompleted,
    TaskFailed,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
)


def admits(
    event: HistoryEvent,
    *,
    started: bool,
    completed: bool,
    open_ids: Container[int],
    open_requests: Container[str] = (),
) -> bool:
    """False for events that must not reach history: duplicates and late results.

    Args:
        event: A new event for the execution.
        started: The execution has already applied its ``ExecutionStarted``.
        completed: The execution has ended (only episode markers still apply).
        open_ids: Ids of the tasks, timers and sub-orchestrations still awaited.
        open_requests: Entity calls (request ids) and lock requests (critical
            section ids) still awaited: an entity's answer names its request.
    """
    if completed:
        return isinstance(event, OrchestratorStarted)
    if isinstance(event, ExecutionStarted):
        return not started
    if isinstance(event, _RESULT_EVENTS):
        return event.task_scheduled_id in open_ids
    if isinstance(event, TimerFired):
        return event.timer_id in open_ids
    if isinstance(event, EntityOperationCompleted | EntityOperationFailed):
        return event.request_id in open_requests
    if isinstance(event, EntityLockGranted):
        return event.critical_section_id in open_requests
    return True


@dataclass(slots=True)
class HistoryState:
    """What an execution's history says about it, folded one event at a time.

    For orchestrator code that runs out of process: the open task ids, the
    running children and the suspension flag come from the recorded events,
    not from live code. A task id scheduled again (a retry that reuses its
    id) is open again.
    """

    started: bool = False
    completed: bool = False
    suspended: bool = False
    open_ids: set[int] = field(default_factory=set)
    children: dict[int, str] = field(default_factory=dict)
    """Sub-orchestrations started and not yet finished, by action id."""
    open_requests: set[str] = field(default_factory=set)
    """Entity calls and lock requests not yet answered (request and critical section ids)."""
    superseded: set[str] = field(default_factory=set)
    """Executions rewinds replaced: children and entities may still answer them."""

    @classmethod
    def of(cls, history: Iterable[HistoryEvent]) -> HistoryState:
        """The state after ``history``."""
        state = cls()
        for event in history:
            state.observe(event)
        return state

    def copy(self) -> HistoryState:
        """An independent copy (an episode may fail to commit; the original stays valid)."""
        return HistoryState(
            self.started,
            self.completed,
            self.suspended,
            set(self.open_ids),
            dict(self.children),
            set(self.open_requests),
            set(self.superseded),
        )

    def admit(self, event: HistoryEvent) -> bool:
        """Apply ``event`` if ``admits`` lets it into history; True if it did."""
        if not admits(
            event,
            started=self.started,
            completed=self.completed,
            open_ids=self.open_ids,
            open_requests=self.open_requests,
        ):
            return False
        self.observe(event)
        return True

    def observe(self, event: HistoryEvent) -> None:
        """Apply a recorded event."""
        match event:
            case ExecutionStarted():
                self.started = True
            case TaskScheduled() | TimerCreated():
                self.open_ids.add(event.event_id)
            case SubOrchestrationInstanceCreated():
                self.open_ids.add(event.event_id)
                self.children[event.event_id] = event.instance_id
            case (
                TaskCompleted()
                | TaskFailed()
                | SubOrchestrationInstanceCompleted()
                | SubOrchestrationInstanceFailed()
            ):
                self.open_ids.discard(event.task_scheduled_id)
                self.children.pop(event.task_scheduled_id, None)
            case TimerFired():
                self.open_ids.discard(event.timer_id)
            case EntityOperationCalled():
                self.open_requests.add(event.request_id)
            case EntityLockRequested():
                self.open_requests.add(event.critical_section_id)
            case EntityOperationCompleted() | EntityOperationFailed():
                self.open_requests.discard(event.request_id)
            case EntityLockGranted():
                self.open_requests.discard(event.critical_section_id)
            case ExecutionRewound(previous_execution_id=str(previous)):
                self.superseded.add(previous)
            case ExecutionSuspended():
                self.suspended = True
            case ExecutionResumed():
                self.suspended = False
            case ExecutionTerminated() | ExecutionCompleted():
                # A terminate ends the execution whatever the code does next.
                self.completed = True
            case _:
                pass
