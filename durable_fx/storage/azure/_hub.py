"""The gateway of one Azure store to its tables and queues: I/O, tokens, polls, waking.

``Hub`` submits transactions (built by ``_ops``), reads rows and partitions,
turns inbox rows into pending messages (``_session``) and back, records
poisoned messages, hands out tokens and arrival stamps, and wakes the
``wait_for_work`` callers. It knows nothing of sessions (``_sessions``).

All of it lives on the store's private event loop (one thread), so none of it
needs locks; only the waiters of ``wait_for_work`` are touched from other
threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient

from ..._clock import Clock
from ..._history import HISTORY_EVENT
from .._records import OrchestrationMessage
from ._batch import submit_transaction
from ._codec import INSTANCE_ROW, Codec, inbox_key, odata, parse_ts, ts
from ._ops import Op, batches
from ._poller import ControlPolls, Poller
from ._queues import Queues, Received
from ._resources import Resources
from ._session import Partition, Pending
from ._transient import retrying, status_of

__all__ = ["Hub"]


class Hub:
    """The table and queue I/O every part of the store goes through; lives on the store loop."""

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
