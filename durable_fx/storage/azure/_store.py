"""``AzureStore``: the Store protocol on Azure Tables, Queues and Blobs.

All storage I/O runs on one private event loop in a thread of its own, and
nothing runs in the background: without calls the store makes no requests,
as the Functions host needs to scale to zero. Why: docs/design/azure-store.md,
"One loop, no background work".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from ..._clock import Clock, SystemClock
from ..._errors import StoreBusyError
from ..._history import HistoryEvent
from ..._portal import Portal
from ..._state import OrchestrationStatus
from .._delivered import DeliveredMessage
from .._protocol import Accept
from .._records import (
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
from ._activities import Activities
from ._commit import Commits
from ._delivered import Delivered
from ._hub import Hub
from ._orchestrations import Orchestrations
from ._poison import Poison
from ._policies import RequestCounter
from ._queues import Queues
from ._reads import Reads
from ._resources import Resources
from ._sessions import Sessions
from ._settings import AzureSettings
from ._starts import Starts
from ._timers import Timers
from ._transient import is_transient
from ._wakeups import WakeUps

__all__ = ["AzureStore"]

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_DELAY = timedelta(days=6)
DEFAULT_IDLE_POLL = (0.05, 80.0)
"""Idle polls back off to one control poll every 80 s and one work poll every 160 s:
about 70 requests an hour for a worker with nothing to do."""
_CLOSE_GRACE = 5.0
"""Seconds ``close()`` lets calls in flight finish before cancelling them."""


class AzureStore:
    """A task hub in an Azure Storage account (or Azurite).

    Args:
        settings: Account, endpoints, credentials and hub (``settings_from_url``).
        clock: Source of "now" for visibility, leases and poisoning.
        max_dequeue_count: Deliveries after which a message is poisoned.
        max_message_delay: Longest delay given to a queue message; longer
            timers are chained. Tests shrink it so their clock decides.
        idle_poll: Shortest and longest seconds between queue polls while idle.
        policies: Extra per-request pipeline policies (fault injection in tests).
    """

    def __init__(
        self,
        settings: AzureSettings,
        *,
        clock: Clock | None = None,
        max_dequeue_count: int = 5,
        max_message_delay: timedelta = DEFAULT_MAX_MESSAGE_DELAY,
        idle_poll: tuple[float, float] = DEFAULT_IDLE_POLL,
        policies: Sequence[Any] = (),
    ) -> None:
        if max_dequeue_count < 1:
            raise ValueError(f"max_dequeue_count must be at least 1, got {max_dequeue_count}")
        self.settings = settings
        self.requests = RequestCounter()
        """Every request this store sent (each retry counts)."""
        self._closed = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        """Calls running on the store loop (only touched there)."""
        self._portal = Portal("durable_fx-azure")

        def build() -> Hub:
            resources = Resources(settings, list(policies), self.requests)
            queues = Queues(resources, max_message_delay)
            return Hub(
                resources,
                queues,
                clock or SystemClock(),
                max_dequeue_count=max_dequeue_count,
                idle_poll=idle_poll,
            )

        hub = self._hub = self._run_sync(build)
        # Each part is given the parts below it, never one above (see ``__init__``).
        timers = Timers(hub)
        sessions = self._sessions = Sessions(hub, timers)
        activities = self._activities = Activities(hub, sessions)
        starts = Starts(hub, sessions, activities)
        wake_ups = WakeUps(hub, sessions, activities, timers, starts)
        commits = Commits(hub, sessions, activities, starts)
        self._orchestrations = Orchestrations(hub, sessions, timers, starts, wake_ups, commits)
        self._reads = Reads(hub, sessions, activities)
        self._poison = Poison(hub, sessions, activities, starts)
        self._delivered = Delivered(hub, sessions, activities, timers, wake_ups)

    def __repr__(self) -> str:
        return f"AzureStore({self.settings.describe()})"

    def _run_sync(self, build: Callable[[], T]) -> T:
        async def call() -> T:
            return build()

        return self._portal.call(call())

    async def _call(self, make: Callable[[], Awaitable[T]], *, ensure: bool = True) -> T:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

        async def run() -> T:
            if self._closed:  # close() began after the check above
                raise RuntimeError(f"{self!r} is closed")
            task = asyncio.current_task()
            assert task is not None
            self._in_flight.add(task)
            try:
                if ensure:
                    await self._hub.resources.ensure()
                return await make()
            except Exception as error:
                if not is_transient(error):
                    raise
                # Storage kept failing past the retries (throttled, unavailable, a
                # timeout): busy, which HTTP entry points answer with 503 Retry-After.
                detail = f"Azure Storage kept failing: {type(error).__name__}: {error}"
                raise StoreBusyError(detail[:500]) from error
            finally:
                self._in_flight.discard(task)

        future = self._portal.submit(_as_coroutine(run))
        # shield: a cancelled caller must not cut a commit in half on the store loop.
        return await asyncio.shield(asyncio.wrap_future(future))

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self,
        message: OrchestrationMessage,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        create = self._orchestrations.create_instance
        await self._call(lambda: create(message, replaceable=replaceable))

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Add a message to a live instance's inbox; False if its key was used already."""
        return await self._call(lambda: self._orchestrations.enqueue(message))

    # -- orchestration work -----------------------------------------------------

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` instances with visible messages, each with all of them.

        An instance ``accept`` refuses is given up for a worker that runs it:
        its wake-up comes back a moment later, to whichever worker takes it.
        """
        return await self._call(lambda: self._orchestrations.lock(owner, limit, lease, accept))

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current execution's history, oldest first (empty if none)."""
        return await self._call(lambda: self._reads.load_history(instance_id))

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version.

        Raises ``ConflictError`` (changing nothing) when ``item`` is stale.
        """
        return await self._call(lambda: self._orchestrations.commit(item, commit))

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release the lock; retry the messages later, or poison the over-delivered ones."""
        await self._call(lambda: self._orchestrations.abandon(item, reason, retry_after))

    async def renew_orchestration_lease(
        self, item: OrchestrationWorkItem, lease: timedelta
    ) -> None:
        """Extend the lock if ``item`` still holds it; otherwise do nothing."""
        await self._call(lambda: self._orchestrations.renew(item, lease))

    # -- activity work ----------------------------------------------------------

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` visible work items."""
        return await self._call(lambda: self._activities.lock(owner, limit, lease))

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each result whose work item this worker still holds; drop the rest."""
        if results:
            await self._call(lambda: self._activities.complete(results))

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release a work item for a retry after ``retry_after``, or poison it."""
        await self._call(lambda: self._activities.abandon(item, reason, retry_after))

    async def renew_activity_lease(
        self, item: ActivityWorkItem, lease: timedelta, *, heartbeat: str | None = None
    ) -> None:
        """Extend the lease if this worker still holds the item; otherwise do nothing."""
        await self._call(lambda: self._activities.renew(item, lease, heartbeat))

    # -- work a Functions host delivers (DeliveredWork, see _delivered) -----------

    async def accept_wake_up(self, message: DeliveredMessage, *, lease: timedelta) -> str | None:
        """Own the instance a delivered control message names, if it has work now."""
        return await self._call(lambda: self._delivered.accept_wake_up(message, lease))

    async def lock_delivered(
        self, instance_id: str, *, owner: str, lease: timedelta
    ) -> OrchestrationWorkItem | None:
        """The next episode of an instance accepted by ``accept_wake_up``."""
        return await self._call(lambda: self._delivered.lock_delivered(instance_id, owner, lease))

    async def release_delivered(self, instance_id: str) -> None:
        """End an accepted instance's session, leaving a wake-up for what is pending."""
        await self._call(lambda: self._delivered.release_delivered(instance_id))

    async def accept_work_item(
        self, message: DeliveredMessage, *, owner: str, lease: timedelta
    ) -> ActivityWorkItem | None:
        """The activity a delivered work-item message asks for, or ``None`` if it must not run."""
        return await self._call(lambda: self._delivered.accept_work_item(message, owner, lease))

    async def forget_work_item(self, item: ActivityWorkItem) -> None:
        """Drop an accepted work item that failed here (the host redelivers it)."""
        await self._call(lambda: self._delivered.forget_work_item(item))

    def storage_fault(self, error: BaseException) -> bool:
        """Whether ``error`` is storage failing for now (throttled, down, unreachable)."""
        return self._delivered.storage_fault(error)

    async def hand_on(self, message: DeliveredMessage) -> None:
        """Send a delayed copy of a message whose invocation storage failed (see ``_delivered``)."""
        # It creates the hub's resources itself, patiently: storage is failing.
        await self._call(lambda: self._delivered.hand_on(message), ensure=False)

    # -- reading and housekeeping -----------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        return await self._call(lambda: self._reads.get_instance(instance_id))

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Matching instances, newest first, ``query.page_size`` at a time."""
        return await self._call(lambda: self._reads.query_instances(query))

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance with its history, inbox, work items and payload blobs."""
        return await self._call(lambda: self._reads.purge_instance(instance_id))

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        """``purge_instance``, only while the row is at ``version`` and nothing is pending."""
        return await self._call(lambda: self._reads.purge_idle_instance(instance_id, version))

    async def backlog(self) -> list[QueueBacklog]:
        """Each control queue's and the work item queue's length and oldest message's age."""

        async def read() -> list[QueueBacklog]:
            hub = self._hub
            names = hub.resources.names
            now = hub.clock.now()
            queues = (*names.control_queues, names.work_queue)
            return list(await asyncio.gather(*(hub.queues.backlog(q, now) for q in queues)))

        return await self._call(read)

    async def poisoned_messages(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first (only ``instance_id``'s if given)."""
        return await self._call(lambda: self._poison.list(instance_id))

    async def requeue_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Put poisoned messages back as they were, visible now; returns how many."""
        return await self._call(lambda: self._poison.requeue(poison_ids))

    async def delete_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Drop poisoned messages and their queue copies for good; returns how many."""
        return await self._call(lambda: self._poison.delete(poison_ids))

    # -- waiting and closing ----------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when this process made work ready, a poll falls due, or after ``timeout``."""
        if timeout <= 0 or self._closed:
            return
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        self._hub.add_waiter(waiter)
        try:
            # Registered before looking, so work made ready meanwhile wakes the waiter.
            ready, due_in = await asyncio.wrap_future(
                self._portal.submit(_as_coroutine(self._ready))
            )
            if ready:
                return
            if due_in is not None:
                timeout = min(timeout, due_in)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            self._hub.remove_waiter(waiter)

    async def _ready(self) -> tuple[bool, float | None]:
        hub = self._hub
        now = hub.now()
        if hub.control_polls.kicked or hub.work_poll.kicked or self._activities.has_ready(now):
            return True, None
        if self._sessions.has_ready(now):
            return True, None
        dues = [hub.control_polls.next_expected(), hub.work_poll.next_expected()]
        return False, min((d for d in dues if d is not None), default=None)

    async def close(self) -> None:
        """Close the clients, stop the store thread and wake waiters; idempotent."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            await self._settle_in_flight()
            await self._sessions.close()
            await self._hub.resources.close()

        try:
            await asyncio.wrap_future(self._portal.submit(_as_coroutine(shut)))
        finally:
            await self._portal.aclose()
            self._hub.wake()

    async def _settle_in_flight(self) -> None:
        """Let calls in flight finish, briefly, and cancel the rest (on the store loop).

        None may outlive the clients it uses: one cut off by the loop stopping
        would leave its task pending and its HTTP session open.
        """
        calls = set(self._in_flight)
        if not calls:
            return
        _, late = await asyncio.wait(calls, timeout=_CLOSE_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


async def _as_coroutine(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
