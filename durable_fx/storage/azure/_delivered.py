"""Work the Functions host delivers: one control or work-item message per invocation.

Under the host nobody polls: the host receives each message, hides it while
the function runs, deletes it on success and poisons it after too many
failures. The control-queue function hands its wake-up here: the instance is
taken over as a worker would take it over (``_wakeups``), its ready
episodes run one after another, and ``release`` ends the session in the same
invocation, leaving a wake-up for anything still pending (a timer: a delayed
message if it is near, a row of the timer index if it is far, see ``_timers``).
A partition's timer alarm is delivered here too: it wakes the due timers.
Nothing stays owned between invocations, so an instance never waits for a
process that may have been scaled away.

The host's message is never hidden or deleted here: where the store's own
polling would hide a wake-up for later (the instance is busy, its row has not
landed yet, a near timer is not due), a delayed copy is sent instead and the
host deletes the original.

An invocation that fails leaves nothing behind in the process: its session
is dropped (a leftover one is never taken for "busy"), and the instance row,
which still names this owner, tells the next taker to send the committed
work again (an invocation that ends well clears the owner after its sends).
When storage itself fails, the trigger hands a delayed copy of its message on
(``hand_on``) and succeeds, so a storage outage never walks a message to the
host's poison queue.

The work-item function hands its message here to be admitted exactly as the
store's own receive admits one: malformed messages are poisoned with their
reason, and a redelivered item whose result is recorded is not run again.
Its handle is marked ``hosted``, so none of that deletes or hides it: the
function returns and the host deletes the message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from ..._errors import StoreBusyError
from .._delivered import DeliveredMessage
from .._records import ActivityWorkItem, OrchestrationWorkItem
from ._activities import Activities
from ._codec import json_object, parse_ts, ts
from ._hub import Hub
from ._queues import Handle, Received
from ._session import GUARD_SLACK, MAX_MESSAGES_PER_EPISODE, Lease, Pending, live
from ._sessions import Sessions
from ._timers import UNDECODABLE_ALARM, Timers, alarm_partition
from ._transient import is_transient
from ._wakeups import WakeUps

__all__ = ["Delivered"]

log = logging.getLogger("durable_fx.storage.azure")

_NOT_CREATED_YET = timedelta(seconds=30)
"""How long a wake-up may precede its instance row (a starter writes the message first)."""
_SECOND_LOOK = timedelta(seconds=10)
_BUSY_RETRY = timedelta(seconds=1)
_BUSY_RETRY_MAX = timedelta(seconds=2)
_RESEND_AFTER = timedelta(seconds=5)
"""Re-sent work waits this long: if its first message was sent and is visible, it runs first."""
_HAND_ON_PATIENCE = timedelta(minutes=5)
"""How long an invocation keeps trying to hand its message on while storage is down."""
_HAND_ON_MAX_DELAY = 60


class Delivered:
    """The ``DeliveredWork`` half of the Azure store, on the store's loop."""

    def __init__(
        self,
        hub: Hub,
        sessions: Sessions,
        activities: Activities,
        timers: Timers,
        wake_ups: WakeUps,
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities
        self._timers = timers
        self._wake_ups = wake_ups
        self._accepted: set[str] = set()
        """Instances an invocation here accepted and has not released yet (the busy ones)."""

    # -- control messages -------------------------------------------------------------

    async def accept_wake_up(self, message: DeliveredMessage, lease: timedelta) -> str | None:
        """Own the instance a wake-up names if it has work now; else leave a wake-up for later."""
        hub = self._hub
        hub.serve_host(lease)
        body = json_object(message.text)
        if body is not None and "p" in body:
            await self._ring(message, body)
            return None
        iid = body.get("h") if body is not None else None
        if not isinstance(iid, str) or not iid:
            reason = 'undecodable control message: expected {"h": <instance id>}'
            await self._poison(message, reason)
            return None
        assert body is not None
        first_seen = _first_seen(body, message)
        if iid in self._accepted or (hub.is_worker and iid in self._sessions):
            # Another invocation in this process runs it now; look again after it.
            await self._wake_later(iid, _BUSY_RETRY)
            return None
        if iid in self._sessions:
            # No invocation holds it: a failed one left it behind. Not busy, just stale.
            self._sessions.drop(iid)
        self._accepted.add(iid)
        try:
            accepted = await self._accept(iid, message, body, first_seen, lease)
        except BaseException:
            accepted = None
            self._sessions.drop(iid)  # or every later wake-up finds it busy
            raise
        finally:
            if accepted is None:
                self._accepted.discard(iid)
        return accepted

    async def _accept(
        self,
        iid: str,
        message: DeliveredMessage,
        body: dict[str, Any],
        first_seen: datetime,
        lease: timedelta,
    ) -> str | None:
        """Take the instance over if it has work now; else leave a wake-up for later."""
        hub = self._hub
        partition = await hub.read_partition(iid)
        row = partition.instance
        now = hub.now()
        if row is None:
            if now - first_seen < _NOT_CREATED_YET and not body.get("d"):
                await self._wake_later(iid, timedelta(seconds=1), first_seen=first_seen)
            return None
        owner = str(row.get("Owner") or "")
        owned_until = parse_ts(str(row["OwnedUntil"])) if row.get("OwnedUntil") else now
        if owner and owner != hub.owner_id and owned_until > now:
            await self._wake_later(iid, min(owned_until - now, _BUSY_RETRY_MAX))
            return None
        # The last invocation may not have sent the work it committed if it died (its
        # guard fired, or the owner it named is still there) or failed (a handed-on
        # copy, a redelivery): send that work again. Otherwise it was all sent.
        unfinished = bool(owner) or _retried(body, message)
        hidden = partition.hidden_tags()
        pendings = [await hub.pending_from_row(r) for r in partition.inbox if live(r, hidden)]
        work = [r for r in partition.work if live(r, hidden)]
        outbox = [r for r in partition.outbox if live(r, hidden)]
        ready = any(p.visible_at <= now for p in pendings)
        lost = body.get("a")
        if isinstance(lost, str) and not ready and not unfinished:
            # A work-item invocation's guard: it died (or its activity ran past the lease
            # without renewing it). Its item goes again if its result is not in yet.
            await self._send_again([r for r in work if r["RowKey"] == lost])
        if not ready and not outbox and not (unfinished and work):
            await self._nothing_ready(iid, pendings, message, body, first_seen)
            return None
        # If this invocation dies, its guard wakes the instance once the lease is over
        # (the host would hold its message for 10 minutes). Ending well deletes it
        # (``_release_guard``).
        guard = await hub.queues.put(
            hub.control_queue_of(iid), {"h": iid, "g": 1}, delay=lease + GUARD_SLACK
        )
        session = await self._wake_ups.take_over(partition, row, pendings, lease)
        if session is None:
            await hub.queues.delete(guard)
            await self._wake_later(iid, _BUSY_RETRY)  # another process took it first
            return None
        session.hosted, session.guard = True, guard
        await self._wake_ups.redispatch(
            session, work, outbox, resend=unfinished, delay=_RESEND_AFTER
        )
        return iid

    async def _send_again(self, rows: list[dict[str, Any]]) -> None:
        """Send the work items of ``rows`` again, at once (they check their row first)."""
        activities = self._activities
        invocations = [await activities.invocation_from_row(r) for r in rows]
        await activities.send(invocations, redelivery=True, delay=timedelta(0))

    async def _nothing_ready(
        self,
        iid: str,
        pendings: list[Pending],
        message: DeliveredMessage,
        body: dict[str, Any],
        first_seen: datetime,
    ) -> None:
        """A wake-up that found no work: keep one for a pending timer, or look once more."""
        hub = self._hub
        now = hub.now()
        # Senders write the wake-up before the row, so a fresh wake-up may have
        # overtaken its message: one more look shortly. That holds when a timer is
        # pending too (an email waiting a day for its receipt gets the receipt), so
        # the look comes first; the pending timers are seen to on the second look. A
        # timer's wake-up and an activity's (its guard) come after the rows: they have
        # nothing to wait for.
        fresh = message.dequeue_count <= 1 and now - first_seen < _SECOND_LOOK
        if fresh and not body.get("s") and not body.get("d") and not body.get("a"):
            await self._wake_later(iid, timedelta(seconds=2), first_seen=first_seen, second=True)
            return
        due = min((p.visible_at for p in pendings), default=None)
        if await self._timers.add_if_far(iid, due):
            return
        if due is not None:
            await self._wake_later(iid, due - now)

    async def _ring(self, message: DeliveredMessage, body: dict[str, Any]) -> None:
        """A partition's timer alarm: wake its due timers (``_timers``); the host deletes it."""
        index = alarm_partition(body, self._hub.names.partitions)
        if index is None:
            await self._poison(message, UNDECODABLE_ALARM)
            return
        await self._timers.ring(index, message.id)

    async def _poison(self, message: DeliveredMessage, reason: str) -> None:
        """Record a control message that can never be handled; the host then deletes it."""
        await self._hub.record_poison(
            queue=_control_queue(self._hub, message),
            logical_queue="orchestrations",
            instance_id=None,
            body=message.text,
            reason=reason,
            dequeue_count=message.dequeue_count,
            extra={"message_id": message.id},
        )

    async def _wake_later(
        self,
        iid: str,
        delay: timedelta,
        *,
        first_seen: datetime | None = None,
        second: bool = False,
    ) -> None:
        body: dict[str, Any] = {"h": iid}
        if first_seen is not None:
            body["t"] = ts(first_seen)
        if second:
            body["s"] = 1
        hub = self._hub
        await hub.queues.put(hub.control_queue_of(iid), body, delay=max(delay, timedelta(0)))

    async def lock_delivered(
        self, iid: str, owner: str, lease: timedelta
    ) -> OrchestrationWorkItem | None:
        """The next episode of an instance accepted here, or ``None`` if nothing is ready."""
        hub = self._hub
        session = self._sessions.get(iid)
        now = hub.now()
        if session is None or not session.lockable(now):
            return None
        if session.stale:
            await self._sessions.refresh(session)
            if not self._sessions.holds(session):
                return None
        visible = session.visible(now)
        spent = [p for p in visible if p.dequeue_count >= hub.max_dequeue_count]
        for p in spent:
            reason = f"delivered {p.dequeue_count} times without a successful episode"
            await self._sessions.poison(session, p, reason)
        deliver = [p for p in visible if p not in spent][:MAX_MESSAGES_PER_EPISODE]
        if not deliver or not self._sessions.holds(session):
            return None
        for p in deliver:
            p.dequeue_count += 1
        session.lock = Lease(hub.token(), owner, now + lease)
        messages = [p.message() for p in deliver]
        return OrchestrationWorkItem(session.record, messages, session.lock.token)

    async def release_delivered(self, iid: str) -> None:
        """End the session of an accepted instance, leaving a wake-up for what is pending.

        If that fails the session is dropped all the same: the row still names this
        owner until its lease runs out, and whoever takes it next re-sends its work.
        """
        try:
            await self._release(iid)
        except BaseException:
            self._sessions.drop(iid)
            raise
        finally:
            self._accepted.discard(iid)

    async def _release(self, iid: str) -> None:
        session = self._sessions.get(iid)
        if session is None:
            return  # its last commit ended it already
        session.lock = None
        if session.stale:
            # Others wrote to it meanwhile: read their messages so the release wakes for them.
            await self._sessions.refresh(session)
            if not self._sessions.holds(session):
                return
        await self._sessions.end(session)
        if self._sessions.holds(session):
            # The row kept changing under the release: forget it here, look again soon.
            self._sessions.drop(iid)
            await self._wake_later(iid, _BUSY_RETRY)

    # -- storage faults -------------------------------------------------------------------

    @staticmethod
    def storage_fault(error: BaseException) -> bool:
        """Whether ``error`` is storage failing for now (throttled, down, unreachable).

        Through the store's calls that arrives as ``StoreBusyError`` (the SDK's
        error is its cause); inside the store as the SDK's error itself.
        """
        return isinstance(error, StoreBusyError) or is_transient(error)

    async def hand_on(self, message: DeliveredMessage) -> None:
        """Send a delayed copy of a message whose invocation storage failed.

        The host then deletes the original, so its delivery count does not climb
        towards the poison queue while storage is down: only messages that can
        never succeed go there. A work item's copy checks its row before it runs
        (its result may be recorded); each copy waits twice as long as the last,
        up to a minute. The send is retried for up to ``_HAND_ON_PATIENCE`` (the
        host keeps the original hidden meanwhile); after that the error is raised
        and the host retries the original.
        """
        hub = self._hub
        body = json_object(message.text)
        work = message.queue == hub.names.work_queue
        queue = hub.names.work_queue if work else _control_queue(hub, message)
        text = message.text
        copies = 0
        if body is not None and isinstance(body.get("h" if not work else "w"), str):
            copies = _int(body.get("r"))
            copy = {**body, "r": copies + 1}
            if work:
                copy["re"] = 1
            else:
                queue = hub.control_queue_of(str(body["h"]))
                copy.setdefault("t", ts(_first_seen(body, message)))
            text = json.dumps(copy, separators=(",", ":"))
        delay = timedelta(seconds=min(2**copies, _HAND_ON_MAX_DELAY))
        give_up = time.monotonic() + _HAND_ON_PATIENCE.total_seconds()
        tries = 0
        while True:
            try:
                await hub.resources.ensure()  # a cold start may meet the outage first
                await hub.queues.put_text(queue, text, delay=delay)
                return
            except Exception as error:
                if not is_transient(error) or time.monotonic() > give_up:
                    raise
                tries += 1
                if tries == 1:
                    log.warning("storage is down; a message of %s goes on once it is back", queue)
            await asyncio.sleep(2.0)

    # -- work items -------------------------------------------------------------------

    async def accept_work_item(
        self, message: DeliveredMessage, owner: str, lease: timedelta
    ) -> ActivityWorkItem | None:
        """Admit a work-item message as the store's own receive would, and lease it."""
        hub = self._hub
        activities = self._activities
        received = Received(
            handle=Handle(hub.names.work_queue, message.id, message.pop_receipt, hosted=True),
            dequeue_count=message.dequeue_count,
            inserted_on=message.inserted_at,
            text=message.text,
            body=json_object(message.text),
        )
        held = await activities._admit(received)
        if held is None:
            return None
        if not await activities._hand_out(held, owner, lease, hub.now(), fresh=True):
            return None
        # If this invocation dies, its guard has the item sent again once the lease is
        # over (the host would hold its message for 10 minutes). Renewed while the
        # activity runs; ending well makes it the instance's wake-up (``_activities``).
        iid = held.invocation.instance_id
        guard = {"h": iid, "a": held.row_key}
        try:
            held.guard = await hub.queues.put(
                hub.control_queue_of(iid), guard, delay=lease + GUARD_SLACK
            )
        except BaseException:
            activities._held.pop(held.key, None)
            raise
        return activities._item(held)

    async def forget_work_item(self, item: ActivityWorkItem) -> None:
        """Forget a work item that failed here; the host redelivers its message."""
        held = self._activities._holding(item)
        if held is None:
            return
        self._activities._held.pop(held.key, None)
        if held.guard is not None:
            try:
                await self._hub.queues.delete(held.guard)  # the redelivery brings a new one
            except Exception:
                log.debug("could not delete a failed work item's guard", exc_info=True)


def _control_queue(hub: Hub, message: DeliveredMessage) -> str:
    """The control queue a delivered message came from (the legacy one if not known)."""
    names = hub.names
    return message.queue if message.queue in names.control_queues else names.legacy_control_queue


def _first_seen(body: dict[str, Any], message: DeliveredMessage) -> datetime:
    """When the first copy of this wake-up was sent (copies carry the original time)."""
    carried = body.get("t")
    if isinstance(carried, str):
        try:
            return parse_ts(carried)
        except ValueError:
            pass
    return message.inserted_at


def _retried(body: dict[str, Any], message: DeliveredMessage) -> bool:
    """A guard, a handed-on copy or a redelivery: the invocation before may have died."""
    return bool(body.get("g") or body.get("r")) or message.dequeue_count > 1


def _int(value: Any) -> int:
    """A small count from a message body (anything else counts as 0)."""
    return value if isinstance(value, int) and 0 <= value < 64 else 0
