"""Runs one batch of an entity's operations and commits it (docs/design/entities.md).

An entity is an instance (``@name@key``) whose row holds its state. The worker
locks it as it locks an orchestration, runs every operation waiting in its
inbox in arrival order (``run_entity_batch``: one at a time, a failed one
undone), and commits the new state with the answers to callers and what the
operations sent, in one ``EpisodeCommit``. A crash before the commit runs the
batch again (nothing of it was kept); one after it applies nothing twice (its
messages were consumed in the same transaction).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from .._clock import Clock
from .._entity import EntityId, EntityRowState
from .._errors import ConflictError, UnknownNameError
from .._history import (
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    ExecutionStarted,
    FailureDetails,
    HistoryEvent,
)
from .._log_context import running
from .._registry import Registry
from .._replay.entities import (
    ENTITY_REQUESTS,
    BatchOutcome,
    EntityOperation,
    OperationResult,
    operation_result,
    run_entity_batch,
    schedule_batch,
)
from .._state import OrchestrationStatus
from ..storage._protocol import Store
from ..storage._records import (
    EpisodeCommit,
    InboxMessage,
    OrchestrationMessage,
    OrchestrationWorkItem,
)

__all__ = ["EntityRunner"]

log = logging.getLogger("durable_fx.worker")


class EntityRunner:
    """Runs and commits entity batches for a worker."""

    def __init__(self, registry: Registry, store: Store, clock: Clock) -> None:
        self._registry = registry
        self._store = store
        self._clock = clock

    async def run(self, item: OrchestrationWorkItem) -> None:
        """Run the operations in ``item``'s messages and commit the outcome.

        On a conflict (the lock was taken over, or the row changed under it)
        nothing is kept and the messages come back: the batch runs again.
        """
        instance = item.instance
        with running(instance_id=instance.instance_id, entity=instance.name):
            commit = self._plan(item, self._clock.now())
            try:
                await self._store.commit_episode(item, commit)
            except ConflictError as conflict:
                log.info("batch for %s not committed: %s", instance.instance_id, conflict)
                if conflict.lock_kept:
                    with contextlib.suppress(Exception):
                        await self._store.abandon_orchestration(
                            item, reason=str(conflict), retry_after=timedelta(0)
                        )

    def _plan(self, item: OrchestrationWorkItem, now: datetime) -> EpisodeCommit:
        instance = item.instance
        row = EntityRowState.of_row(instance.input)
        # Every message handed out is consumed: one left behind would count a
        # delivery at each lock and end up poisoned. The store bounds a batch (on
        # Azure 90 messages, whose deletions fit one transaction).
        taken = item.messages
        plan = schedule_batch(
            row.locked_by, row.critical_section, row.queue, list(_requests(taken)), now=now
        )
        outcome = self._outcome(instance.instance_id, row.state, plan.runnable, now)
        messages = [
            *_answers(outcome.results, now),
            *_signals(outcome, now),
            *_starts(outcome, now),
            *(OrchestrationMessage(target, event) for target, event in plan.lock_messages),
        ]
        kept = EntityRowState(
            state=outcome.state,
            locked_by=plan.locked_by,
            critical_section=plan.critical_section,
            queue=list(plan.queue),
        )
        record = dataclasses.replace(
            instance,
            status=OrchestrationStatus.RUNNING,
            input=kept.model_dump_json(),
            updated_at=now,
        )
        return EpisodeCommit(
            instance=record,
            new_history=[],
            consumed=[m.message_id for m in taken],
            messages=messages,
            reset_history=True,  # an entity is never replayed: it keeps no history
        )

    def _outcome(
        self,
        instance_id: str,
        state: str | None,
        operations: Sequence[EntityOperation],
        now: datetime,
    ) -> BatchOutcome:
        entity = EntityId.parse(instance_id)
        definition = self._registry.find_entity(entity.name)
        if definition is None:
            # Kept, not dropped: a worker that has the entity may run later ones.
            error = UnknownNameError("entity", entity.name, self._registry.entity_names)
            failure = FailureDetails(error_type=type(error).__name__, message=str(error))
            if operations:
                log.warning("%d operation(s) for %s failed: %s", len(operations), entity, error)
            failed = tuple(operation_result(op, failure=failure) for op in operations)
            return BatchOutcome(state, failed, (), ())
        return run_entity_batch(definition, entity, state, operations, now=now)


def _requests(messages: Sequence[InboxMessage]) -> Iterator[HistoryEvent]:
    """The requests among an entity's inbox messages, in arrival order."""
    for message in messages:
        event = message.event
        if isinstance(event, ENTITY_REQUESTS):
            yield event
        elif not isinstance(event, ExecutionStarted):  # its creation: nothing to run
            # Not for entities (a raised event, a terminate...): consumed, not run.
            log.warning("an entity ignores a %s message", event.kind)


def _answers(results: Sequence[OperationResult], now: datetime) -> Iterator[OrchestrationMessage]:
    """Each call's result, to the execution that awaits it (signals have nobody to answer)."""
    for result in results:
        if result.caller is None:
            continue
        answer: HistoryEvent
        if result.failure is not None:
            answer = EntityOperationFailed(
                timestamp=now, request_id=result.request_id, failure=result.failure
            )
        else:
            answer = EntityOperationCompleted(
                timestamp=now, request_id=result.request_id, output=result.output
            )
        yield OrchestrationMessage(result.caller, answer, result.caller_execution_id)


def _signals(outcome: BatchOutcome, now: datetime) -> Iterator[OrchestrationMessage]:
    for signal in outcome.signals:
        target = signal.target.instance_id
        event = EntityOperationSignaled(
            timestamp=now,
            request_id=signal.request_id,
            operation=signal.operation,
            input=signal.input,
            scheduled_time=signal.at,
            target_instance_id=target,
        )
        yield OrchestrationMessage(target, event, visible_at=signal.at)


def _starts(outcome: BatchOutcome, now: datetime) -> Iterator[OrchestrationMessage]:
    for start in outcome.starts:
        started = ExecutionStarted(
            timestamp=now,
            name=start.name,
            instance_id=start.instance_id,
            execution_id=uuid.uuid4().hex,
            input=start.input,
        )
        yield OrchestrationMessage(start.instance_id, started, started.execution_id)
