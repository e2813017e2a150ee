"""History events: the append-only record an orchestration is replayed from.

The kinds and fields mirror ``HistoryEvent`` of the Durable Task protobuf
(``orchestrator_service.proto``) so that the gRPC sidecar maps them one to one.
Payloads (``input``, ``result``) stay JSON *text*: history never re-encodes a
value, and the sidecar passes them through untouched.

``event_id`` is the sequence number of the action that created a task (the
id a ``TaskCompleted.task_scheduled_id`` refers back to); events that are not
actions carry ``-1``, as in the protobuf.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

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
    "SubOrchestrationInstanceCompleted",
    "SubOrchestrationInstanceCreated",
    "SubOrchestrationInstanceFailed",
    "TaskCompleted",
    "TaskFailed",
    "TaskScheduled",
    "TimerCreated",
    "TimerFired",
    "TimerPurpose",
    "TraceContext",
]

TimerPurpose = Literal[
    "timer", "retry", "event-timeout", "activity-timeout", "http-poll", "http-timeout"
]
"""Why a durable timer exists: the code's own, or one the runtime set for a call."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FailureDetails(_Model):
    """What went wrong, as text: the exception itself lived in another process."""

    error_type: str
    message: str
    stack_trace: str | None = None
    non_retriable: bool = False

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


class TraceContext(_Model):
    """A W3C trace context (``traceparent``, ``tracestate``): where a span's parent is."""

    traceparent: str
    tracestate: str | None = None


class ParentInstance(_Model):
    """Who started a sub-orchestration, so its result can be sent back."""

    instance_id: str
    execution_id: str
    name: str
    task_scheduled_id: int


class _Event(_Model):
    event_id: int = -1
    timestamp: datetime


class ExecutionStarted(_Event):
    kind: Literal["ExecutionStarted"] = "ExecutionStarted"
    name: str
    instance_id: str
    execution_id: str
    input: str | None = None
    parent: ParentInstance | None = None
    scheduled_start: datetime | None = None
    version: str | None = None
    tags: dict[str, str] | None = None
    trace_context: TraceContext | None = None
    """The span that started the execution (a request, a parent orchestration's)."""


class ExecutionCompleted(_Event):
    kind: Literal["ExecutionCompleted"] = "ExecutionCompleted"
    status: Literal["COMPLETED", "FAILED", "TERMINATED", "CONTINUED_AS_NEW"]
    result: str | None = None
    failure: FailureDetails | None = None


class ExecutionTerminated(_Event):
    kind: Literal["ExecutionTerminated"] = "ExecutionTerminated"
    input: str | None = None
    recurse: bool = True


class ExecutionSuspended(_Event):
    kind: Literal["ExecutionSuspended"] = "ExecutionSuspended"
    input: str | None = None


class ExecutionResumed(_Event):
    kind: Literal["ExecutionResumed"] = "ExecutionResumed"
    input: str | None = None


class ContinueAsNew(_Event):
    kind: Literal["ContinueAsNew"] = "ContinueAsNew"
    input: str | None = None


class ExecutionRewound(_Event):
    """A failed execution is rewound: its failed results are dropped and it runs on.

    ``client.rewind`` sends it; the worker (``durable_fx.worker._rewind``) or,
    through the gRPC sidecar, the Durable Task SDK rewrites the history.
    ``parent_execution_id`` is the rewound parent's execution, which a
    rewound sub-orchestration reports back to.
    """

    kind: Literal["ExecutionRewound"] = "ExecutionRewound"
    reason: str | None = None
    parent_execution_id: str | None = None
    previous_execution_id: str | None = None
    """The execution this rewind replaced (a rewound instance runs under a new
    one), set in history: children and entities still answer it there."""


class OrchestratorStarted(_Event):
    """Opens every episode; its timestamp is the episode's ``current_utc_datetime``."""

    kind: Literal["OrchestratorStarted"] = "OrchestratorStarted"


class OrchestratorCompleted(_Event):
    kind: Literal["OrchestratorCompleted"] = "OrchestratorCompleted"


class TaskScheduled(_Event):
    kind: Literal["TaskScheduled"] = "TaskScheduled"
    name: str
    input: str | None = None
    attempt: int = 1
    heartbeat_timeout: float | None = None
    """Seconds the attempt may go without a heartbeat before it times out."""
    heartbeat_details: str | None = None
    """The last heartbeat details of the attempts before (JSON), for this one to read."""
    trace_context: TraceContext | None = None
    """The span the attempt's span belongs under, when the code chose one (an SDK's)."""


class TaskCompleted(_Event):
    kind: Literal["TaskCompleted"] = "TaskCompleted"
    task_scheduled_id: int
    result: str | None = None


class TaskFailed(_Event):
    kind: Literal["TaskFailed"] = "TaskFailed"
    task_scheduled_id: int
    failure: FailureDetails
    heartbeat_details: str | None = None
    """The failed attempt's last heartbeat details (JSON): the retry receives them."""


class SubOrchestrationInstanceCreated(_Event):
    kind: Literal["SubOrchestrationInstanceCreated"] = "SubOrchestrationInstanceCreated"
    name: str
    instance_id: str
    input: str | None = None


class SubOrchestrationInstanceCompleted(_Event):
    kind: Literal["SubOrchestrationInstanceCompleted"] = "SubOrchestrationInstanceCompleted"
    task_scheduled_id: int
    result: str | None = None


class SubOrchestrationInstanceFailed(_Event):
    kind: Literal["SubOrchestrationInstanceFailed"] = "SubOrchestrationInstanceFailed"
    task_scheduled_id: int
    failure: FailureDetails


class TimerCreated(_Event):
    kind: Literal["TimerCreated"] = "TimerCreated"
    fire_at: datetime
    purpose: TimerPurpose = "timer"


class TimerFired(_Event):
    kind: Literal["TimerFired"] = "TimerFired"
    timer_id: int
    fire_at: datetime


class EventSent(_Event):
    kind: Literal["EventSent"] = "EventSent"
    instance_id: str
    name: str
    input: str | None = None


class PatchApplied(_Event):
    """The code took the new path of patch ``name`` here (``ctx.is_patched``)."""

    kind: Literal["PatchApplied"] = "PatchApplied"
    name: str


class EventRaised(_Event):
    kind: Literal["EventRaised"] = "EventRaised"
    name: str
    input: str | None = None
    trace_context: TraceContext | None = None
    """The span that raised it (a webhook's request): the waiting orchestration links to it."""


class EntityOperationSignaled(_Event):
    """A one-way operation for an entity (its inbox message; entities keep no history)."""

    kind: Literal["EntityOperationSignaled"] = "EntityOperationSignaled"
    request_id: str
    operation: str
    input: str | None = None
    scheduled_time: datetime | None = None
    """When it was asked to run (a delayed signal); ``None``: at once."""
    target_instance_id: str


class EntityOperationCalled(_Event):
    """An operation an orchestration awaits: the entity answers its execution.

    In the caller's history it records the call (``event_id`` = its task id).
    """

    kind: Literal["EntityOperationCalled"] = "EntityOperationCalled"
    request_id: str
    operation: str
    input: str | None = None
    scheduled_time: datetime | None = None
    parent_instance_id: str | None = None
    parent_execution_id: str | None = None
    target_instance_id: str


class EntityOperationCompleted(_Event):
    """An entity's answer to a call: the operation's result (JSON)."""

    kind: Literal["EntityOperationCompleted"] = "EntityOperationCompleted"
    request_id: str
    output: str | None = None


class EntityOperationFailed(_Event):
    """An entity's answer to a call whose operation raised (its changes were undone)."""

    kind: Literal["EntityOperationFailed"] = "EntityOperationFailed"
    request_id: str
    failure: FailureDetails


class EntityLockRequested(_Event):
    """An orchestration asks to lock ``lock_set`` (sorted) for a critical section.

    It travels the lock set in order: the entity at ``position`` locks itself
    for the orchestration, then passes it on; the last one grants the lock.
    """

    kind: Literal["EntityLockRequested"] = "EntityLockRequested"
    critical_section_id: str
    lock_set: list[str]
    position: int = 0
    parent_instance_id: str | None = None


class EntityLockGranted(_Event):
    """Every entity of the critical section is locked for the orchestration."""

    kind: Literal["EntityLockGranted"] = "EntityLockGranted"
    critical_section_id: str


class EntityUnlockSent(_Event):
    """The orchestration releases one entity of its critical section."""

    kind: Literal["EntityUnlockSent"] = "EntityUnlockSent"
    critical_section_id: str
    parent_instance_id: str | None = None
    target_instance_id: str | None = None


HistoryEvent = Annotated[
    ExecutionStarted
    | ExecutionCompleted
    | ExecutionTerminated
    | ExecutionSuspended
    | ExecutionResumed
    | ContinueAsNew
    | ExecutionRewound
    | OrchestratorStarted
    | OrchestratorCompleted
    | TaskScheduled
    | TaskCompleted
    | TaskFailed
    | SubOrchestrationInstanceCreated
    | SubOrchestrationInstanceCompleted
    | SubOrchestrationInstanceFailed
    | TimerCreated
    | TimerFired
    | EventSent
    | PatchApplied
    | EventRaised
    | EntityOperationSignaled
    | EntityOperationCalled
    | EntityOperationCompleted
    | EntityOperationFailed
    | EntityLockRequested
    | EntityLockGranted
    | EntityUnlockSent,
    Field(discriminator="kind"),
]
"""Any history event; ``kind`` tells which."""

HISTORY_EVENT: TypeAdapter[HistoryEvent] = TypeAdapter(HistoryEvent)
"""Validates one event from JSON (``HISTORY_EVENT.validate_json(text)``)."""
