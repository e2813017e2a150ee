"""The records that cross the store boundary.

Payloads stay JSON text here; decoding into user types happens above the store.
Frozen dataclasses rather than pydantic models: these are built and read on
every episode, never parsed from untrusted input, and stores serialize them
field by field.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Self, TypeVar

from .._entity import EntityId
from .._errors import InvalidOperationError
from .._history import (
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    EntityUnlockSent,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TimerFired,
    TraceContext,
)
from .._state import OrchestrationStatus

__all__ = [
    "ENTITY_EXECUTION_ID",
    "ActivityInvocation",
    "ActivityResult",
    "ActivityWorkItem",
    "EpisodeCommit",
    "InboxMessage",
    "InstanceQuery",
    "InstanceRecord",
    "LockBatch",
    "OrchestrationMessage",
    "OrchestrationWorkItem",
    "Page",
    "PoisonedMessage",
    "accepts_rewind",
    "creation_start",
    "dedupe_key",
    "entity_started",
    "finished_refusal",
    "new_instance_record",
    "started_event",
    "timer_key",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance row. ``version`` is the store's concurrency token (row version or ETag)."""

    instance_id: str
    name: str
    execution_id: str
    status: OrchestrationStatus
    created_at: datetime
    updated_at: datetime
    input: str | None = None
    output: str | None = None
    custom_status: str | None = None
    failure: FailureDetails | None = None
    parent_instance_id: str | None = None
    version: str = ""
    orchestration_version: str | None = None
    """The version of the orchestration's code it started on (``start(version=)``)."""


@dataclass(frozen=True, slots=True)
class OrchestrationMessage:
    """An event on its way to an instance's inbox.

    ``execution_id`` pins the message to one execution (activity results,
    timers); ``None`` means whichever execution is current (raised events,
    terminate, suspend). ``visible_at`` delays delivery (durable timers,
    scheduled starts). A message whose event is ``ExecutionStarted`` creates
    the instance row if it does not exist yet; any other message to a missing
    instance is dropped.
    """

    instance_id: str
    event: HistoryEvent
    execution_id: str | None = None
    visible_at: datetime | None = None
    key: str = ""
    """Dedupe key: a store keeps at most one pending message per (instance, key)."""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", dedupe_key(self.event, self.execution_id))


def dedupe_key(event: HistoryEvent, execution_id: str | None) -> str:
    """Stable identity of a message: redelivering the same result yields the same key.

    Raised events have no natural identity (two equal payloads are two events),
    so they get a fresh one unless the sender supplies its own ``key``.
    """
    match event:
        case TaskCompleted() | TaskFailed():
            return f"task:{execution_id}:{event.task_scheduled_id}"
        case SubOrchestrationInstanceCompleted() | SubOrchestrationInstanceFailed():
            return f"suborch:{execution_id}:{event.task_scheduled_id}"
        case TimerFired():
            return timer_key(execution_id, event.timer_id)
        case ExecutionStarted():
            return f"start:{event.execution_id}"
        case EntityOperationSignaled() | EntityOperationCalled():
            return f"entity-op:{event.request_id}"
        case EntityOperationCompleted() | EntityOperationFailed():
            return f"entity-reply:{execution_id}:{event.request_id}"
        case EntityLockRequested():
            return f"entity-lock:{event.critical_section_id}:{event.position}"
        case EntityLockGranted():
            return f"entity-granted:{execution_id}:{event.critical_section_id}"
        case EntityUnlockSent():
            return f"entity-unlock:{event.critical_section_id}:{event.target_instance_id}"
        case _:
            return f"{event.kind}:{uuid.uuid4().hex}"


def timer_key(execution_id: str | None, timer_id: int) -> str:
    """The dedupe key of timer ``timer_id``'s message (to cancel it by)."""
    return f"timer:{execution_id}:{timer_id}"


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A message a worker holds while it runs an episode."""

    message_id: str
    event: HistoryEvent
    execution_id: str | None
    dequeue_count: int = 1


@dataclass(frozen=True, slots=True)
class OrchestrationWorkItem:
    """An instance locked for one episode, with the messages that woke it."""

    instance: InstanceRecord
    messages: Sequence[InboxMessage]
    lock_token: str


@dataclass(frozen=True, slots=True)
class ActivityInvocation:
    """A request to run one activity for one task of one execution."""

    instance_id: str
    execution_id: str
    task_id: int
    name: str
    input: str | None = None
    attempt: int = 1
    heartbeat_timeout: float | None = None
    """Seconds the run may go without a heartbeat before the worker times it out."""
    heartbeat_details: str | None = None
    """The latest heartbeat details (JSON): of earlier attempts, or of this one's
    earlier deliveries once a worker saved them (``renew_activity_lease``)."""
    trace_context: TraceContext | None = None
    """The span the activity's span belongs under (its orchestration's execution)."""

    def to_json(self) -> str:
        """The invocation as one JSON object (a poisoned work item's body)."""
        fields = dataclasses.asdict(self)
        fields["trace_context"] = (
            None if self.trace_context is None else self.trace_context.model_dump()
        )
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> ActivityInvocation:
        """The invocation ``to_json`` wrote; ``ValueError``/``TypeError`` if it is not one."""
        fields = json.loads(text)
        traced = fields.get("trace_context")
        fields["trace_context"] = None if traced is None else TraceContext.model_validate(traced)
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class ActivityWorkItem:
    """An activity invocation a worker holds under a lease."""

    invocation: ActivityInvocation
    lock_token: str
    dequeue_count: int = 1


@dataclass(frozen=True, slots=True)
class ActivityResult:
    """The outcome of one activity run, delivered back to its instance."""

    item: ActivityWorkItem
    message: OrchestrationMessage


@dataclass(frozen=True, slots=True)
class EpisodeCommit:
    """Everything one episode produced; a store persists all of it or none of it.

    ``instance`` holds the new row values (its ``version`` is ignored: the
    store checks the version it handed out with the work item). With
    ``reset_history`` the new events replace the stored history instead of
    extending it (a new execution: continue-as-new or a restart).
    ``cancelled`` names (by key) pending messages of the instance to delete
    with the commit: timers that can no longer matter, which must not wake it.
    """

    instance: InstanceRecord
    new_history: Sequence[HistoryEvent]
    consumed: Sequence[str]
    activities: Sequence[ActivityInvocation] = ()
    messages: Sequence[OrchestrationMessage] = ()
    reset_history: bool = False
    cancelled: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class LockBatch(Generic[T]):
    """Work a lock call returned, and when the next not-yet-visible work falls due."""

    items: list[T]
    next_due: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueueBacklog:
    """Work waiting in one of a store's queues (``Store.backlog``).

    ``due``: messages that could be taken now (a timer or a retry not yet due
    is not counted, nor is one held under a lease), or the queue service's
    approximate count where that is all it tells (Azure Storage queues).
    ``oldest_age``: how long the oldest of them has waited since it could
    have been taken; ``None`` when none is waiting.
    """

    queue: str
    due: int
    oldest_age: timedelta | None

    @classmethod
    def at(cls, queue: str, due: int, oldest_due_at: datetime | None, now: datetime) -> Self:
        """The backlog of ``due`` messages, the oldest due since ``oldest_due_at``."""
        age = None if oldest_due_at is None or not due else max(timedelta(0), now - oldest_due_at)
        return cls(queue, due, age)


@dataclass(frozen=True, slots=True)
class InstanceQuery:
    """A filter over instances; empty fields match everything."""

    statuses: frozenset[OrchestrationStatus] = frozenset()
    name: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    instance_id_prefix: str | None = None
    entities: bool = False
    """False: orchestrations only; True: entities only (``@name@key`` instances)."""
    page_size: int = 100
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; pass ``continuation`` back for the next one (``None``: no more)."""

    items: list[T]
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class PoisonedMessage:
    """A message taken out of circulation, and why.

    ``poison_id`` is the store's own key for it: stable while the message
    stays poisoned, and what ``requeue_poisoned`` and ``delete_poisoned``
    take. ``queue`` is ``"orchestrations"`` (an instance's inbox message or a
    control message) or ``"activities"`` (an activity work item).
    """

    poison_id: str
    queue: str
    instance_id: str | None
    body: str
    reason: str
    poisoned_at: datetime
    dequeue_count: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def started_event(message: OrchestrationMessage) -> ExecutionStarted:
    """The ``ExecutionStarted`` event a message starts an instance with, checked."""
    event = message.event
    if not isinstance(event, ExecutionStarted):
        raise ValueError(f"an instance starts from an ExecutionStarted event, not {event.kind}")
    if event.instance_id != message.instance_id:
        raise ValueError(
            f"ExecutionStarted names instance {event.instance_id!r} "
            f"but the message is addressed to {message.instance_id!r}"
        )
    return event


ENTITY_EXECUTION_ID = "entity"
"""The execution id of every entity instance: an entity has one life, no executions."""


def entity_started(instance_id: str, timestamp: datetime) -> ExecutionStarted:
    """The start an entity instance (``@name@key``) is created with on its first request."""
    entity = EntityId.parse(instance_id)
    return ExecutionStarted(
        timestamp=timestamp,
        name=entity.name,
        instance_id=instance_id,
        execution_id=ENTITY_EXECUTION_ID,
    )


def creation_start(message: OrchestrationMessage) -> ExecutionStarted | None:
    """The start ``message`` creates its target with if missing; ``None``: it needs one.

    A start creates its instance; so does an operation for an entity, which
    exists from its first request on (``@name@key`` ids only).
    """
    if isinstance(message.event, ExecutionStarted):
        return started_event(message)
    if isinstance(message.event, EntityLockRequested):
        return entity_started(message.instance_id, message.event.timestamp)
    if isinstance(message.event, EntityOperationSignaled | EntityOperationCalled):
        if message.event.target_instance_id != message.instance_id:
            raise ValueError(
                f"an operation for entity {message.event.target_instance_id!r} "
                f"is addressed to {message.instance_id!r}"
            )
        return entity_started(message.instance_id, message.event.timestamp)
    return None


def finished_refusal(
    instance_id: str, kind: str, status: OrchestrationStatus
) -> InvalidOperationError | None:
    """The error ``Store.enqueue`` refuses a message with, else ``None``.

    An ``EventRaised`` is refused by a finished instance, an
    ``ExecutionRewound`` by any but a FAILED one (which the store then sets
    RUNNING in the same step); other kinds are the caller's to judge.
    """
    if kind == "ExecutionRewound" and status is not OrchestrationStatus.FAILED:
        return InvalidOperationError(
            f"instance {instance_id!r} is {status.value}; only a FAILED instance can be rewound"
        )
    if kind != "EventRaised" or not status.is_terminal:
        return None
    return InvalidOperationError(
        f"cannot deliver {kind} to instance {instance_id!r}: it is {status.value}"
    )


def accepts_rewind(kind: str) -> bool:
    """True if ``Store.enqueue`` of this kind sets its (FAILED) instance RUNNING."""
    return kind == "ExecutionRewound"


def new_instance_record(instance_id: str, started: ExecutionStarted) -> InstanceRecord:
    """The PENDING row of an instance that ``started`` creates (version ``"1"``)."""
    return InstanceRecord(
        instance_id=instance_id,
        name=started.name,
        execution_id=started.execution_id,
        status=OrchestrationStatus.PENDING,
        created_at=started.timestamp,
        updated_at=started.timestamp,
        input=started.input,
        parent_instance_id=started.parent.instance_id if started.parent else None,
        orchestration_version=started.version,
        version="1",
    )
