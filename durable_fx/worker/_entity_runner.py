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
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from .._clock import Clock
from .._entity import EntityId
from .._errors import ConflictError, UnknownNameError
from .._history import FailureDetails
from .._log_context import running
from .._registry import Registry
from .._replay.entities import BatchOutcome, EntityOperation, operation_result, run_entity_batch
from ..storage._protocol import Store
from ..storage._records import EpisodeCommit, OrchestrationWorkItem
from ._entity_batch import entity_commit, schedule

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
        batch = schedule(item, now)
        outcome = self._outcome(item.instance.instance_id, batch.row.state, batch.operations, now)
        return entity_commit(batch, outcome)

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
