"""Shared state of one Azure store: clients, the local sessions, polling, waking.

A *session* is an instance this store object owns: the instance row names it
(``Owner``, ``OwnedUntil``) and a hidden control message (the *guard*) will
wake another worker if this process dies. While it owns an instance the store
keeps the row, its ETag and the pending inbox messages in memory, so episodes
and activity results need no reads and no queue round trips; everything is
still written to the table before it counts. See ``_orchestrations`` for how
sessions start and end.

All of it lives on the store's private event loop (one thread), so none of it
needs locks; only the waiters of ``wait_for_work`` are touched from other
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient

from ..._clock import Clock
from ..._history import HISTORY_EVENT, HistoryEvent
from .._records import ActivityInvocation, InboxMessage, InstanceRecord, OrchestrationMessage
from ._batch import submit_transaction
from ._codec import INSTANCE_ROW, Codec, inbox_key, json_list, odata, parse_ts, ts
from ._queues import Handle, Queues, Received
from ._resources import Resources
from ._transient import retrying, status_of

__all__ = [
    "ControlPolls",
    "Hub",
    "Lease",
    "Partition",
    "Pending",
    "PollRound",
    "Poller",
    "Session",
    "consumed_rows",
    "delay_of",
    "exists_ok",
    "gone_ok",
    "key_of_row",
]

Op = tuple[Any, ...]
"""One operation of an entity-group transaction, as ``TableClient.submit_transaction`` takes it."""

MAX_BATCH = 100
MAX_MESSAGES_PER_EPISODE = 90
"""Inbox messages handed out per episode: their deletions always fit its final transaction."""
MAX_BATCH_BYTES = 3_500_000
GUARD_SLACK = timedelta(seconds=2)
"""A host invocation's guard comes this long after its lease: a dead owner's has run out."""


@dataclass(slots=True)
class Lease:
    """A lock this store object handed out: whose, and until when (by the store's clock)."""

    token: str
    owner: str
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now


@dataclass(slots=True)
class Pending:
    """An inbox row of an owned instance."""

    row_key: str
    event: HistoryEvent
    event_json: str
    execution_id: str | None
    key: str
    visible_at: datetime
    arrival: str
    dequeue_count: int = 0
    stored: bool = True
    """Whether it has an inbox row; an activity result held in memory has none yet."""
    work_row: str | None = None
    """The work row a result held in memory replaces: consuming it deletes that row."""

    def order(self) -> tuple[datetime, str, str]:
        return (self.visible_at, self.arrival, self.row_key)

    def message(self) -> InboxMessage:
        return InboxMessage(self.row_key, self.event, self.execution_id, self.dequeue_count)


@dataclass(slots=True)
class Session:
    """An instance this store object owns, as last written."""

    record: InstanceRecord
    etag: str
    version: int
    generation: int
    count: int
    owned_until: datetime
    aborted: list[str] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)
    outstanding: dict[str, ActivityInvocation] = field(default_factory=dict)
    lock: Lease | None = None
    guard: Handle | None = None
    stale: bool = False
    """Other processes may have added messages: re-read the inbox before the next lock."""
    hosted: bool = False
    """Taken for one host invocation: no guard, the host's message is the only wake-up."""

    @property
    def instance_id(self) -> str:
        return self.record.instance_id

    def visible(self, now: datetime) -> list[Pending]:
        return sorted((p for p in self.pending.values() if p.visible_at <= now), key=Pending.order)

    def next_due(self, now: datetime) -> datetime | None:
        return min(
            (p.visible_at for p in self.pending.values() if p.visible_at > now), default=None
        )

    def lockable(self, now: datetime) -> bool:
        return self.lock is None or self.lock.expired(now)


@dataclass(slots=True)
class Partition:
    """The non-history rows of one instance partition, as read."""

    instance: dict[str, Any] | None
    inbox: list[dict[str, Any]]
    work: list[dict[str, Any]]
    outbox: list[dict[str, Any]]

    def hidden_tags(self) -> set[str]:
        """Tags of rows not (or never to be) committed: the staging and aborted ones."""
        if self.instance is None:
            return set()
        tags = set(json_list(self.instance.get("Aborted")))
        staging = self.instance.get("Staging")
        if staging:
            tags.add(str(staging))
        return tags


class Poller:
    """When to poll a queue: back off while empty, poll at once when kicked or when due."""

    def __init__(self, interval: tuple[float, float]) -> None:
        self._min, self._max = interval
        self._interval = self._min
        self._next = 0.0
        self._kicked = False
        self._expected: list[float] = []

    def due(self) -> bool:
        """Whether a remote poll should happen now."""
        now = time.monotonic()
        while self._expected and self._expected[0] <= now:
            heapq.heappop(self._expected)
            self._kicked = True
        return self._kicked or now >= self._next

    @property
    def kicked(self) -> bool:
        return self._kicked

    def polled(self, found: bool) -> None:
        """Record a poll: reset the back-off if it found something, else double it."""
        self._kicked = False
        self._interval = self._min if found else min(max(self._interval * 2, 0.05), self._max)
        if self._max <= 0:
            self._interval = 0.0
        self._next = time.monotonic() + self._interval

    def kick(self) -> None:
        """Poll at the next chance (this process just sent something to the queue)."""
        self._kicked = True

    def expect(self, delay: timedelta) -> None:
        """Poll when a message hidden for ``delay`` becomes visible."""
        heapq.heappush(self._expected, time.monotonic() + max(0.0, delay.total_seconds()))

    def next_expected(self) -> float | None:
        """Seconds until the next expected message, if any."""
        if not self._expected:
            return None
        return max(0.0, self._expected[0] - time.monotonic())


@dataclass(frozen=True, slots=True)
class PollRound:
    """The control queues to poll now, and whether the back-off chose them."""

    queues: tuple[str, ...]
    timed: bool
    """True if the shared back-off fell due (else only kicked or expected queues)."""


class ControlPolls:
    """When to poll which control queue: one back-off for all of them.

    While polls find messages (work flows) a timed poll takes every queue; after
    one that found nothing, a timed poll takes the next queue in turn, so a
    worker with nothing to do costs what one queue costs, and a message another
    process sends waits at most ``len(queues)`` times the longest interval (5 x
    80 s with 4 partitions). A queue this process sent to is polled alone, at
    once (``kick``) or when its message falls due (``expect``).
    """

    def __init__(self, queues: Sequence[str], interval: tuple[float, float]) -> None:
        self.queues = tuple(queues)
        self._backoff = Poller(interval)
        self._always_sweep = interval[1] <= 0
        """No back-off (tests): idle costs are not the point, every poll takes every queue."""
        self._sweep = True
        """Poll every queue at the next timed round (at first, and after one found work)."""
        self._turn = 0
        self._kicked: set[str] = set()
        self._expected: list[tuple[float, str]] = []

    def due(self) -> PollRound:
        """The queues to poll now (none: no poll)."""
        now = time.monotonic()
        while self._expected and self._expected[0][0] <= now:
            self._kicked.add(heapq.heappop(self._expected)[1])
        timed = self._backoff.due()
        chosen = set(self._kicked)
        if timed:
            chosen.update(self.queues if self._sweep else [self.queues[self._turn]])
        return PollRound(tuple(q for q in self.queues if q in chosen), timed)

    def polled(self, round_: PollRound, found: bool) -> None:
        """Record a round: a timed one that found messages has the next one poll everything."""
        self._kicked.difference_update(round_.queues)
        if not round_.timed:
            return
        if not self._sweep:
            self._turn = (self._turn + 1) % len(self.queues)
        self._sweep = found or self._always_sweep
        self._backoff.polled(found)

    @property
    def kicked(self) -> bool:
        """Whether some queue is to be polled at once."""
        return bool(self._kicked)

    def kick(self, queue: str) -> None:
        """Poll ``queue`` at the next chance (this process just sent something to it)."""
        self._kicked.add(queue)

    def expect(self, queue: str, delay: timedelta) -> None:
        """Poll ``queue`` when a message hidden for ``delay`` becomes visible."""
        due = time.monotonic() + max(0.0, delay.total_seconds())
        heapq.heappush(self._expected, (due, queue))

    def next_expected(self) -> float | None:
        """Seconds until the next expected message, if any."""
        if not self._expected:
            return None
        return max(0.0, self._expected[0][0] - time.monotonic())


class Hub:
    """Everything the store's parts share; lives on the store loop."""

    def __init__(
        self,
        resources: Resources,
        queues: Queues,
        clock: Clock,
        *,
        max_dequeue_count: int,
        idle_poll: tuple[float, float],
    ) -> None:
        self.resources = resources
        self.codec = Codec(resources)
        self.queues = queues
        self.clock = clock
        self.max_dequeue_count = max_dequeue_count
        self.names = resources.names
        self.owner_id = uuid.uuid4().hex
        self.control_polls = ControlPolls(self.names.control_queues, idle_poll)
        # The work queue mostly waits for our own commits; poll it half as often when idle.
        self.work_poll = Poller((idle_poll[0], idle_poll[1] * 2))
        self._lease = timedelta(seconds=60)
        self._is_worker = False
        self._arrivals = itertools.count()
        self._tokens = itertools.count()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._waiters_lock = threading.Lock()
        queues.on_lost = self._lost

    # -- how the store is used ------------------------------------------------------
    #
    # One store object may serve a client, a worker and the Functions host's triggers
    # at once, and the Store protocol hands the lease to each lock and accept call:
    # the store learns its use from those calls, not from its constructor.

    @property
    def is_worker(self) -> bool:
        """Whether a worker locks work here: then it polls, owns its starts, holds results."""
        return self._is_worker

    @property
    def lease(self) -> timedelta:
        """The lease of the last lock or accept call (60 s until there is one)."""
        return self._lease

    def serve_worker(self, lease: timedelta) -> None:
        """A worker locks orchestrations with ``lease`` (``lock_orchestrations``)."""
        self._is_worker = True
        self._lease = lease

    def serve_host(self, lease: timedelta) -> None:
        """The Functions host delivers a wake-up; its invocations hold ``lease``."""
        self._lease = lease

    def _lost(self, queue: str, delay: timedelta) -> None:
        """Messages may be hidden under a receipt we never saw: poll when they return."""
        if not self.is_worker:
            return  # a client-only store never polls; a worker elsewhere finds them
        visible = self.queues.visible_after(delay)
        if queue in self.names.control_queues:
            self.control_polls.expect(queue, visible)
        elif queue == self.names.work_queue:
            self.work_poll.expect(visible)

    def control_queue_of(self, instance_id: str) -> str:
        """The control queue that carries ``instance_id``'s wake-ups (its partition's)."""
        return self.names.control_queue_of(instance_id)

    def expect_control(self, instance_id: str, delay: timedelta) -> None:
        """This worker sent ``instance_id`` a wake-up: poll its queue when it is due."""
        self.expect_queue(self.control_queue_of(instance_id), delay)

    def expect_queue(self, queue: str, delay: timedelta) -> None:
        """This worker sent a message to the control queue ``queue``: poll it when it is due."""
        if not self.is_worker:
            return
        if delay <= timedelta(0):
            self.control_polls.kick(queue)
        else:
            self.control_polls.expect(queue, self.queues.visible_after(delay))

    # -- time and tokens ------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    def arrival(self) -> str:
        """Arrival order of a message written by this process (time first, then a counter)."""
        return f"{ts(self.now())}{next(self._arrivals):012d}"

    def token(self) -> str:
        """A token no other write anywhere carries: this store's random id and a counter.

        (``uuid4`` per write cost a GIL round trip through ``os.urandom`` each time.)
        """
        return f"{self.owner_id}{next(self._tokens):x}"

    # -- table ----------------------------------------------------------------------

    async def submit(
        self, ops: Sequence[Op], *, what: str, table: TableClient | None = None
    ) -> list[dict[str, Any]]:
        """One entity-group transaction (on the state table by default), retried while transient."""
        client = table or self.resources.table
        return await retrying(lambda: submit_transaction(client, ops), what=what)

    async def submit_tolerant(
        self,
        ops: Sequence[Op],
        *,
        tolerate: Callable[[Op, int], bool],
        what: str,
        table: TableClient | None = None,
    ) -> tuple[list[Op], list[dict[str, Any]]]:
        """Submit, dropping operations whose failure ``tolerate(op, status)`` accepts.

        Returns the operations that were applied and their results. Used where a
        409 (already there) or 404 (already gone) means "done", including when a
        retry meets the effect of an attempt whose response was lost.
        """
        remaining = list(ops)
        while remaining:
            try:
                return remaining, await self.submit(remaining, what=what, table=table)
            except TableTransactionError as error:
                index = getattr(error, "index", None)
                status = status_of(error)
                if index is None or status is None or not 0 <= index < len(remaining):
                    raise
                if not tolerate(remaining[index], status):
                    raise
                del remaining[index]
        return [], []

    async def submit_batches(
        self, ops: Sequence[Op], *, what: str, table: TableClient | None = None
    ) -> None:
        """Idempotent operations (upserts, deletes) in as many transactions as they need."""

        def tolerate(op: Op, status: int) -> bool:
            return op[0] == "delete" and status == 404

        for batch in batches(ops):
            await self.submit_tolerant(batch, tolerate=tolerate, what=what, table=table)

    async def read_instance(self, instance_id: str) -> dict[str, Any] | None:
        """The instance row with its ETag under ``"etag"``, or ``None``."""
        return await self.read_row(instance_id, INSTANCE_ROW, what="read an instance")

    async def read_row(
        self, partition: str, row_key: str, *, what: str = "read a row"
    ) -> dict[str, Any] | None:
        """One row with its ETag under ``"etag"``, or ``None``."""
        table = self.resources.table
        try:
            entity = await retrying(lambda: table.get_entity(partition, row_key), what=what)
        except ResourceNotFoundError:
            return None
        row = dict(entity)
        row["etag"] = entity.metadata["etag"]
        return row

    async def read_partition(self, instance_id: str) -> Partition:
        """Every row of an instance except its history."""
        query = f"PartitionKey eq {odata(instance_id)} and RowKey ge 'i'"
        rows = await self.query(query, what="read an instance's rows")
        partition = Partition(None, [], [], [])
        for row in rows:
            kind = str(row["RowKey"])[:1]
            if row["RowKey"] == INSTANCE_ROW:
                partition.instance = row
            elif kind == "m":
                partition.inbox.append(row)
            elif kind == "w":
                partition.work.append(row)
            elif kind == "x":
                partition.outbox.append(row)
        return partition

    async def query(
        self, query: str, *, what: str, select: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """All entities matching a filter, each with its ETag under ``"etag"``."""
        table = self.resources.table

        async def run() -> list[dict[str, Any]]:
            rows = []
            async for entity in table.query_entities(query, select=select):
                row = dict(entity)
                row["etag"] = entity.metadata.get("etag")
                rows.append(row)
            return rows

        return await retrying(run, what=what)

    # -- rows -------------------------------------------------------------------------

    async def inbox_entity(
        self, message: OrchestrationMessage, *, tag: str | None = None
    ) -> tuple[dict[str, Any], Pending]:
        """The inbox row for ``message`` and its pending record."""
        pending = self.pending_of(message)
        return await self.entity_of(message.instance_id, pending, tag=tag), pending

    def pending_of(self, message: OrchestrationMessage) -> Pending:
        """The pending record of ``message`` (not written anywhere yet)."""
        return Pending(
            row_key=inbox_key(message.key),
            event=message.event,
            event_json=message.event.model_dump_json(),
            execution_id=message.execution_id,
            key=message.key,
            visible_at=message.visible_at or self.now(),
            arrival=self.arrival(),
        )

    async def entity_of(
        self, instance_id: str, pending: Pending, *, tag: str | None = None
    ) -> dict[str, Any]:
        """The inbox row of a pending record."""
        entity: dict[str, Any] = {
            "PartitionKey": instance_id,
            "RowKey": pending.row_key,
            "Key": pending.key,
            "VisibleAt": ts(pending.visible_at),
            "Arrival": pending.arrival,
            "DequeueCount": 0,
        }
        if pending.execution_id is not None:
            entity["ExecutionId"] = pending.execution_id
        if tag:
            entity["Tag"] = tag
        await self.codec.put_text(entity, "Event", pending.event_json, instance_id)
        return entity

    async def pending_from_row(self, row: dict[str, Any]) -> Pending:
        """The pending record of an inbox row read from the table."""
        event_json = await self.codec.get_text(row, "Event") or "{}"
        return Pending(
            row_key=str(row["RowKey"]),
            event=HISTORY_EVENT.validate_json(event_json),
            event_json=event_json,
            execution_id=row.get("ExecutionId"),
            key=str(row.get("Key", "")),
            visible_at=parse_ts(str(row["VisibleAt"])),
            arrival=str(row.get("Arrival", "")),
            dequeue_count=int(row.get("DequeueCount", 0)),
        )

    # -- poison -----------------------------------------------------------------------

    async def record_poison(
        self,
        *,
        queue: str,
        logical_queue: str,
        instance_id: str | None,
        body: str,
        reason: str,
        dequeue_count: int,
        extra: dict[str, str],
    ) -> None:
        """Write a poisoned message to ``<queue>-poison`` and to the hub's poison rows.

        The row is what ``poisoned_messages`` lists and ``requeue_poisoned``
        puts back (``_poison``); the queue copy is for tools that watch poison
        queues, and the row names it so that it can go too.
        """
        now = self.now()
        poison_id = f"p{self.arrival()}{uuid.uuid4().hex[:8]}"
        copy = await self.queues.poison(queue, body, reason, poison_id)
        entity: dict[str, Any] = {
            "PartitionKey": "",  # no instance id is empty, so this partition is free
            "RowKey": poison_id,
            "Queue": logical_queue,
            "SourceQueue": queue,
            "Reason": reason,
            "PoisonedAt": ts(now),
            "DequeueCount": dequeue_count,
            "Extra": json.dumps(extra),
            "CopyQueue": copy.queue,
            "CopyId": copy.id,
            "CopyReceipt": copy.pop_receipt,
        }
        if instance_id is not None:
            entity["InstanceId"] = instance_id
        await self.codec.put_text(entity, "Body", body, instance_id or "_poison")
        await self.submit([("upsert", entity)], what="record a poisoned message")

    async def poison_undecodable(
        self, message: Received, *, queue: str, logical_queue: str, reason: str
    ) -> None:
        """Poison a received message that names no instance, then take it off ``queue``."""
        await self.record_poison(
            queue=queue,
            logical_queue=logical_queue,
            instance_id=None,
            body=message.text,
            reason=reason,
            dequeue_count=message.dequeue_count,
            extra={"message_id": message.handle.id},
        )
        await self.queues.delete(message.handle)

    # -- waking -----------------------------------------------------------------------

    def add_waiter(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._waiters_lock:
            self._waiters.add(waiter)

    def remove_waiter(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._waiters_lock:
            self._waiters.discard(waiter)

    def wake(self) -> None:
        """Wake every ``wait_for_work`` caller; safe from any thread."""
        with self._waiters_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(event.set)


def instance_update(entity: dict[str, Any], etag: str, *, merge: bool = False) -> Op:
    """A conditional write of an instance row (If-Match ``etag``)."""
    mode = UpdateMode.MERGE if merge else UpdateMode.REPLACE
    options = {"mode": mode, "etag": etag, "match_condition": MatchConditions.IfNotModified}
    return ("update", entity, options)


def key_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The keys of a row read from the table (for a delete)."""
    return {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}


def gone_ok(op: Op, status: int) -> bool:
    """``submit_tolerant``: a delete or update of a row (not the instance row) already gone."""
    return op[0] in ("delete", "update") and status == 404 and op[1].get("RowKey") != "i"


def exists_ok(op: Op, status: int) -> bool:
    """``submit_tolerant``: an insert whose row is there already (a duplicate, or our retry)."""
    return op[0] == "create" and status == 409


def delay_of(message: OrchestrationMessage, now: datetime) -> timedelta:
    """How long until ``message`` is due (zero if it is)."""
    if message.visible_at is None:
        return timedelta(0)
    return max(timedelta(0), message.visible_at - now)


def consumed_rows(instance_id: str, pending: Pending) -> list[Op]:
    """The deletions that consume a pending message: its inbox row, the work row it ends."""
    rows = [pending.row_key] if pending.stored else []
    if pending.work_row is not None:
        rows.append(pending.work_row)
    return [("delete", {"PartitionKey": instance_id, "RowKey": row}) for row in rows]


def bump(instance_id: str) -> Op:
    """An unconditional touch of an instance row: fails (404) if it does not exist.

    It changes the row's ETag, which is how an owner in another process learns
    that new messages arrived (its next conditional write fails and it re-reads).
    """
    entity = {"PartitionKey": instance_id, "RowKey": INSTANCE_ROW, "Mail": uuid.uuid4().hex}
    return ("update", entity, {"mode": UpdateMode.MERGE})


def entity_size(op: Op) -> int:
    """Rough wire size of an operation's entity."""
    entity = op[1]
    return 200 + sum(len(k) + len(str(v)) for k, v in entity.items())


def batches(ops: Sequence[Op]) -> list[list[Op]]:
    """Split operations into transactions of at most 100 operations and ~3.5 MB."""
    out: list[list[Op]] = []
    current: list[Op] = []
    size = 0
    for op in ops:
        op_size = entity_size(op)
        if current and (len(current) >= MAX_BATCH or size + op_size > MAX_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(op)
        size += op_size
    if current:
        out.append(current)
    return out
