"""An entity's batch from locked work item to commit, shared by the worker and the sidecar.

``schedule`` orders the requests in a locked entity's messages around its
lock (``schedule_batch``); whoever runs the operations (``run_entity_batch``
in this process, an SDK worker behind the sidecar) returns a
``BatchOutcome``; ``entity_commit`` turns it into the one ``EpisodeCommit``
that keeps the new state, answers the callers, sends what the operations
sent and passes lock requests on. Both paths write the same rows and messages.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from .._entity import EntityId, EntityRowState
from .._history import (
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    ExecutionStarted,
    HistoryEvent,
)
from .._replay.entities import (
    ENTITY_REQUESTS,
    BatchOutcome,
    EntityOperation,
    OperationResult,
    Schedule,
    schedule_batch,
)
from .._state import OrchestrationStatus
from ..storage._records import (
    EpisodeCommit,
    InboxMessage,
    OrchestrationMessage,
    OrchestrationWorkItem,
)

__all__ = ["EntityBatch", "entity_commit", "schedule"]

log = logging.getLogger("durable_fx.worker")


@dataclass(frozen=True, slots=True)
class EntityBatch:
    """A locked entity's messages, ordered: what runs now and what the lock leaves."""

    item: OrchestrationWorkItem
    row: EntityRowState
    plan: Schedule
    now: datetime

    @property
    def entity(self) -> EntityId:
        return EntityId.parse(self.item.instance.instance_id)

    @property
    def operations(self) -> tuple[EntityOperation, ...]:
        """The operations to run, in order."""
        return self.plan.runnable

    def unchanged(self) -> BatchOutcome:
        """The outcome of running nothing: the state as it was."""
        return BatchOutcome(self.row.state, (), (), ())


def schedule(item: OrchestrationWorkItem, now: datetime) -> EntityBatch:
    """Order the requests in ``item``'s messages around the entity's lock."""
    row = EntityRowState.of_row(item.instance.input)
    requests = list(_requests(item.messages))
    plan = schedule_batch(row.locked_by, row.critical_section, row.queue, requests, now=now)
    return EntityBatch(item, row, plan, now)


def entity_commit(batch: EntityBatch, outcome: BatchOutcome) -> EpisodeCommit:
    """The commit that keeps ``outcome`` and consumes every message of the batch.

    Every message handed out is consumed: one left behind would count a
    delivery at each lock and end up poisoned. The store bounds a batch (on
    Azure 90 messages, whose deletions fit one transaction).
    """
    now = batch.now
    plan = batch.plan
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
        batch.item.instance,
        status=OrchestrationStatus.RUNNING,
        input=kept.model_dump_json(),
        updated_at=now,
    )
    return EpisodeCommit(
        instance=record,
        new_history=[],
        consumed=[m.message_id for m in batch.item.messages],
        messages=messages,
        reset_history=True,  # an entity is never replayed: it keeps no history
    )


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
