"""History events, the record an orchestration is replayed from, as public types.

``client.get(id, history=True).history`` lists them, the ``Replayer`` replays
them, and ``durable_fx.testing.HistoryBuilder`` writes them by hand for golden
tests. ``history_to_json``/``history_from_json`` (in ``durable_fx``) store them.
Payloads (``input``, ``result``) are JSON text; ``event_id`` numbers the
actions a task's outcome refers back to (``task_scheduled_id``, ``timer_id``).
"""

from ._history import (
    ContinueAsNew,
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    EntityUnlockSent,
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
    ParentInstance,
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

__all__ = [
    "ContinueAsNew",
    "EntityLockGranted",
    "EntityLockRequested",
    "EntityOperationCalled",
    "EntityOperationCompleted",
    "EntityOperationFailed",
    "EntityOperationSignaled",
    "EntityUnlockSent",
    "EventRaised",
    "EventSent",
    "ExecutionCompleted",
    "ExecutionResumed",
    "ExecutionRewound",
    "ExecutionStarted",
    "ExecutionSuspended",
    "ExecutionTerminated",
    "FailureDetails",
    "HistoryEvent",
    "OrchestratorCompleted",
    "OrchestratorStarted",
    "ParentInstance",
    "PatchApplied",
    "SubOrchestrationInstanceCompleted",
    "SubOrchestrationInstanceCreated",
    "SubOrchestrationInstanceFailed",
    "TaskCompleted",
    "TaskFailed",
    "TaskScheduled",
    "TimerCreated",
    "TimerFired",
]
