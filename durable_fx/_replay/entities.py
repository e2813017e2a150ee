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
from .._history import FailureDetails
from .._registry import name_of
from .._serialization import encode
from .executor import failure_from_exception

__all__ = ["BatchOutcome", "EntityOperation", "OperationResult", "run_entity_batch"]


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
            results.append(_result(operation, failure=failure))
            continue
        state = ctx.state_json
        signals += ctx.signals
        starts += ctx.starts
        results.append(_result(operation, output=output))
    return BatchOutcome(state, tuple(results), tuple(signals), tuple(starts))


def _result(
    operation: EntityOperation, *, output: str | None = None, failure: FailureDetails | None = None
) -> OperationResult:
    return OperationResult(
        operation.request_id, operation.caller, output, failure, operation.caller_execution_id
    )
