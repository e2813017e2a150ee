"""Wake-ups on the control queue: polling it, and taking instances over.

A wake-up names an instance (``{"h": <instance id>}``); a partition's timer
alarm (``{"p": <partition>}``) wakes its due timers (``_timers``). For an instance this
store owns it only marks the session for a re-read, and one of them stays as
the session's guard. For any other instance the partition is read: an owner
elsewhere whose lease still runs hides the message until then; nothing to do
leaves it hidden until a pending timer that is near (a far one goes to the
timer index, and the message is dropped) or dropped; otherwise the instance is
taken over (one conditional write naming this store its owner and counting a
delivery of what is ready) and what the previous owner committed but may not
have sent (work rows, outbox rows) is sent again. ``_delivered`` takes over
instances the same way for host-delivered messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from azure.data.tables import TableTransactionError

from ._activities import Activities
from ._codec import INSTANCE_ROW, json_list, parse_ts, ts, work_key
from ._hub import Hub
from ._ops import Op, instance_update
from ._queues import Received
from ._session import MAX_MESSAGES_PER_EPISODE, Partition, Pending, Session, live
from ._sessions import Sessions
from ._starts import Starts
from ._timers import UNDECODABLE_ALARM, Timers, alarm_partition

__all__ = ["WakeUps"]

log = logging.getLogger("durable_fx.storage.azure")

_NOT_CREATED_YET = timedelta(seconds=30)
"""How long a wake-up may precede its instance row (a starter writes the message first)."""
_SECOND_LOOK = timedelta(seconds=10)
_LOOK_AGAIN = timedelta(seconds=2)
"""When a fresh wake-up that found nothing looks again."""
_ABORTED_KEPT = 8


class WakeUps:
    """The control queues: polls, wake-ups and takeovers."""

    def __init__(
        self,
        hub: Hub,
        sessions: Sessions,
        activities: Activities,
        timers: Timers,
        starts: Starts,
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities
        self._timers = timers
        self._starts = starts
        self._remote_dues: list[datetime] = []
        """When hidden wake-ups of instances owned by nobody fall due (for ``next_due``)."""

    def take_remote_dues(self) -> list[datetime]:
        """When the wake-ups hidden for instances owned by nobody fall due; emptied by the call."""
        dues, self._remote_dues = self._remote_dues, []
        return dues

    async def poll(self, limit: int, lease: timedelta) -> None:
        """Poll the control queues that are due (see ``ControlPolls``)."""
        polls = self._hub.control_polls
        round_ = polls.due()
        if not round_.queues:
            return
        polled = (self._poll(q, limit, lease) for q in round_.queues)
        outcomes = await asyncio.gather(*polled, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                # The others had their say; the round is not recorded, so it comes again.
                raise outcome
        polls.polled(round_, any(outcomes))

    async def _poll(self, queue: str, limit: int, lease: timedelta) -> bool:
        """Receive and handle one control queue's wake-ups; whether there were any."""
        hub = self._hub
        found = False
        seen: set[str] = set()
        while True:
            received = await hub.queues.receive(queue, limit=32, lease=lease)
            fresh = [r for r in received if r.handle.id not in seen]
            seen.update(r.handle.id for r in received)
            found = found or bool(fresh)
            groups: dict[str, list[Received]] = {}
            woken = 0
            for message in fresh:
                if message.body is not None and "p" in message.body:
                    woken += await self._on_alarm(message)
                    continue
                iid = message.body.get("h") if message.body else None
                if not isinstance(iid, str):
                    await self._poison_hint(message)
                    continue
                groups.setdefault(iid, []).append(message)
            for iid, messages in groups.items():
                try:
                    await self._on_wake_up(iid, messages, lease)
                except Exception:
                    log.exception("handling a wake-up for %s failed; it will come back", iid)
            if woken:
                continue  # the alarm sent wake-ups to this queue: take them now
            if len(received) < 32 or len(seen) >= max(limit, 1) * 4 or not fresh:
                return found

    async def _on_alarm(self, message: Received) -> int:
        """A partition's timer alarm rang: wake the due timers (``_timers``), then drop it.

        Returns how many instances it woke.
        """
        hub = self._hub
        index = alarm_partition(message.body, hub.names.partitions)
        if index is None:
            await hub.poison_undecodable(
                message,
                queue=message.handle.queue,
                logical_queue="orchestrations",
                reason=UNDECODABLE_ALARM,
            )
            return 0
        try:
            woken = await self._timers.ring(index, message.handle.id)
        except Exception:
            log.exception("ringing the timer alarm of partition %02d failed; it rings again", index)
            return 0
        await hub.queues.delete(message.handle)
        return woken

    async def _poison_hint(self, message: Received) -> None:
        await self._hub.poison_undecodable(
            message,
            queue=message.handle.queue,
            logical_queue="orchestrations",
            reason='undecodable control message: expected {"h": <instance id>}',
        )

    async def _on_wake_up(self, iid: str, messages: list[Received], lease: timedelta) -> None:
        hub = self._hub
        session = self._sessions.get(iid)
        if session is not None:
            # New messages may have arrived for an instance we own: re-read before
            # handing it out, and keep one wake-up as the guard.
            session.stale = True
            await self._keep_one_as_guard(session, messages)
            return
        partition = await hub.read_partition(iid)
        row = partition.instance
        now = hub.now()
        log.debug("wake-up for %s: %d rows in its inbox", iid, len(partition.inbox))
        if row is None:
            for message in messages:
                age = now - message.inserted_on
                if age < _NOT_CREATED_YET and not _from_timer(message):
                    await hub.queues.hide(message.handle, timedelta(seconds=1))
                else:
                    await hub.queues.delete(message.handle)
            return
        owner = str(row.get("Owner") or "")
        owned_until = parse_ts(str(row["OwnedUntil"])) if row.get("OwnedUntil") else now
        if owner and owner != hub.owner_id and owned_until > now:
            for message in messages:
                await hub.queues.hide(message.handle, max(owned_until - now, timedelta(seconds=1)))
            return
        hidden = partition.hidden_tags()
        pendings = [await hub.pending_from_row(r) for r in partition.inbox if live(r, hidden)]
        work = [r for r in partition.work if live(r, hidden)]
        outbox = [r for r in partition.outbox if live(r, hidden)]
        visible = [p for p in pendings if p.visible_at <= now]
        if not visible and not work and not outbox:
            keep, extra = messages[0], messages[1:]
            for message in extra:
                await self._discard(message)
            if self._may_precede_its_row(keep):
                # Its message may land in a moment, whatever timers are pending too
                # (an email waiting a day for its receipt gets the receipt).
                await self._look_again(iid, keep)
                return
            due = min((p.visible_at for p in pendings), default=None)
            if due is None:
                await self._discard(keep)
            elif await self._timers.add_if_far(iid, due):
                await hub.queues.delete(keep.handle)
            else:
                self._remote_dues.append(due)
                await hub.queues.hide(keep.handle, due - now)
                self._sessions.expect(iid, due - now)
            return
        session = await self.take_over(partition, row, pendings, lease)
        if session is None:
            return  # someone else got there first; the wake-ups come back after the lease
        await self._keep_one_as_guard(session, messages)
        await self.redispatch(session, work, outbox)

    async def _keep_one_as_guard(self, session: Session, messages: list[Received]) -> None:
        for message in messages:
            if session.guard is None or session.guard.id == message.handle.id:
                session.guard = message.handle
            else:
                await self._discard(message)

    async def _discard(self, message: Received) -> None:
        """Drop a wake-up that found nothing new, unless its message may not have landed yet.

        Senders put the wake-up before writing the row (so a crash between the
        two cannot strand a message); a fresh wake-up therefore gets one more
        look a moment later before it is deleted.
        """
        if self._may_precede_its_row(message):
            await self._hub.queues.hide(message.handle, _LOOK_AGAIN)
        else:
            await self._hub.queues.delete(message.handle)

    def _may_precede_its_row(self, message: Received) -> bool:
        """Whether a wake-up that found nothing may have overtaken its row (sent first)."""
        fresh = message.dequeue_count <= 1 and self._hub.now() - message.inserted_on < _SECOND_LOOK
        return fresh and not _from_timer(message)

    async def _look_again(self, iid: str, message: Received) -> None:
        """Hide ``message`` for the second look, and poll for it then."""
        await self._hub.queues.hide(message.handle, _LOOK_AGAIN)
        self._sessions.expect(iid, _LOOK_AGAIN)

    async def take_over(
        self, partition: Partition, row: dict[str, Any], pendings: list[Pending], lease: timedelta
    ) -> Session | None:
        """Make this store object the instance's owner; count a delivery of what is ready."""
        hub = self._hub
        iid = str(row["PartitionKey"])
        now = hub.now()
        token = hub.token()
        update: dict[str, Any] = {
            "PartitionKey": iid,
            "RowKey": INSTANCE_ROW,
            "Owner": hub.owner_id,
            "OwnedUntil": ts(now + lease),
            "Token": token,
        }
        aborted = json_list(row.get("Aborted"))
        if row.get("Staging"):
            aborted = [*aborted, str(row["Staging"])][-_ABORTED_KEPT:]
            update["Staging"] = ""
            update["Aborted"] = json.dumps(aborted)
        ops: list[Op] = [instance_update(update, str(row["etag"]), merge=True)]
        visible = sorted((p for p in pendings if p.visible_at <= now), key=Pending.order)
        for p in visible[:MAX_MESSAGES_PER_EPISODE]:
            # Persisted before the episode runs, so a message that crashes every
            # worker that takes it still reaches max_dequeue_count.
            counted = {**_key_of(iid, p.row_key), "DequeueCount": p.dequeue_count + 1}
            ops.append(("update", counted, {"mode": "merge"}))
        try:
            results = await hub.submit(ops, what=f"take over instance {iid}")
            etag = str(results[0]["etag"])
        except TableTransactionError:
            again = await hub.read_instance(iid)
            if again is None or again.get("Token") != token:
                return None
            etag = str(again["etag"])
        session = Session(
            record=await hub.codec.instance_record(row),
            etag=etag,
            version=int(row.get("Version", 1)),
            generation=int(row.get("Gen", 0)),
            count=int(row.get("Count", 0)),
            owned_until=now + lease,
            aborted=aborted,
            pending={p.row_key: p for p in pendings},
        )
        self._sessions.add(session)
        return session

    async def redispatch(
        self,
        session: Session,
        work: list[dict[str, Any]],
        outbox: list[dict[str, Any]],
        *,
        resend: bool = True,
        delay: timedelta | None = None,
    ) -> None:
        """Send again what a previous owner committed but may not have delivered.

        ``resend=False``: the queued work items were sent (only those held without
        a message go); ``delay`` holds back the queued ones (default: two leases).
        """
        activities = self._activities
        invocations = [await activities.invocation_from_row(r) for r in work]
        for invocation in invocations:
            session.outstanding[work_key(invocation.execution_id, invocation.task_id)] = invocation
        # Items their scheduler held without a message can have no copy in the queue:
        # they go at once. Others may still be queued, hidden by a dead worker's lease.
        local = [i for i, r in zip(invocations, work, strict=True) if r.get("Local")]
        queued = [i for i, r in zip(invocations, work, strict=True) if not r.get("Local")]
        held = activities.room(len(local)) if self._hub.is_worker else 0
        activities.hold(local[:held])
        await activities.send(local[held:], redelivery=True, delay=timedelta(0))
        if resend:
            await activities.send(queued, redelivery=True, delay=delay)
        if outbox:
            await self._starts.send_outbox(session.instance_id, outbox)


def _from_timer(message: Received) -> bool:
    """Whether a wake-up was sent for a due timer (its instance row must exist already)."""
    return bool(message.body and message.body.get("d"))


def _key_of(iid: str, row_key: str) -> dict[str, Any]:
    return {"PartitionKey": iid, "RowKey": row_key}
