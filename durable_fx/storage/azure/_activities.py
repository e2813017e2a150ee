"""Activity work on Azure: work rows in the instance partition, messages, results.

Each scheduled activity is a work row in its instance's partition, written
with the episode that scheduled it; this process holds what it has room for,
the rest goes to ``<hub>-workitems``. The row is the proof that a result is
not recorded yet (contract 4). The design: docs/design/azure-store.md, "Activities".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from .._records import ActivityInvocation, ActivityResult, ActivityWorkItem, LockBatch
from .._trace_codec import trace_of, trace_text
from ._codec import work_key
from ._hub import Hub
from ._ops import Op
from ._queues import MAX_MESSAGE_BYTES, Received
from ._results import complete_chunk, defer, trusted
from ._session import GUARD_SLACK, HeldWork, Lease
from ._sessions import PAIRS_PER_BATCH, Sessions
from ._transient import retrying

__all__ = ["Activities"]

_SEND_CONCURRENCY = 32


class Activities:
    """The activity half of the Store protocol, on top of a ``Hub``."""

    def __init__(self, hub: Hub, sessions: Sessions) -> None:
        self._hub = hub
        self._sessions = sessions
        self._held: dict[str, HeldWork] = {}
        self._dead: set[tuple[str, str]] = set()
        self._tokens = 0
        self._capacity = 0
        self._order: dict[int, str] = {}
        """How many items this process's worker takes at once (0: no worker here)."""

    def _waiting(self) -> int:
        """Held items not handed out yet."""
        return sum(1 for held in self._held.values() if held.lease is None)

    # -- scheduling ---------------------------------------------------------------

    async def work_row(self, invocation: ActivityInvocation, *, local: bool) -> dict[str, Any]:
        """The ``w`` row recording a scheduled, not yet completed activity.

        ``Local`` marks an item this process runs without a queue message: whoever
        takes the instance over re-sends it at once (no copy can be in the queue).
        """
        iid = invocation.instance_id
        row: dict[str, Any] = {
            "PartitionKey": iid,
            "RowKey": work_key(invocation.execution_id, invocation.task_id),
            "ExecutionId": invocation.execution_id,
            "TaskId": invocation.task_id,
            "Name": invocation.name,
            "Attempt": invocation.attempt,
        }
        if local:
            row["Local"] = 1
        if invocation.heartbeat_timeout is not None:
            row["HeartbeatTimeout"] = invocation.heartbeat_timeout
        if invocation.heartbeat_details is not None:
            row["Heartbeat"] = invocation.heartbeat_details
        if invocation.trace_context is not None:
            row["TraceContext"] = trace_text(invocation.trace_context)
        await self._hub.codec.put_text(row, "Input", invocation.input, iid)
        return row

    async def invocation_from_row(self, row: dict[str, Any]) -> ActivityInvocation:
        """The invocation a ``w`` row records."""
        return ActivityInvocation(
            instance_id=str(row["PartitionKey"]),
            execution_id=str(row["ExecutionId"]),
            task_id=int(row["TaskId"]),
            name=str(row["Name"]),
            input=await self._hub.codec.get_text(row, "Input"),
            attempt=int(row.get("Attempt", 1)),
            heartbeat_timeout=_seconds(row.get("HeartbeatTimeout")),
            heartbeat_details=row.get("Heartbeat"),
            trace_context=trace_of(row.get("TraceContext")),
        )

    def _holds(self, instance_id: str, row_key: str) -> bool:
        """Whether this process holds the task already (waiting or running)."""
        return any(
            h.row_key == row_key and h.invocation.instance_id == instance_id
            for h in self._held.values()
        )

    def room(self, count: int) -> int:
        """How many of ``count`` new work items this process's worker takes itself."""
        if not self._capacity:
            return 0  # no worker polls here (a client, or the Functions host delivers work)
        return max(0, min(count, self._capacity - self._waiting()))

    def hold(self, invocations: Sequence[ActivityInvocation]) -> None:
        """Take work items this worker runs itself: no queue message, no request.

        Their committed work rows are the copy that survives a crash: the
        instance's guard has it taken over and the rows re-sent. A task held
        here already (this process took over an instance it had let go of,
        and the attempt still runs) is not held twice.
        """
        for invocation in invocations:  # in scheduling order: handed out oldest first
            row_key = work_key(invocation.execution_id, invocation.task_id)
            if self._holds(invocation.instance_id, row_key):
                continue
            self._tokens += 1
            held = HeldWork(None, invocation, row_key, "", 0, local_id=f"local:{self._tokens}")
            self._held[held.key] = held
        if invocations:
            self._hub.wake()

    async def send(
        self,
        invocations: Sequence[ActivityInvocation],
        *,
        redelivery: bool,
        delay: timedelta | None = None,
    ) -> None:
        """Put a work-item message per invocation (after their rows are committed).

        A ``redelivery`` is checked against its row before it runs. By default it
        waits two leases: it may duplicate a message still in the queue, hidden by a
        dead worker's lease, which by then has usually run and deleted its row.
        """
        hub = self._hub
        if not invocations:
            return
        gate = asyncio.Semaphore(_SEND_CONCURRENCY)
        if delay is None:
            delay = hub.lease * 2 if redelivery else timedelta(0)

        async def send_one(invocation: ActivityInvocation) -> None:
            body = await self._body(invocation, redelivery)
            async with gate:
                await hub.queues.put(hub.names.work_queue, body, delay=delay)

        self._order = {id(i): hub.arrival() for i in invocations}
        await asyncio.gather(*(send_one(i) for i in invocations))
        if delay:
            hub.work_poll.expect(hub.queues.visible_after(delay))
        else:
            hub.work_poll.kick()
            hub.wake()

    async def _body(self, invocation: ActivityInvocation, redelivery: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "w": invocation.instance_id,
            "x": invocation.execution_id,
            "t": invocation.task_id,
            "n": invocation.name,
            "a": invocation.attempt,
            "in": invocation.input,
            # Puts run concurrently; this restores scheduling order within a received batch.
            "o": self._order.get(id(invocation), ""),
        }
        if invocation.heartbeat_timeout is not None:
            body["ht"] = invocation.heartbeat_timeout
        if invocation.heartbeat_details is not None:
            body["hd"] = invocation.heartbeat_details
        if invocation.trace_context is not None:
            body["tc"] = trace_text(invocation.trace_context)
        if redelivery:
            body["re"] = 1  # maybe a duplicate: check the row before running it
        if len(json.dumps(body)) > MAX_MESSAGE_BYTES - 1024:
            text = invocation.input or ""
            body["in"] = None
            body["b"] = await self._hub.resources.put_payload(invocation.instance_id, text)
        return body

    async def invocation_of(self, body: dict[str, Any]) -> ActivityInvocation:
        """The invocation a work-item message carries (its input from a blob if large)."""
        text = body.get("in")
        if body.get("b"):
            text = await self._hub.resources.get_payload(str(body["b"]))
        return ActivityInvocation(
            instance_id=str(body["w"]),
            execution_id=str(body["x"]),
            task_id=int(body["t"]),
            name=str(body["n"]),
            input=text,
            attempt=int(body.get("a", 1)),
            heartbeat_timeout=_seconds(body.get("ht")),
            heartbeat_details=body.get("hd"),
            trace_context=trace_of(body.get("tc")),
        )

    def forget_work(self, instance_id: str, row_keys: Sequence[str]) -> None:
        """Work rows deleted by a purge or re-creation: their messages must not run."""
        self._dead.update((instance_id, rk) for rk in row_keys)

    # -- locking ------------------------------------------------------------------

    async def lock(self, owner: str, limit: int, lease: timedelta) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` work items: expired local leases first, then the queue."""
        hub = self._hub
        self._capacity = max(self._capacity, limit)
        items: list[ActivityWorkItem] = []
        now = hub.now()
        for held in list(self._held.values()):
            if len(items) >= limit:
                break
            if not _available(held, now):
                continue
            if await self._hand_out(held, owner, lease, now):
                items.append(self._item(held))
        if len(items) < limit and hub.work_poll.due():
            # Take a full batch when there is room: what exceeds ``limit`` waits here,
            # hidden for a lease, instead of costing one receive per free slot.
            room = max(limit, self._capacity - self._waiting())
            received = await hub.queues.receive(hub.names.work_queue, limit=room, lease=lease)
            hub.work_poll.polled(bool(received))
            received.sort(key=lambda m: str((m.body or {}).get("o", "")))
            for message in received:
                known = message.handle.id in self._held
                admitted = await self._admit(message)
                if admitted is None or len(items) >= limit or not _available(admitted, now):
                    continue
                if await self._hand_out(admitted, owner, lease, now, fresh=not known):
                    items.append(self._item(admitted))
        dues = [h.visible_at for h in self._held.values() if h.visible_at and h.visible_at > now]
        return LockBatch(items, min(dues, default=None))

    async def _admit(self, message: Received) -> HeldWork | None:
        """Turn a received message into a held work item, or drop/poison it."""
        hub = self._hub
        held = self._held.get(message.handle.id)
        if held is not None:  # ours already: it came back after its queue lease
            held.handle = message.handle
            held.since = time.monotonic()
            held.dequeue_count = max(held.dequeue_count, message.dequeue_count - 1)
            return held
        body = message.body
        try:
            invocation = await self.invocation_of(body) if body else None
        except (KeyError, TypeError, ValueError, ResourceNotFoundError):
            invocation = None
        if invocation is None:
            await hub.poison_undecodable(
                message,
                queue=hub.names.work_queue,
                logical_queue="activities",
                reason="undecodable work item message",
            )
            return None
        row_key = work_key(invocation.execution_id, invocation.task_id)
        if (invocation.instance_id, row_key) in self._dead or self._holds(
            invocation.instance_id, row_key
        ):
            # Gone, or a second message for a task held here already (a put whose
            # response was lost and was sent again): this one must not run too.
            await hub.queues.delete(message.handle)
            return None
        # A message that waited long may be a copy whose task is done; check its row.
        waited = hub.now() - message.inserted_on > hub.lease / 2
        redelivered = message.dequeue_count > 1 or bool(body and body.get("re")) or waited
        if redelivered:
            row = await self._scheduled_row(invocation.instance_id, row_key)
            if row is None:
                await self._drop_completed(message, invocation.instance_id)
                return None
            if row.get("Heartbeat") is not None:  # saved by the delivery that died
                invocation = dataclasses.replace(invocation, heartbeat_details=row["Heartbeat"])
        held = HeldWork(
            message.handle, invocation, row_key, message.text, message.dequeue_count - 1
        )
        self._held[message.handle.id] = held
        return held

    async def _scheduled_row(self, instance_id: str, row_key: str) -> dict[str, Any] | None:
        """The work row (its heartbeat details) if the task is still scheduled, else ``None``."""
        table = self._hub.resources.table
        try:
            return dict(
                await retrying(
                    lambda: table.get_entity(instance_id, row_key, select=["RowKey", "Heartbeat"]),
                    what="check a work item",
                )
            )
        except ResourceNotFoundError:
            return None

    async def _drop_completed(self, message: Received, instance_id: str) -> None:
        """A redelivered item whose result is recorded: delete it, wake its instance."""
        hub = self._hub
        if instance_id not in self._sessions:
            # Its completion may have died before sending the wake-up; one more is harmless.
            await hub.queues.put(
                hub.control_queue_of(instance_id), {"h": instance_id}, delay=timedelta(0)
            )
        await hub.queues.delete(message.handle)

    async def _hand_out(
        self, held: HeldWork, owner: str, lease: timedelta, now: datetime, *, fresh: bool = False
    ) -> bool:
        hub = self._hub
        if held.dequeue_count >= hub.max_dequeue_count:
            reason = f"delivered {held.dequeue_count} times without completing"
            await self._poison(held, reason)
            return False
        recent = held.dequeue_count == 0 and held.age() < lease / 2
        # Handed out again, or held a while: keep the queue from giving it to another.
        hide = not fresh and not recent and held.handle is not None
        if hide and held.handle is not None and not await hub.queues.hide(held.handle, lease):
            self._held.pop(held.key, None)  # someone else received it meanwhile
            return False
        held.dequeue_count += 1
        held.visible_at = None
        self._tokens += 1
        held.lease = Lease(f"{held.key}|{self._tokens}", owner, now + lease)
        held.since = time.monotonic()
        return True

    @staticmethod
    def _item(held: HeldWork) -> ActivityWorkItem:
        assert held.lease is not None
        return ActivityWorkItem(held.invocation, held.lease.token, held.dequeue_count)

    def _holding(self, item: ActivityWorkItem) -> HeldWork | None:
        """The held message, if ``item``'s lease is still the current one."""
        held = self._held.get(item.lock_token.split("|", 1)[0])
        if held is None or held.lease is None or held.lease.token != item.lock_token:
            return None
        return held

    async def _poison(self, held: HeldWork, reason: str) -> None:
        hub = self._hub
        invocation = held.invocation
        await hub.record_poison(
            queue=hub.names.work_queue,
            logical_queue="activities",
            instance_id=invocation.instance_id,
            body=invocation.to_json(),
            reason=reason,
            dequeue_count=held.dequeue_count,
            extra={
                "execution_id": invocation.execution_id,
                "task_id": str(invocation.task_id),
                "name": invocation.name,
            },
        )
        delete: Op = ("delete", {"PartitionKey": invocation.instance_id, "RowKey": held.row_key})
        await hub.submit_batches([delete], what="drop a poisoned work item")
        session = self._sessions.get(invocation.instance_id)
        if session is not None:
            session.outstanding.pop(held.row_key, None)
        self._held.pop(held.key, None)
        if held.handle is not None:
            await hub.queues.delete(held.handle)

    # -- finishing ----------------------------------------------------------------

    async def complete(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each current result to its inbox, delete its work item; drop stale ones."""
        by_instance: dict[str, list[tuple[HeldWork, ActivityResult]]] = {}
        for result in results:
            held = self._holding(result.item)
            if held is not None:
                by_instance.setdefault(held.invocation.instance_id, []).append((held, result))
        await asyncio.gather(*(self._complete_instance(i, e) for i, e in by_instance.items()))

    async def _complete_instance(
        self, instance_id: str, entries: list[tuple[HeldWork, ActivityResult]]
    ) -> None:
        done = [held for held, _ in entries]
        hub = self._hub
        session = self._sessions.get(instance_id)
        if session is not None and hub.is_worker and trusted(hub, session):
            entries = defer(hub, session, entries)
        for start in range(0, len(entries), PAIRS_PER_BATCH):
            chunk = entries[start : start + PAIRS_PER_BATCH]
            await complete_chunk(hub, self._sessions, instance_id, chunk)
        handles = [held.handle for held in done if held.handle is not None]
        await asyncio.gather(*(hub.queues.delete(handle) for handle in handles))
        for held in done:
            self._held.pop(held.key, None)

    async def abandon(self, item: ActivityWorkItem, reason: str, retry_after: timedelta) -> None:
        """Release a work item for a retry after ``retry_after``, or poison it."""
        hub = self._hub
        held = self._holding(item)
        if held is None:
            return
        if held.dequeue_count >= hub.max_dequeue_count:
            await self._poison(held, reason)
            return
        held.lease = None
        held.visible_at = hub.now() + retry_after
        if held.handle is not None:
            await hub.queues.hide(held.handle, max(retry_after, timedelta(seconds=1)))
        if retry_after <= timedelta(0):
            hub.wake()

    async def renew(
        self, item: ActivityWorkItem, lease: timedelta, heartbeat: str | None = None
    ) -> None:
        """Extend the lease if this worker still holds the item; save heartbeat details."""
        held = self._holding(item)
        if held is None or held.lease is None:
            return
        held.lease.expires_at = self._hub.now() + lease
        if heartbeat is not None:
            held.invocation = dataclasses.replace(held.invocation, heartbeat_details=heartbeat)
            await self._save_heartbeat(held, heartbeat)
        if held.guard is not None:
            await self._hub.queues.hide(held.guard, lease + GUARD_SLACK)
        if held.handle is None or await self._hub.queues.hide(held.handle, lease):
            held.since = time.monotonic()

    async def _save_heartbeat(self, held: HeldWork, heartbeat: str) -> None:
        """Keep the details on the work row: whoever runs the item next reads them there."""
        entity = {
            "PartitionKey": held.invocation.instance_id,
            "RowKey": held.row_key,
            "Heartbeat": heartbeat,
        }
        table = self._hub.resources.table
        # Not found: the task's result is recorded, nobody will run it again.
        with contextlib.suppress(ResourceNotFoundError):
            await retrying(
                lambda: table.update_entity(entity, mode=UpdateMode.MERGE),
                what="save heartbeat details",
            )

    def has_ready(self, now: datetime) -> bool:
        """Whether a held item could be handed out now (an expired lease, a due retry)."""
        return any(_available(held, now) for held in self._held.values())


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def _available(held: HeldWork, now: datetime) -> bool:
    """Not leased (or the lease expired) and not waiting for a retry."""
    if held.lease is not None and not held.lease.expired(now):
        return False
    return held.visible_at is None or held.visible_at <= now
