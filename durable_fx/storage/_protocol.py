"""The Store protocol: the one boundary between the runtime and persistence.

A store holds four things per task hub: instance rows, each instance's history,
each instance's inbox (messages not yet applied), and activity work items. The
runtime never touches them directly; it locks work, runs it, and hands back a
commit. Every implementation keeps the storage contract
(docs/design/storage-contract.md):

1. ``commit_episode`` is atomic: history, consumed inbox messages, the instance
   row, new activity work items and outgoing messages persist together or not
   at all (readers never see half an episode).
2. ``commit_episode`` is conditional on the version handed out by
   ``lock_orchestrations``; a stale commit raises ``ConflictError`` and
   changes nothing.
3. At most one pending inbox message exists per ``(instance_id, key)``; keys
   of messages ``enqueue`` accepted are remembered for the life of the
   instance, so a client's event id is applied once however often it is sent.
4. ``complete_activities`` records a result and removes its work item
   atomically (or, where it cannot, a redelivered item whose result is
   recorded is not handed out again).
5. Locks are leases: work held by a crashed process becomes visible again once
   its lease expires. A lock stays its holder's until another lock call takes
   the work over, so a slow worker whose lease merely expired may still
   commit or complete it. A holder that needs longer renews its lease
   (``renew_orchestration_lease``, ``renew_activity_lease``); a renewal never
   wins back work that was taken over.
6. Messages may be delayed (``visible_at``) for any duration.
7. A message abandoned ``max_dequeue_count`` times, or one that cannot be
   decoded, moves to the poison list with its reason; an operator can list,
   requeue or delete it there by its ``poison_id``.

The conformance suite in ``durable_fx.testing`` proves these for any store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol, runtime_checkable

from .._history import HistoryEvent
from .._state import OrchestrationStatus
from ._records import (
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Page,
    PoisonedMessage,
    QueueBacklog,
)

__all__ = ["Accept", "CountsInstances", "ReportsBacklog", "Store"]


Accept = Callable[[str, str | None], bool]
"""Which instances a caller runs, by orchestration name and version (``lock_orchestrations``)."""


@runtime_checkable
class Store(Protocol):
    """Persistence for one task hub. All methods are safe to call concurrently."""

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self,
        message: OrchestrationMessage,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
    ) -> None:
        """Create an instance from an ``ExecutionStarted`` message.

        Writes a PENDING instance row and puts the message in its inbox, in one
        step. An existing instance whose status is in ``replaceable`` (only
        COMPLETED, FAILED or TERMINATED may be named) is replaced: its history,
        pending messages, work items and remembered event keys are dropped.
        Any other existing instance raises ``InstanceExistsError`` (with its
        status) and is left as it was. The status check and the write are one
        atomic step: of two concurrent creates of one id, one fails.
        """
        ...

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Put a message in an existing instance's inbox; False if its key was used already.

        The key of every message enqueued here is remembered for the life of
        the instance (until it is purged or replaced), in the same step as the
        message: a message whose ``key`` was enqueued before for that instance,
        pending or consumed, is ignored and the call returns False, even if the
        instance has finished since. Otherwise an ``EventRaised`` to an instance
        that is COMPLETED, FAILED or TERMINATED raises ``InvalidOperationError``,
        so does an ``ExecutionRewound`` to an instance that is not FAILED (a
        FAILED one is set RUNNING in the same step: of two rewinds at once, one
        is accepted); other kinds are the caller's to judge. A message to an
        instance that does not exist raises ``InstanceNotFoundError``; neither
        writes anything. The status check is atomic with the write, so an
        event is never accepted by an instance that has already finished.
        """
        ...

    # -- orchestration work -----------------------------------------------------

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` instances that have visible inbox messages.

        With ``accept``, only instances for which ``accept(name,
        orchestration_version)`` is true: the others stay as they are, pending
        for a caller that runs them (a worker of another version).

        Each work item carries the instance row (with its version) and every
        visible message of its inbox, oldest first. Each lock counts as a
        delivery of those messages (``dequeue_count``). ``next_due`` is the
        earliest future ``visible_at`` among inbox messages, if the store
        knows it, so an idle worker can sleep exactly until a timer fires.
        """
        ...

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current execution's history, oldest first (empty if none)."""
        ...

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode atomically, release the lock, and return the new version.

        The instance row takes every field of ``commit.instance`` except
        ``instance_id`` and ``version``.

        The worker keeps the returned version with its cached replay state:
        the next lock handing out the same version proves nobody else
        committed in between, so the cached state is still current.

        Raises ``ConflictError`` if the instance changed since ``item`` was
        locked (another worker committed, or the lease was lost).
        """
        ...

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release a lock without committing; messages reappear after ``retry_after``.

        Messages already delivered ``max_dequeue_count`` times are poisoned
        with ``reason`` instead.
        """
        ...

    async def renew_orchestration_lease(
        self, item: OrchestrationWorkItem, lease: timedelta
    ) -> None:
        """Keep ``item``'s instance locked for ``lease`` from now, for an episode that runs long.

        Renews only while ``item`` still holds the lock (its ``lock_token``),
        expired or not, as long as no other lock call took the instance over.
        A lock that was lost (taken over, released by a commit or an abandon,
        or its instance purged) stays lost: the call does nothing, as
        ``renew_activity_lease`` does, and the episode's commit raises
        ``ConflictError`` as it would have anyway.
        """
        ...

    # -- activity work ----------------------------------------------------------

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` visible activity work items."""
        ...

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each result to its instance's inbox and delete its work item.

        A result whose work item is gone (another worker completed it after
        this lease expired) is dropped; the inbox key makes any duplicate
        harmless.
        """
        ...

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release an activity lease; poison the item after ``max_dequeue_count`` deliveries."""
        ...

    async def renew_activity_lease(
        self, item: ActivityWorkItem, lease: timedelta, *, heartbeat: str | None = None
    ) -> None:
        """Extend the lease of a long-running activity; a no-op if the item was taken over.

        With ``heartbeat`` (the activity's latest heartbeat details, JSON),
        also keep them with the item: a later delivery of it (after this
        lease expires) carries them in ``invocation.heartbeat_details``.
        """
        ...

    # -- reading and housekeeping -----------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        ...

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Instances matching ``query``, newest first, one page at a time.

        ``created_from`` and ``created_to`` are inclusive. Every page but the
        last is full, and the last one has ``continuation=None``.
        """
        ...

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance with its history, inbox and work items; False if absent."""
        ...

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        """``purge_instance``, only while its row is at ``version`` and nothing is pending.

        Nothing pending: no message in its inbox (delayed ones included), no
        work item. The check and the removal are one step, so a message that
        arrives meanwhile keeps the instance. False (nothing changed) if the
        instance is absent, changed, or has something pending.
        """
        ...

    async def poisoned_messages(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first (only ``instance_id``'s if given)."""
        ...

    async def requeue_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Put poisoned messages back into circulation; returns how many went back.

        Each goes back as it was, visible now, with its delivery count reset:
        an orchestration message to its instance's inbox under its original
        dedupe key (so it is applied at most once even if it is pending
        already), an activity work item to the work items. It leaves the poison
        list only once it is back, so a crash in between leaves a duplicate at
        worst, which the dedupe keys absorb. Ids not (or no longer) in the list
        are ignored; so is a message whose instance no longer exists, which
        stays in the list to be deleted.
        """
        ...

    async def delete_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Drop poisoned messages for good; returns how many; unknown ids are ignored."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work may have arrived from this process, or after ``timeout`` s.

        Lets an idle worker sleep long without delaying local work; work from
        other processes is found by the worker's next poll.
        """
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class ReportsBacklog(Protocol):
    """A store that can tell how much work waits in its queues (for metrics)."""

    async def backlog(self) -> list[QueueBacklog]:
        """Each queue's due messages and the age of the oldest; a cheap read."""
        ...


@runtime_checkable
class CountsInstances(Protocol):
    """A store that can count its instances by status without reading every one.

    The Azure store cannot (Table storage has no count: it would read every
    instance row), so callers must not assume it.
    """

    async def count_instances(self) -> dict[OrchestrationStatus, int]:
        """How many orchestrations have each status (entities are not counted).

        Statuses with none may be left out.
        """
        ...
