"""Actions: what an orchestrator asks the runtime to do, one per episode step.

They mirror ``OrchestratorAction`` of the Durable Task protobuf. Each carries
the sequence ``id`` that the matching history event (``TaskScheduled``,
``TimerCreated``, ...) records as its ``event_id``, which is how replay pairs
code with history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from .._history import FailureDetails, HistoryEvent, TimerPurpose, TraceContext

__all__ = [
    "Action",
    "CallEntity",
    "CompleteOrchestration",
    "CreateSubOrchestration",
    "CreateTimer",
    "LockEntities",
    "RecordPatch",
    "ScheduleTask",
    "SendEvent",
    "SignalEntity",
    "UnlockEntity",
]


@dataclass(frozen=True, slots=True)
class ScheduleTask:
    id: int
    name: str
    input: str | None
    attempt: int = 1
    heartbeat_timeout: float | None = None
    heartbeat_details: str | None = None
    trace_context: TraceContext | None = None
    """The span the activity's span goes under (an SDK's; else the execution's)."""
    recorded_input: str | None = None
    """What history records in place of ``input`` when that holds secrets (``call_http``'s
    Authorization); ``None``: history records ``input`` itself. Only the work item carries
    ``input`` then."""

    def describe(self) -> str:
        return f"call_activity({self.name!r})"


@dataclass(frozen=True, slots=True)
class CreateTimer:
    id: int
    fire_at: datetime
    purpose: TimerPurpose = "timer"

    def describe(self) -> str:
        return f"create_timer({self.fire_at.isoformat()})"


@dataclass(frozen=True, slots=True)
class CreateSubOrchestration:
    id: int
    name: str
    instance_id: str
    input: str | None
    trace_context: TraceContext | None = None
    """The span the child's execution goes under (an SDK's; else the parent's execution)."""

    def describe(self) -> str:
        return f"call_sub_orchestrator({self.name!r}, instance_id={self.instance_id!r})"


@dataclass(frozen=True, slots=True)
class SendEvent:
    id: int
    instance_id: str
    name: str
    input: str | None

    def describe(self) -> str:
        return f"send_event({self.instance_id!r}, {self.name!r})"


@dataclass(frozen=True, slots=True)
class CallEntity:
    """An operation on an entity whose result the orchestration awaits."""

    id: int
    entity_instance_id: str
    operation: str
    input: str | None
    request_id: str

    def describe(self) -> str:
        return f"call_entity({self.entity_instance_id!r}, {self.operation!r})"


@dataclass(frozen=True, slots=True)
class SignalEntity:
    """A one-way operation on an entity, perhaps for later (``at``)."""

    id: int
    entity_instance_id: str
    operation: str
    input: str | None
    request_id: str
    at: datetime | None = None

    def describe(self) -> str:
        return f"signal_entity({self.entity_instance_id!r}, {self.operation!r})"


@dataclass(frozen=True, slots=True)
class LockEntities:
    """Lock the entities of ``lock_set`` (sorted ids) for a critical section."""

    id: int
    lock_set: tuple[str, ...]
    critical_section_id: str

    def describe(self) -> str:
        return f"lock_entities({', '.join(self.lock_set)})"


@dataclass(frozen=True, slots=True)
class UnlockEntity:
    """Release one entity of the critical section ``critical_section_id``."""

    id: int
    entity_instance_id: str
    critical_section_id: str

    def describe(self) -> str:
        return f"unlock({self.entity_instance_id!r})"


@dataclass(frozen=True, slots=True)
class RecordPatch:
    """A marker: the code takes patch ``name``'s new path (nothing is sent)."""

    id: int
    name: str

    def describe(self) -> str:
        return f"is_patched({self.name!r})"


@dataclass(frozen=True, slots=True)
class CompleteOrchestration:
    """The orchestration finished (or continues as new)."""

    status: Literal["COMPLETED", "FAILED", "TERMINATED", "CONTINUED_AS_NEW"]
    result: str | None = None
    failure: FailureDetails | None = None
    carryover_events: list[HistoryEvent] = field(default_factory=list)


Action = (
    ScheduleTask
    | CreateTimer
    | CreateSubOrchestration
    | SendEvent
    | RecordPatch
    | CallEntity
    | SignalEntity
    | LockEntities
    | UnlockEntity
)
"""An action that schedules work and appears in history under its ``id``."""
