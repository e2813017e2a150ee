"""An in-process store: the readable reference implementation of the Store protocol.

Everything lives in plain dicts and lists behind one ``threading.Lock``, so the
store may be shared by several event loops and threads. Nothing survives the
process: use it for tests and experiments, and read it to learn what every
other store must do (``durable_fx.testing.check_store`` holds them all to it).

Rules the protocol leaves open, which the SQLite store follows too:

- a lock (instance or work item) is *held* by its token until another worker
  takes it; an expired lease only makes the work available again;
- versions are ``"1"`` for a new instance and count up by one per commit and
  per re-creation of a finished instance (a purge starts over);
- an instance's messages are handed out oldest first by ``(visible_at,
  arrival)``.

Which ready instance or work item goes first is a fairness choice that no
check pins down: here, the instance whose oldest visible message is oldest,
and work items in the order they were created.

Longer than 500 lines on purpose: the whole protocol in one file that reads
top to bottom, as the reference the other stores are checked against.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .._clock import Clock, SystemClock
from .._entity import is_entity_instance_id
from .._errors import (
    ConflictError,
    InstanceExistsError,
    InstanceNotFoundError,
)
from .._history import HistoryEvent, TimerFired
from .._ids import validate_instance_id
from .._metrics import record_poisoned
from .._state import OrchestrationStatus
from ._keyset import decode_keyset, encode_keyset
from ._protocol import Accept
from ._records import (
    ActivityInvocation,
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InboxMessage,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Page,
    PoisonedMessage,
    QueueBacklog,
    accepts_rewind,
    creation_start,
    finished_refusal,
    new_instance_record,
    started_event,
)

__all__ = ["MemoryStore"]

_ORCHESTRATION_QUEUE = "orchestrations"
_ACTIVITY_QUEUE = "activities"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_WorkKey = tuple[str, str, int]
"""A work item's identity: (instance_id, execution_id, task_id)."""

_SortKey = tuple[int, str]
"""Newest-first order of instances: (-created_at in microseconds, instance_id)."""


@dataclass(slots=True)
class _Lease:
    token: str
    owner: str
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now


@dataclass(slots=True)
class _Pending:
    """An inbox message with its delivery state."""

    seq: int
    message: OrchestrationMessage
    visible_at: datetime
    dequeue_count: int = 0

    @property
    def message_id(self) -> str:
        return str(self.seq)

    def to_inbox_message(self) -> InboxMessage:
        return InboxMessage(
            message_id=self.message_id,
            event=self.message.event,
            execution_id=self.message.execution_id,
            dequeue_count=self.dequeue_count,
        )


@dataclass(slots=True)
class _Instance:
    """One instance: its row, history, inbox (by message id) and lock."""

    record: InstanceRecord
    history: list[HistoryEvent] = field(default_factory=list)
    inbox: dict[str, _Pending] = field(default_factory=dict)
    lease: _Lease | None = None
    used_keys: set[str] = field(default_factory=set)
    """Keys of the messages ``enqueue`` accepted: a repeat is a duplicate, pending or not."""

    def visible(self, now: datetime) -> list[_Pending]:
        """Messages that may be delivered now, oldest first."""
        ready = [p for p in self.inbox.values() if p.visible_at <= now]
        return sorted(ready, key=lambda p: (p.visible_at, p.seq))

    def lockable(self, now: datetime) -> bool:
        return self.lease is None or self.lease.expired(now)


@dataclass(frozen=True, slots=True)
class _Poisoned:
    """A poisoned message as listed, and what it takes to put it back."""

    listed: PoisonedMessage
    original: OrchestrationMessage | ActivityInvocation


@dataclass(slots=True)
class _Work:
    """An activity work item with its delivery state."""

    invocation: ActivityInvocation
    visible_at: datetime
    dequeue_count: int = 0
    lease: _Lease | None = None

    def ready(self, now: datetime) -> bool:
        return self.visible_at <= now and (self.lease is None or self.lease.expired(now))


class MemoryStore:
    """A Store that keeps everything in memory, guarded by one lock.

    Args:
        clock: Source of "now" for visibility, leases and poisoning; the system
            clock by default (tests pass ``durable_fx.testing.ManualClock``).
        max_dequeue_count: Deliveries after which a message or work item that
            never succeeded is moved to the poison list.
    """

    def __init__(self, *, clock: Clock | None = None, max_dequeue_count: int = 5) -> None:
        if max_dequeue_count < 1:
            raise ValueError(f"max_dequeue_count must be at least 1, got {max_dequeue_count}")
        self._clock = clock or SystemClock()
        self._max_dequeue_count = max_dequeue_count
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}
        # dicts keep insertion order, which makes activity delivery FIFO.
        self._work: dict[_WorkKey, _Work] = {}
        self._poison: dict[str, _Poisoned] = {}  # by poison id, oldest first
        self._seq = itertools.count(1)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._closed = False

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self,
        message: OrchestrationMessage,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        started = started_event(message)
        instance_id = validate_instance_id(message.instance_id)
        with self._lock:
            existing = self._instances.get(instance_id)
            if existing is not None and not _replaces(existing.record.status, replaceable):
                raise InstanceExistsError(instance_id, existing.record.status.value)
            record = new_instance_record(instance_id, started)
            if existing is not None:
                # Keep counting: a version cached for the old incarnation must
                # never match the new one.
                record = dataclasses.replace(record, version=_next_version(existing.record))
            self._drop_instance(instance_id)
            self._instances[instance_id] = _Instance(record)
            if self._add_message(message):
                self._wake()

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Add a message to a live instance's inbox; False if its key was used already."""
        validate_instance_id(message.instance_id)
        with self._lock:
            instance = self._instances.get(message.instance_id)
            if instance is None:
                raise InstanceNotFoundError(message.instance_id)
            if message.key in instance.used_keys:
                return False
            kind, status = message.event.kind, instance.record.status
            if refusal := finished_refusal(message.instance_id, kind, status):
                raise refusal
            instance.used_keys.add(message.key)
            if any(p.message.key == message.key for p in instance.inbox.values()):
                return False
            if accepts_rewind(kind):
                instance.record = dataclasses.replace(
                    instance.record,
                    status=OrchestrationStatus.RUNNING,
                    output=None,
                    failure=None,
                    updated_at=self._clock.now(),
                    version=_next_version(instance.record),
                )
            if self._add_message(message):
                self._wake()
            return True

    # -- orchestration work -----------------------------------------------------

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` unlocked instances with visible messages (that ``accept`` runs)."""
        with self._lock:
            now = self._clock.now()
            items: list[OrchestrationWorkItem] = []
            for instance in self._lockable_instances(now):
                record = instance.record
                if accept is not None and not accept(record.name, record.orchestration_version):
                    continue
                if len(items) >= limit:
                    break
                messages = self._deliver_inbox(instance, now)
                if messages:
                    instance.lease = _Lease(uuid.uuid4().hex, owner, now + lease)
                    items.append(
                        OrchestrationWorkItem(instance.record, messages, instance.lease.token)
                    )
            return LockBatch(items, self._next_message_due(now))

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current execution's history, oldest first (empty if none)."""
        with self._lock:
            instance = self._instances.get(instance_id)
            return list(instance.history) if instance else []

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version.

        Raises ``ConflictError`` (changing nothing) when ``item`` is stale.
        """
        instance_id = item.instance.instance_id
        if commit.instance.instance_id != instance_id:
            raise ValueError(
                f"commit for instance {commit.instance.instance_id!r} "
                f"does not match the locked instance {instance_id!r}"
            )
        # Validate everything before touching state: a commit applies fully or not at all.
        for message in commit.messages:
            validate_instance_id(message.instance_id)
        with self._lock:
            instance = self._held_instance(item)
            self._apply_commit(instance, commit)
            self._wake()
            return instance.record.version

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release the lock; retry the messages later, or poison the over-delivered ones."""
        with self._lock:
            instance = self._instances.get(item.instance.instance_id)
            if instance is None or not _holds(instance.lease, item.lock_token):
                return  # Someone else owns the instance now; its messages are theirs.
            instance.lease = None
            now = self._clock.now()
            for message in item.messages:
                pending = instance.inbox.get(message.message_id)
                if pending is None:
                    continue
                if pending.dequeue_count >= self._max_dequeue_count:
                    self._poison_message(instance, pending, reason, now)
                else:
                    pending.visible_at = now + retry_after
            if retry_after <= timedelta(0):
                self._wake()

    async def renew_orchestration_lease(
        self, item: OrchestrationWorkItem, lease: timedelta
    ) -> None:
        """Extend the lock if ``item`` still holds it; otherwise do nothing."""
        with self._lock:
            instance = self._instances.get(item.instance.instance_id)
            lock = instance.lease if instance is not None else None
            if lock is not None and _holds(lock, item.lock_token):
                lock.expires_at = self._clock.now() + lease

    # -- activity work ----------------------------------------------------------

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` visible work items, oldest first."""
        with self._lock:
            now = self._clock.now()
            items: list[ActivityWorkItem] = []
            for key, work in list(self._work.items()):
                if len(items) >= limit:
                    break
                if not work.ready(now):
                    continue
                if work.dequeue_count >= self._max_dequeue_count:
                    reason = f"delivered {work.dequeue_count} times without completing"
                    self._poison_work(key, work, reason, now)
                    continue
                work.dequeue_count += 1
                work.lease = _Lease(uuid.uuid4().hex, owner, now + lease)
                items.append(
                    ActivityWorkItem(work.invocation, work.lease.token, work.dequeue_count)
                )
            return LockBatch(items, self._next_work_due(now))

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each result whose work item this worker still holds; drop the rest."""
        with self._lock:
            woke = False
            for result in results:
                key = _work_key(result.item.invocation)
                work = self._work.get(key)
                if work is None or not _holds(work.lease, result.item.lock_token):
                    continue  # Another worker took the item over; its result counts.
                del self._work[key]
                if result.message.instance_id in self._instances:
                    woke |= self._add_message(result.message)
            if woke:
                self._wake()

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release a work item for a retry after ``retry_after``, or poison it."""
        with self._lock:
            key = _work_key(item.invocation)
            work = self._work.get(key)
            if work is None or not _holds(work.lease, item.lock_token):
                return
            now = self._clock.now()
            if work.dequeue_count >= self._max_dequeue_count:
                self._poison_work(key, work, reason, now)
                return
            work.lease = None
            work.visible_at = now + retry_after
            if retry_after <= timedelta(0):
                self._wake()

    async def renew_activity_lease(
        self, item: ActivityWorkItem, lease: timedelta, *, heartbeat: str | None = None
    ) -> None:
        """Extend the lease if this worker still holds the item; otherwise do nothing."""
        with self._lock:
            work = self._work.get(_work_key(item.invocation))
            if work is not None and work.lease is not None and _holds(work.lease, item.lock_token):
                work.lease.expires_at = self._clock.now() + lease
                if heartbeat is not None:
                    work.invocation = dataclasses.replace(
                        work.invocation, heartbeat_details=heartbeat
                    )

    # -- reading and housekeeping -----------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        with self._lock:
            instance = self._instances.get(instance_id)
            return instance.record if instance else None

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Matching instances, newest first, ``query.page_size`` at a time."""
        if query.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {query.page_size}")
        after = _decode_continuation(query.continuation)
        with self._lock:
            records = [i.record for i in self._instances.values() if _matches(i.record, query)]
        records.sort(key=_newest_first)
        if after is not None:
            records = [r for r in records if _newest_first(r) > after]
        page = records[: query.page_size]
        more = len(records) > query.page_size
        return Page(page, _encode_continuation(_newest_first(page[-1])) if more else None)

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance with its history, inbox and work items; False if absent."""
        with self._lock:
            if instance_id not in self._instances:
                return False
            self._drop_instance(instance_id)
            return True

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        """``purge_instance``, only while the row is at ``version`` and nothing is pending."""
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is None or instance.record.version != version or instance.inbox:
                return False
            if any(key[0] == instance_id for key in self._work):
                return False
            self._drop_instance(instance_id)
            return True

    async def count_instances(self) -> dict[OrchestrationStatus, int]:
        """How many orchestration instances have each status (entities are not counted)."""
        with self._lock:
            records = [i.record for i in self._instances.values()]
        return dict(Counter(r.status for r in records if not is_entity_instance_id(r.instance_id)))

    async def backlog(self) -> list[QueueBacklog]:
        """Due inbox messages and activity work items, and how long the oldest has waited."""
        with self._lock:
            now = self._clock.now()
            inboxes = [i.inbox.values() for i in self._instances.values()]
            messages = [p.visible_at for inbox in inboxes for p in inbox if p.visible_at <= now]
            work = [w.visible_at for w in self._work.values() if w.ready(now)]
        return [
            QueueBacklog.at(_ORCHESTRATION_QUEUE, len(messages), min(messages, default=None), now),
            QueueBacklog.at(_ACTIVITY_QUEUE, len(work), min(work, default=None), now),
        ]

    async def poisoned_messages(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first (only ``instance_id``'s if given)."""
        with self._lock:
            listed = [p.listed for p in self._poison.values()]
        return [p for p in listed if instance_id is None or p.instance_id == instance_id]

    async def requeue_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Put poisoned messages back as they were, visible now; returns how many."""
        with self._lock:
            requeued = 0
            for poison_id in dict.fromkeys(poison_ids):
                poisoned = self._poison.get(poison_id)
                if poisoned is not None and self._put_back(poisoned.original):
                    del self._poison[poison_id]
                    requeued += 1
            if requeued:
                self._wake()
            return requeued

    async def delete_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Drop poisoned messages for good; returns how many."""
        with self._lock:
            found = [i for i in dict.fromkeys(poison_ids) if i in self._poison]
            for poison_id in found:
                del self._poison[poison_id]
            return len(found)

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work becomes visible in this store, or after ``timeout`` seconds."""
        if timeout <= 0:
            return
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            # Work that arrived between the caller's last poll and now would
            # otherwise wait out the whole timeout.
            if self._closed or self._has_ready_work(self._clock.now()):
                return
            self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def next_due(self) -> datetime | None:
        """When a message or work item can next be locked; ``None`` if nothing waits.

        A time at or before the clock's ``now()`` means something can be locked
        now; a later one is where a test clock must move for anything to happen
        (``durable_fx.testing.TestEnvironment`` skips time to it). A held lock
        defers its work to the lock's expiry. The timers of a finished instance
        do not count: when they fire, nothing happens.
        """
        with self._lock:
            due: list[datetime] = []
            for instance in self._instances.values():
                finished = instance.record.status.is_terminal
                pending = [
                    p.visible_at
                    for p in instance.inbox.values()
                    if not (finished and isinstance(p.message.event, TimerFired))
                ]
                if pending:
                    due.append(_after_lease(min(pending), instance.lease))
            due.extend(_after_lease(w.visible_at, w.lease) for w in self._work.values())
            return min(due, default=None)

    async def close(self) -> None:
        """Wake every waiter; the data stays readable until the store is dropped."""
        with self._lock:
            self._closed = True
            self._wake()

    # -- helpers (called with self._lock held) ----------------------------------

    def _add_message(self, message: OrchestrationMessage) -> bool:
        """Put ``message`` in its (existing) instance's inbox; True if it is visible now."""
        inbox = self._instances[message.instance_id].inbox
        if any(p.message.key == message.key for p in inbox.values()):
            return False
        now = self._clock.now()
        pending = _Pending(next(self._seq), message, message.visible_at or now)
        inbox[pending.message_id] = pending
        return pending.visible_at <= now

    def _put_back(self, original: OrchestrationMessage | ActivityInvocation) -> bool:
        """Return a poisoned message to circulation; False if its instance is gone."""
        if original.instance_id not in self._instances:
            return False
        if isinstance(original, ActivityInvocation):
            # setdefault: a copy scheduled again meanwhile is not doubled.
            now = self._clock.now()
            self._work.setdefault(_work_key(original), _Work(original, visible_at=now))
        else:
            # Its dedupe key is unchanged, so a copy pending meanwhile is not doubled.
            self._add_message(dataclasses.replace(original, visible_at=None))
        return True

    def _add_poison(
        self, listed: PoisonedMessage, original: OrchestrationMessage | ActivityInvocation
    ) -> None:
        self._poison[listed.poison_id] = _Poisoned(listed, original)
        record_poisoned(listed.queue)

    def _drop_instance(self, instance_id: str) -> None:
        self._instances.pop(instance_id, None)
        for key in [k for k in self._work if k[0] == instance_id]:
            del self._work[key]

    def _lockable_instances(self, now: datetime) -> list[_Instance]:
        """Unlocked instances with visible messages, the longest-waiting first."""
        ready = [(i.visible(now), i) for i in self._instances.values() if i.lockable(now)]
        waiting = [(msgs[0].visible_at, msgs[0].seq, i) for msgs, i in ready if msgs]
        waiting.sort(key=lambda entry: entry[:2])
        return [instance for _, _, instance in waiting]

    def _deliver_inbox(self, instance: _Instance, now: datetime) -> list[InboxMessage]:
        """Count one delivery of each visible message; poison those delivered too often."""
        delivered: list[InboxMessage] = []
        for pending in instance.visible(now):
            if pending.dequeue_count >= self._max_dequeue_count:
                reason = f"delivered {pending.dequeue_count} times without a successful episode"
                self._poison_message(instance, pending, reason, now)
            else:
                pending.dequeue_count += 1
                delivered.append(pending.to_inbox_message())
        return delivered

    def _held_instance(self, item: OrchestrationWorkItem) -> _Instance:
        """The locked instance, if ``item`` is still current; else ``ConflictError``."""
        instance_id = item.instance.instance_id
        instance = self._instances.get(instance_id)
        if instance is None:
            raise ConflictError(instance_id, "it was purged while locked")
        if instance.record.version != item.instance.version:
            raise ConflictError(
                instance_id,
                f"version {item.instance.version} is stale (now {instance.record.version})",
                lock_kept=_holds(instance.lease, item.lock_token),
            )
        if not _holds(instance.lease, item.lock_token):
            raise ConflictError(instance_id, "the lease expired and another worker locked it")
        return instance

    def _apply_commit(self, instance: _Instance, commit: EpisodeCommit) -> None:
        now = self._clock.now()
        if commit.reset_history:
            instance.history.clear()
        instance.history.extend(commit.new_history)
        for message_id in commit.consumed:
            instance.inbox.pop(message_id, None)
        if commit.cancelled:
            cancelled = set(commit.cancelled)
            for message_id in [i for i, p in instance.inbox.items() if p.message.key in cancelled]:
                del instance.inbox[message_id]
        instance.record = dataclasses.replace(
            commit.instance, version=_next_version(instance.record)
        )
        instance.lease = None
        for invocation in commit.activities:
            # setdefault: a work item that is already pending is not scheduled twice.
            self._work.setdefault(_work_key(invocation), _Work(invocation, visible_at=now))
        for message in commit.messages:
            self._route(message)

    def _route(self, message: OrchestrationMessage) -> None:
        """Deliver an outgoing message; a start creates its missing target, others need one."""
        if message.instance_id not in self._instances:
            started = creation_start(message)
            if started is None:
                return
            self._instances[message.instance_id] = _Instance(
                new_instance_record(message.instance_id, started)
            )
        self._add_message(message)

    def _poison_message(
        self, instance: _Instance, pending: _Pending, reason: str, now: datetime
    ) -> None:
        del instance.inbox[pending.message_id]
        extra = {"message_id": pending.message_id, "key": pending.message.key}
        if pending.message.execution_id is not None:
            extra["execution_id"] = pending.message.execution_id
        self._add_poison(
            PoisonedMessage(
                poison_id=str(next(self._seq)),
                queue=_ORCHESTRATION_QUEUE,
                instance_id=instance.record.instance_id,
                body=pending.message.event.model_dump_json(),
                reason=reason,
                poisoned_at=now,
                dequeue_count=pending.dequeue_count,
                extra=extra,
            ),
            pending.message,
        )

    def _poison_work(self, key: _WorkKey, work: _Work, reason: str, now: datetime) -> None:
        del self._work[key]
        invocation = work.invocation
        self._add_poison(
            PoisonedMessage(
                poison_id=str(next(self._seq)),
                queue=_ACTIVITY_QUEUE,
                instance_id=invocation.instance_id,
                body=invocation.to_json(),
                reason=reason,
                poisoned_at=now,
                dequeue_count=work.dequeue_count,
                extra={
                    "execution_id": invocation.execution_id,
                    "task_id": str(invocation.task_id),
                    "name": invocation.name,
                },
            ),
            invocation,
        )

    def _next_message_due(self, now: datetime) -> datetime | None:
        due = (p.visible_at for i in self._instances.values() for p in i.inbox.values())
        return min((at for at in due if at > now), default=None)

    def _next_work_due(self, now: datetime) -> datetime | None:
        return min((w.visible_at for w in self._work.values() if w.visible_at > now), default=None)

    def _has_ready_work(self, now: datetime) -> bool:
        if any(w.ready(now) for w in self._work.values()):
            return True
        return any(i.lockable(now) and i.visible(now) for i in self._instances.values())

    def _wake(self) -> None:
        for loop, event in self._waiters:
            # A waiter's loop may have closed since it registered; nothing to wake then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)


def _after_lease(visible_at: datetime, lease: _Lease | None) -> datetime:
    """When work visible at ``visible_at`` can be locked, given its lock."""
    return visible_at if lease is None else max(visible_at, lease.expires_at)


def _holds(lease: _Lease | None, token: str) -> bool:
    """Whether ``token`` still owns the lock (an expired lease counts until retaken)."""
    return lease is not None and lease.token == token


def _replaces(status: OrchestrationStatus, replaceable: frozenset[OrchestrationStatus]) -> bool:
    # Only a finished instance is ever replaced, whatever the caller names.
    return status.is_terminal and status in replaceable


def _next_version(record: InstanceRecord) -> str:
    return str(int(record.version) + 1)


def _work_key(invocation: ActivityInvocation) -> _WorkKey:
    return (invocation.instance_id, invocation.execution_id, invocation.task_id)


def _matches(record: InstanceRecord, query: InstanceQuery) -> bool:
    return (
        (not query.statuses or record.status in query.statuses)
        and (query.name is None or record.name == query.name)
        and (query.created_from is None or record.created_at >= query.created_from)
        and (query.created_to is None or record.created_at <= query.created_to)
        and (
            query.instance_id_prefix is None
            or record.instance_id.startswith(query.instance_id_prefix)
        )
        and is_entity_instance_id(record.instance_id) == query.entities
    )


def _newest_first(record: InstanceRecord) -> _SortKey:
    # Integer microseconds: exact, and negatable for a descending sort.
    micros = (record.created_at - _EPOCH) // timedelta(microseconds=1)
    return (-micros, record.instance_id)


def _encode_continuation(key: _SortKey) -> str:
    return encode_keyset(*key)


def _decode_continuation(token: str | None) -> _SortKey | None:
    if token is None:
        return None
    return decode_keyset(token)  # strict: no booleans, 64-bit integers, UTF-8 ids
