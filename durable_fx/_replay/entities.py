"""Running a batch of entity operations: pure, no I/O (docs/design/entities.md).

The operations run one at a time, in order, each against the state the one
before left. An operation that raises is undone (its state change and what it
sent) and answered with its failure; the batch goes on. The worker commits
the outcome (the state, the results for callers, the signals and starts) in
one transaction, so a crash before the commit runs the batch again and one
after it applies nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from .._entity import EntityContext, EntityDefinition, EntityId, EntitySignal, OrchestrationStart
from .._history import (
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationSignaled,
    EntityUnlockSent,
    FailureDetails,
    HistoryEvent,
)
from .._registry import name_of
from .._serialization import encode
from .executor import failure_from_exception

__all__ = [
    "ENTITY_REQUESTS",
    "BatchOutcome",
    "EntityOperation",
    "OperationResult",
    "Schedule",
    "operation_result",
    "run_entity_batch",
    "schedule_batch",
]


@dataclass(frozen=True, slots=True)
class EntityOperation:
    """One operation to run: its name, its input (JSON) and who waits for its result."""

    operation: str
    input: str | None = None
    request_id: str = ""
    caller: str | None = None
    """The instance to answer (a call); ``None`` for a signal, which nobody awaits."""
    caller_execution_id: str | None = None
    """The caller's execution, which the answer is for."""


@dataclass(frozen=True, slots=True)
class OperationResult:
    """What one operation returned (JSON) or how it failed."""

    request_id: str
    caller: str | None
    output: str | None = None
    failure: FailureDetails | None = None
    caller_execution_id: str | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The state after the batch and what its operations produced, in order."""

    state: str | None
    """The state as JSON; ``None``: the entity has none (never set, or deleted)."""
    results: tuple[OperationResult, ...]
    signals: tuple[EntitySignal, ...]
    starts: tuple[OrchestrationStart, ...]


def run_entity_batch(
    definition: EntityDefinition,
    entity_id: EntityId,
    state: str | None,
    operations: Sequence[EntityOperation],
    *,
    now: datetime,
    new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> BatchOutcome:
    """Run ``operations`` on the entity whose state is ``state``; the outcome to commit."""
    results: list[OperationResult] = []
    signals: list[EntitySignal] = []
    starts: list[OrchestrationStart] = []
    for operation in operations:
        ctx = EntityContext(
            entity_id, operation.operation, state, now, name_of=name_of, new_id=new_id
        )
        try:
            output = encode(definition.run(ctx, operation.input))
        except Exception as error:  # the operation's own failure: undone, answered, batch goes on
            failure = failure_from_exception(error)
            results.append(operation_result(operation, failure=failure))
            continue
        state = ctx.state_json
        signals += ctx.signals
        starts += ctx.starts
        results.append(operation_result(operation, output=output))
    return BatchOutcome(state, tuple(results), tuple(signals), tuple(starts))


@dataclass(frozen=True, slots=True)
class Schedule:
    """What a batch runs now, and the lock and queue it leaves (``schedule_batch``)."""

    runnable: tuple[EntityOperation, ...]
    locked_by: str | None
    critical_section: str | None
    queue: tuple[HistoryEvent, ...]
    """Requests that wait for the lock's release, oldest first."""
    lock_messages: tuple[tuple[str, HistoryEvent], ...]
    """Lock requests passed on to the next entity, or grants, with their target."""


ENTITY_REQUESTS = (
    EntityOperationSignaled,
    EntityOperationCalled,
    EntityLockRequested,
    EntityUnlockSent,
)
"""The inbox messages an entity acts on (``schedule_batch`` orders them)."""


def schedule_batch(
    locked_by: str | None,
    critical_section: str | None,
    queue: Sequence[HistoryEvent],
    incoming: Sequence[HistoryEvent],
    *,
    now: datetime,
) -> Schedule:
    """Order a batch's requests around the lock: which run now, which wait.

    Requests run in arrival order (those queued before first). While an
    orchestration's critical section holds the entity, only its own calls run
    and everything else waits; its unlock releases the entity and what waited
    goes on, oldest first, until another lock request takes it. A lock request
    locks the entity and is passed on to the next entity of its set; the last
    one grants the lock to the orchestration.
    """
    todo: list[HistoryEvent] = [*queue, *incoming]
    waiting: list[HistoryEvent] = []
    runnable: list[EntityOperation] = []
    sends: list[tuple[str, HistoryEvent]] = []
    i = 0
    while i < len(todo):
        event = todo[i]
        i += 1
        if isinstance(event, EntityUnlockSent):
            if critical_section is not None and event.critical_section_id == critical_section:
                locked_by = critical_section = None
                todo, waiting, i = [*waiting, *todo[i:]], [], 0  # what waited goes first
            else:  # its section never got this entity: forget its request
                todo[i:] = [e for e in todo[i:] if not _requests(e, event.critical_section_id)]
                waiting = [e for e in waiting if not _requests(e, event.critical_section_id)]
            continue
        if critical_section is not None and not _from_holder(event, locked_by):
            waiting.append(event)
        elif isinstance(event, EntityLockRequested):
            locked_by, critical_section = event.parent_instance_id, event.critical_section_id
            sends.append(_pass_on(event, now))
        elif isinstance(event, EntityOperationSignaled | EntityOperationCalled):
            runnable.append(_operation_of(event))
    return Schedule(tuple(runnable), locked_by, critical_section, tuple(waiting), tuple(sends))


def _requests(event: HistoryEvent, critical_section: str) -> bool:
    return isinstance(event, EntityLockRequested) and event.critical_section_id == critical_section


def _from_holder(event: HistoryEvent, holder: str | None) -> bool:
    """A call from the orchestration that holds the lock runs inside its critical section."""
    return isinstance(event, EntityOperationCalled) and event.parent_instance_id == holder


def _pass_on(request: EntityLockRequested, now: datetime) -> tuple[str, HistoryEvent]:
    """The lock request for the next entity of the set, or the grant once all are locked."""
    following = request.position + 1
    if following < len(request.lock_set):
        forward = request.model_copy(
            update={"position": following, "timestamp": now, "event_id": -1}
        )
        return request.lock_set[following], forward
    granted = EntityLockGranted(timestamp=now, critical_section_id=request.critical_section_id)
    return request.parent_instance_id or "", granted


def _operation_of(event: EntityOperationSignaled | EntityOperationCalled) -> EntityOperation:
    if isinstance(event, EntityOperationSignaled):
        return EntityOperation(event.operation, event.input, event.request_id)
    return EntityOperation(
        event.operation,
        event.input,
        event.request_id,
        caller=event.parent_instance_id,
        caller_execution_id=event.parent_execution_id,
    )


def operation_result(
    operation: EntityOperation, *, output: str | None = None, failure: FailureDetails | None = None
) -> OperationResult:
    """The result of ``operation``, addressed to its caller (if it has one)."""
    return OperationResult(
        operation.request_id, operation.caller, output, failure, operation.caller_execution_id
    )
