"""The instances this store object owns (its sessions), and how they start and end.

A session is opened by whoever takes an instance: ``_starts`` (a worker's own
start), ``_wakeups`` (a takeover), ``_delivered`` (a host invocation). From
then on ``Sessions`` keeps it: it re-reads the inbox when other processes
wrote to it (``refresh``), renews the row's ``OwnedUntil`` while work is left
here and ends the session when none is (``upkeep``), resolves a failed
conditional write (``resolve``), and on the way out leaves one wake-up for
whatever is still pending (``release_guard``) or forgets the instance when
someone else has it (``drop``). Results held in memory for a session that goes
are written as inbox rows (``record_held``).

It also sends the wake-ups that do not belong to a session (``wake_up_at``:
a delayed control message, or a row of the timer index if the time is far)
and tells the hub's polls when to look for them (``expect``).

Everything here runs on the store loop; ``_hub`` and ``_timers`` lie below, nothing above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from azure.data.tables import TableTransactionError

from ..._state import OrchestrationStatus
from ._codec import INSTANCE_ROW, history_key, ts
from ._hub import Hub
from ._ops import Op, bump, gone_ok, instance_update
from ._queues import Handle
from ._session import Pending, Session, consumed_rows, live
from ._timers import Timers
from ._transient import status_of

__all__ = ["PAIRS_PER_BATCH", "Sessions", "submit_results"]

log = logging.getLogger("durable_fx.storage.azure")

PAIRS_PER_BATCH = 49
"""Activity results per transaction: a delete and an insert each, plus a touch of the row."""


class Sessions:
    """The session table of one store object and the lifecycle of its sessions."""

    def __init__(self, hub: Hub, timers: Timers) -> None:
        self._hub = hub
        self._timers = timers
        self._table: dict[str, Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the table ------------------------------------------------------------------

    def get(self, iid: str) -> Session | None:
        return self._table.get(iid)

    def __contains__(self, iid: object) -> bool:
        return iid in self._table

    def all(self) -> list[Session]:
        """Every session, as a list (the table may change while the caller awaits)."""
        return list(self._table.values())

    def add(self, session: Session) -> None:
        """Keep a session this store object just took (replacing any older one)."""
        self._table[session.instance_id] = session

    def holds(self, session: Session) -> bool:
        """Whether ``session`` is still the current one of its instance."""
        return self._table.get(session.instance_id) is session

    def has_ready(self, now: datetime) -> bool:
        """Whether some session could be locked now."""
        return any(s.lockable(now) and s.visible(now) for s in self._table.values())

    def next_dues(self, now: datetime) -> list[datetime]:
        """When messages of sessions that are not visible yet become so."""
        return [d for s in self._table.values() if (d := s.next_due(now)) is not None]

    # -- keeping sessions ---------------------------------------------------------------

    async def refresh(self, session: Session, *, released: bool = False) -> None:
        """Pick up inbox rows that other processes added to an instance we own.

        With ``released`` the session was just ended by our own commit: read
        the rows all the same, so that a wake-up is left for them.
        """
        hub = self._hub
        partition = await hub.read_partition(session.instance_id)
        session.stale = False
        row = partition.instance
        if row is None:
            self.drop(session.instance_id)
            return
        ours = released or row.get("Owner") == hub.owner_id
        if not ours or int(row.get("Version", 0)) != session.version:
            self.drop(session.instance_id)  # taken over: it is someone else's now
            return
        if session.lock is not None and not session.lock.expired(hub.now()):
            session.stale = True  # an episode started meanwhile: look again after it
            return
        session.etag = str(row["etag"])
        hidden = partition.hidden_tags()
        for r in partition.inbox:
            if live(r, hidden) and r["RowKey"] not in session.pending:
                pending = await hub.pending_from_row(r)
                session.pending[pending.row_key] = pending

    async def upkeep(self, lease: timedelta) -> None:
        """Renew sessions that still have work here; end those that have none."""
        now = self._hub.now()
        for session in self.all():
            if session.lock is not None and not session.lock.expired(now):
                continue
            if session.stale:
                # Rows may have landed that the session does not know of (a result whose
                # response was lost): read them before deciding the session has nothing left.
                await self.refresh(session)
                if not self.holds(session):
                    continue
            waiting = bool(session.outstanding) and not session.record.status.is_terminal
            if not waiting and not session.visible(now) and session.lock is None:
                await self.end(session)
            elif session.owned_until - now < lease / 2:
                await self.own_until(session, self._hub.now() + lease)

    async def own_until(self, session: Session, until: datetime) -> bool:
        """Push the row's ``OwnedUntil`` out; False (and the session dropped) if it was lost."""
        update = {"Owner": self._hub.owner_id, "OwnedUntil": ts(until)}
        if not await self._merge_owned(session, update):
            return False
        session.owned_until = until
        return True

    async def end(self, session: Session, *, not_before: timedelta = timedelta(0)) -> None:
        """Give up ownership; leave the guard as the wake-up for the next pending message.

        ``not_before`` delays that wake-up at least so long (an instance passed
        on to a worker of another version: not straight back to this one).
        """
        # Marked before the first await: a lock call interleaving here (another worker's
        # stream) must not lock a session this one is about to forget.
        session.ending = True
        if await self._merge_owned(session, {"Owner": ""}):
            await self.release_guard(session, not_before=not_before)

    async def _merge_owned(self, session: Session, values: dict[str, Any]) -> bool:
        """A conditional merge on an owned instance row; False (and the session dropped) if lost."""
        hub = self._hub
        iid = session.instance_id
        for _ in range(5):
            token = hub.token()
            update = {"PartitionKey": iid, "RowKey": INSTANCE_ROW, "Token": token, **values}
            try:
                results = await hub.submit(
                    [instance_update(update, session.etag, merge=True)], what=f"update {iid}"
                )
                session.etag = str(results[0]["etag"])
                return True
            except TableTransactionError:
                outcome = await self.resolve(session, token)
                if outcome == "applied":
                    return True
                if outcome == "lost":
                    return False
                # "retry", "changed": the merge does not touch the status; try again.
        return False

    async def resolve(
        self, session: Session, token: str
    ) -> Literal["applied", "retry", "changed", "lost"]:
        """After a failed conditional write: whether it applied, may be retried, or is lost.

        ``changed``: still ours, but a client changed the status under us (a
        rewind accepted for the FAILED instance): a write planned from the old
        status must not be retried over it.
        """
        hub = self._hub
        row = await hub.read_instance(session.instance_id)
        if row is not None and row.get("Token") == token:
            session.etag = str(row["etag"])
            return "applied"
        if (
            row is not None
            and row.get("Owner") == hub.owner_id
            and int(row.get("Version", 0)) == session.version
        ):
            session.etag = str(row["etag"])
            session.stale = True  # someone added messages: re-read them before the next lock
            status = OrchestrationStatus(row.get("Status", session.record.status.value))
            if status is not session.record.status:
                session.record = dataclasses.replace(session.record, status=status)
                return "changed"
            return "retry"
        if self.holds(session):
            # Only this session is lost: a newer one (this process took the instance
            # over again meanwhile) answers for its own writes.
            self.drop(session.instance_id)
        return "lost"

    async def poison(self, session: Session, pending: Pending, reason: str) -> None:
        """Take a message that keeps failing out of the session and into the poison list."""
        hub = self._hub
        if session.pending.get(pending.row_key) is not pending:
            return  # another call on this loop poisoned (or consumed) it meanwhile
        # Out of the session before the first await: a lock running while this
        # writes (an abandon released the instance) must not poison it a second time.
        del session.pending[pending.row_key]
        extra = {"message_id": pending.row_key, "key": pending.key}
        if pending.execution_id is not None:
            extra["execution_id"] = pending.execution_id
        try:
            await hub.record_poison(
                queue=hub.control_queue_of(session.instance_id),
                logical_queue="orchestrations",
                instance_id=session.instance_id,
                body=pending.event_json,
                reason=reason,
                dequeue_count=pending.dequeue_count,
                extra=extra,
            )
            await hub.submit_tolerant(
                consumed_rows(session.instance_id, pending),
                tolerate=gone_ok,
                what="delete a poisoned message",
            )
        except BaseException:
            session.pending.setdefault(pending.row_key, pending)  # still there: try again later
            raise

    # -- ending sessions ----------------------------------------------------------------

    async def release_guard(
        self, session: Session, *, not_before: timedelta = timedelta(0)
    ) -> None:
        """Forget an ended session and leave one wake-up for what is still pending."""
        hub = self._hub
        self._table.pop(session.instance_id, None)
        guard = session.guard
        if guard is not None and session.hosted:
            # A host invocation's guard means "it died": it never serves as a wake-up,
            # and it goes last, once what replaces it is written.
            session.guard = None
            await self.release_guard(session, not_before=not_before)
            await hub.queues.delete(guard)
            return
        now = hub.now()
        log.debug("end session %s (%d pending)", session.instance_id, len(session.pending))
        held = _held_results(session)
        if held:
            await self.record_held(session.instance_id, held)
            for pending in held:
                session.pending.pop(pending.row_key, None)
        # Messages may have arrived while the releasing commit was in flight: any
        # pending message, due or not, keeps a wake-up in the queue.
        due = min((p.visible_at for p in session.pending.values()), default=None)
        # A far timer is indexed before the guard goes: the guard covers a crash between.
        if await self._timers.add_if_far(session.instance_id, due):
            due = None
        if due is None:
            if guard is not None:
                await hub.queues.delete(guard)
            return
        delay = max(due - now, not_before, timedelta(0))
        if guard is None or not await hub.queues.hide(guard, delay):
            await hub.queues.put(
                hub.control_queue_of(session.instance_id), {"h": session.instance_id}, delay=delay
            )
        self.expect(session.instance_id, delay)

    def drop(self, iid: str) -> None:
        """Forget an instance locally (someone else owns it now, or it is gone)."""
        session = self._table.pop(iid, None)
        if session is None:
            return
        # Deleting the guard could strand that someone; let it expire instead.
        session.guard = None
        held = _held_results(session)
        if held:
            self.spawn(self._record_held_quietly(iid, held))

    async def _record_held_quietly(self, iid: str, held: list[Pending]) -> None:
        try:
            await self.record_held(iid, held)
        except Exception:  # their work rows remain: the instance's taker re-runs them
            log.warning("could not record the results held for %s", iid, exc_info=True)

    async def record_held(self, instance_id: str, pendings: Sequence[Pending]) -> None:
        """Write results a session held in memory (see ``_activities``) as its inbox rows.

        For a session that ends or is given up before consuming them; each replaces
        its work row, as any result from another process does.
        """
        hub = self._hub
        await self.wake_now(instance_id)
        for start in range(0, len(pendings), PAIRS_PER_BATCH):
            ops: list[Op] = []
            for pending in pendings[start : start + PAIRS_PER_BATCH]:
                assert pending.work_row is not None
                ops.append(("delete", {"PartitionKey": instance_id, "RowKey": pending.work_row}))
                ops.append(("create", await hub.entity_of(instance_id, pending)))
            await submit_results(hub, instance_id, [*ops, bump(instance_id)])

    # -- wake-ups -------------------------------------------------------------------------

    async def wake_now(self, iid: str) -> None:
        """Leave a wake-up for whoever owns (or will take) the instance."""
        hub = self._hub
        await hub.queues.put(hub.control_queue_of(iid), {"h": iid}, delay=timedelta(0))
        self.expect(iid, timedelta(0))

    async def wake_up_at(self, iid: str, due: datetime | None) -> Handle | None:
        """Leave ``iid`` a wake-up for ``due`` (now if ``None``); its message, if it has one.

        A far one is a row of the timer index (no message: the alarm sends
        one when it is due); any other is a control message hidden until then.
        Call ``expect_wake_up`` once the rows it wakes for are written.
        """
        if await self._timers.add_if_far(iid, due):
            return None
        hub = self._hub
        return await hub.queues.put(hub.control_queue_of(iid), {"h": iid}, delay=self._until(due))

    async def forget_timers(self, session: Session, dues: Iterable[datetime]) -> None:
        """The instance cancelled its timers at ``dues``: their index rows must not wake it.

        A row stays while another pending message of the instance is due then
        (one row serves every timer of an instance at one time).
        """
        kept = {p.visible_at for p in session.pending.values()}
        for due in set(dues) - kept:
            if self._timers.is_far(due):
                await self._timers.remove(session.instance_id, due)

    def expect_wake_up(self, iid: str, due: datetime | None) -> None:
        """This worker left ``iid`` a wake-up (``wake_up_at``): poll for it when it is due."""
        if not self._timers.is_far(due):
            self.expect(iid, self._until(due))

    def _until(self, due: datetime | None) -> timedelta:
        return timedelta(0) if due is None else max(due - self._hub.now(), timedelta(0))

    def expect(self, iid: str, delay: timedelta) -> None:
        """This process sent ``iid`` a wake-up: poll its queue when it becomes visible."""
        hub = self._hub
        hub.expect_control(iid, delay)
        if hub.is_worker and delay <= timedelta(0):
            hub.wake()

    # -- background work ------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the store loop without waiting for it (``close`` cancels it)."""
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def delete_history_later(self, iid: str, generation: int, count: int) -> None:
        """Drop the rows of a history generation nobody reads any more, in the background."""
        self.spawn(self._delete_history(iid, generation, count))

    async def _delete_history(self, iid: str, generation: int, count: int) -> None:
        """Best effort: a failure leaves rows no reader looks at."""
        if generation < 0 or count <= 0:
            return
        deletes: list[Op] = [
            ("delete", {"PartitionKey": iid, "RowKey": history_key(generation, seq)})
            for seq in range(count)
        ]
        try:
            await self._hub.submit_batches(deletes, what=f"delete old history of {iid}")
        except Exception:
            log.warning("could not delete old history rows of %s (harmless)", iid, exc_info=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def submit_results(hub: Hub, instance_id: str, ops: list[Op]) -> list[str] | None:
    """Submit activity result pairs; returns the work row keys whose results went in.

    A missing work row (404 on its delete) means the result is recorded
    already or the instance was purged: that pair is dropped. A pending
    message with the same key (409) means a copy is delivered already.
    ``None``: the instance is gone (the touch of its row failed).
    """
    remaining = list(ops)
    while any(op[0] == "delete" for op in remaining):
        try:
            await hub.submit(remaining, what=f"record activity results of {instance_id}")
            break
        except TableTransactionError as error:
            index = getattr(error, "index", None)
            status = status_of(error)
            if not isinstance(index, int) or not 0 <= index < len(remaining):
                raise
            failed = remaining[index]
            if failed[0] == "delete" and status == 404:
                del remaining[index : index + 2]  # the pair
            elif failed[0] == "create" and status == 409:
                del remaining[index]
            elif failed[0] == "update" and status == 404:
                return None  # the instance is gone
            else:
                raise
    return [str(op[1]["RowKey"]) for op in remaining if op[0] == "delete"]


def _held_results(session: Session) -> list[Pending]:
    """Activity results the session holds in memory only (no inbox row yet)."""
    return [p for p in session.pending.values() if not p.stored and p.work_row is not None]
