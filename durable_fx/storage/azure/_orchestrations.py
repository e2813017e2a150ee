"""Orchestration work on Azure: starting, messaging, locking and committing episodes.

**Ownership.** A worker that locks an instance takes it over: one
conditional write of the instance row names this store object its owner
until ``OwnedUntil`` (renewed by every commit) and counts one delivery of its
pending messages. While it owns the instance it keeps the row, the ETag and
the pending messages in memory (a *session*), so the next episodes need no
reads, no lock writes and no queue messages: an activity result of this
process joins the session in memory, and the episode consuming it deletes its
work row (see ``_activities``). The session ends, in the same write
as a commit, once nothing is left to wait for here (no activity outstanding,
no message ready); a pending timer then travels as a delayed control message
if it is near, or as a row of the timer index if it is far (``_timers``: the
queues the Functions host scales on must not count parked timers).

**The guard.** Each session holds one hidden control message. If the process
dies, the message becomes visible when the lease runs out and whoever
receives it takes the instance over: it re-reads the partition, re-sends the
activity work items and messages that were committed but not known to be
delivered (the outbox rows), and carries on. Duplicates that this can cause
are harmless: inbox rows are keyed by the message's dedupe key, activity work
items by task, and the replay engine drops results it already has.

**Commit.** An episode is one entity-group transaction on the instance
partition: history rows, deletion of the consumed inbox rows, new outbox rows
(work items, messages for other instances, timers for itself), and the
instance row with If-Match on its ETag. The ETag changes when other writers
touch the row (a message arriving from another process merges a ``Mail``
property), so a failed If-Match is resolved by reading the row: our own
write (``Token``) means it applied, an unchanged ``Version`` with us as the
owner means retry with the new ETag, anything else is a ``ConflictError``.

**Big episodes.** History rows beyond what fits in one transaction (100
operations, 4 MB) are written first: readers only read the first
``Count`` rows of the current generation, so they stay invisible until the
instance row says otherwise. Outbox rows that do not fit are written first
too, tagged with a token that the instance row names as ``Staging``; readers
skip rows so tagged, and the final transaction clears ``Staging``, making them
live in the same write that commits the episode. A crash leaves the token in
``Staging``; whoever takes over moves it to ``Aborted`` so those rows stay
dead. At most 90 inbox messages are handed out per episode, so their
deletions always fit the final transaction.

Starting instances and routing messages live in ``_starts``, the control
queue's wake-ups and takeovers in ``_wakeups``, the commit in ``_commit``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from azure.data.tables import TableTransactionError

from ..._state import OrchestrationStatus
from .._records import (
    EpisodeCommit,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
)
from ._activities import Activities
from ._codec import INSTANCE_ROW, history_key, parse_ts, ts
from ._hub import (
    MAX_MESSAGES_PER_EPISODE,
    Hub,
    Lease,
    Op,
    Pending,
    Session,
    consumed_rows,
    gone_ok,
    instance_update,
    key_of_row,
)
from ._queues import Handle
from ._starts import Starts
from ._timers import Timers
from ._wakeups import WakeUps

__all__ = ["MAX_MESSAGES_PER_EPISODE", "Orchestrations"]

log = logging.getLogger("durable_fx.storage.azure")


class Orchestrations:
    """The orchestration half of the Store protocol, on top of a ``Hub``."""

    def __init__(self, hub: Hub, activities: Activities) -> None:
        self._hub = hub
        self._activities = activities
        self._tasks: set[asyncio.Task[None]] = set()
        self.timers = Timers(hub)
        self.wake_ups = WakeUps(self)
        self.starts = Starts(self)

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self, message: OrchestrationMessage, *, replaceable: frozenset[OrchestrationStatus]
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        await self.starts.create_instance(message, replaceable=replaceable)

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Put a message in a live instance's inbox; False if its key was used already."""
        return await self.starts.deliver(message)

    async def route(self, message: OrchestrationMessage, *, create: bool) -> bool:
        """Deliver a message to its instance's inbox; False if the instance does not exist."""
        return await self.starts.route(message, create=create)

    # -- locking ----------------------------------------------------------------

    async def lock(
        self, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` instances with visible messages (owned ones first)."""
        hub = self._hub
        hub.is_worker = True
        hub.lease = lease
        await self._upkeep(lease)
        await self.wake_ups.poll(limit, lease)
        items = await self._hand_out(owner, limit, lease)
        now = hub.now()
        dues = [d for s in hub.sessions.values() if (d := s.next_due(now)) is not None]
        remote = hub.control_polls.next_expected()
        if remote is not None:
            dues.append(now + timedelta(seconds=remote))
        dues.extend(self.wake_ups.remote_dues)
        self.wake_ups.remote_dues.clear()
        dues.extend(self.timers.dues)
        self.timers.dues.clear()
        return LockBatch(items, min((d for d in dues if d > now), default=None))

    async def _hand_out(
        self, owner: str, limit: int, lease: timedelta
    ) -> list[OrchestrationWorkItem]:
        hub = self._hub
        now = hub.now()
        for session in [s for s in hub.sessions.values() if s.stale and s.lockable(now)]:
            await self._refresh(session)
        ready = [(s.visible(now), s) for s in hub.sessions.values() if s.lockable(now)]
        queue = sorted(((v, s) for v, s in ready if v), key=lambda e: e[0][0].order())
        items: list[OrchestrationWorkItem] = []
        for visible, session in queue:
            if len(items) >= limit:
                break
            spent = [p for p in visible if p.dequeue_count >= hub.max_dequeue_count]
            for p in spent:
                reason = f"delivered {p.dequeue_count} times without a successful episode"
                await self._poison(session, p, reason)
            deliver = [p for p in visible if p not in spent][:MAX_MESSAGES_PER_EPISODE]
            if not deliver or session.instance_id not in hub.sessions:
                continue
            for p in deliver:
                p.dequeue_count += 1
            session.lock = Lease(hub.token(), owner, now + lease)
            messages = [p.message() for p in deliver]
            items.append(OrchestrationWorkItem(session.record, messages, session.lock.token))
        return items

    async def _refresh(self, session: Session, *, released: bool = False) -> None:
        """Pick up inbox rows that other processes added to an instance we own.

        With ``released`` the session was just ended by our own commit: read
        the rows all the same, so that a wake-up is left for them.
        """
        hub = self._hub
        partition = await hub.read_partition(session.instance_id)
        session.stale = False
        row = partition.instance
        if row is None:
            self._drop_session(session.instance_id)
            return
        ours = released or row.get("Owner") == hub.owner_id
        if not ours or int(row.get("Version", 0)) != session.version:
            self._drop_session(session.instance_id)  # taken over: it is someone else's now
            return
        if session.lock is not None and not session.lock.expired(hub.now()):
            session.stale = True  # an episode started meanwhile: look again after it
            return
        session.etag = str(row["etag"])
        hidden = partition.hidden_tags()
        for r in partition.inbox:
            if _live(r, hidden) and r["RowKey"] not in session.pending:
                pending = await hub.pending_from_row(r)
                session.pending[pending.row_key] = pending

    async def _poison(self, session: Session, pending: Pending, reason: str) -> None:
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

    # -- sessions -----------------------------------------------------------------

    async def _upkeep(self, lease: timedelta) -> None:
        """Renew sessions that still have work here; end those that have none."""
        hub = self._hub
        now = hub.now()
        for session in list(hub.sessions.values()):
            if session.lock is not None and not session.lock.expired(now):
                continue
            if session.stale:
                # Rows may have landed that the session does not know of (a result whose
                # response was lost): read them before deciding the session has nothing left.
                await self._refresh(session)
                if hub.sessions.get(session.instance_id) is not session:
                    continue
            waiting = bool(session.outstanding) and not session.record.status.is_terminal
            if not waiting and not session.visible(now) and session.lock is None:
                await self._end_session(session)
            elif session.owned_until - now < lease / 2:
                await self._renew(session, lease)

    async def _renew(self, session: Session, lease: timedelta) -> None:
        await self._own_until(session, self._hub.now() + lease)

    async def _own_until(self, session: Session, until: datetime) -> bool:
        """Push the row's ``OwnedUntil`` out; False (and the session dropped) if it was lost."""
        update = {"Owner": self._hub.owner_id, "OwnedUntil": ts(until)}
        if not await self._merge_owned(session, update):
            return False
        session.owned_until = until
        return True

    async def _end_session(self, session: Session) -> None:
        """Give up ownership; leave the guard as the wake-up for the next pending message."""
        if await self._merge_owned(session, {"Owner": ""}):
            await self._release_guard(session)

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
                outcome = await self._resolve(session, token)
                if outcome == "applied":
                    return True
                if outcome == "lost":
                    return False
        return False

    async def _resolve(self, session: Session, token: str) -> Literal["applied", "retry", "lost"]:
        """After a failed conditional write: did it apply, may it be retried, or is it lost?"""
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
            return "retry"
        if hub.sessions.get(session.instance_id) is session:
            # Only this session is lost: a newer one (this process took the instance
            # over again meanwhile) answers for its own writes.
            self._drop_session(session.instance_id)
        return "lost"

    async def _release_guard(self, session: Session) -> None:
        hub = self._hub
        hub.sessions.pop(session.instance_id, None)
        guard = session.guard
        if guard is not None and session.hosted:
            # A host invocation's guard means "it died": it never serves as a wake-up,
            # and it goes last, once what replaces it is written.
            session.guard = None
            await self._release_guard(session)
            await hub.queues.delete(guard)
            return
        now = hub.now()
        log.debug("end session %s (%d pending)", session.instance_id, len(session.pending))
        held = _held_results(session)
        if held:
            await self._activities.record_held(session.instance_id, held)
            for pending in held:
                session.pending.pop(pending.row_key, None)
        # Messages may have arrived while the releasing commit was in flight: any
        # pending message, due or not, keeps a wake-up in the queue.
        due = min((p.visible_at for p in session.pending.values()), default=None)
        # A far timer is indexed before the guard goes: the guard covers a crash between.
        if await self.timers.add_if_far(session.instance_id, due):
            due = None
        if due is None:
            if guard is not None:
                await hub.queues.delete(guard)
            return
        delay = max(due - now, timedelta(0))
        if guard is None or not await hub.queues.hide(guard, delay):
            await hub.queues.put(
                hub.control_queue_of(session.instance_id), {"h": session.instance_id}, delay=delay
            )
        self._expect(session.instance_id, delay)

    def _drop_session(self, iid: str) -> None:
        """Forget an instance locally (someone else owns it now, or it is gone)."""
        session = self._hub.sessions.pop(iid, None)
        if session is None:
            return
        # Deleting the guard could strand that someone; let it expire instead.
        session.guard = None
        held = _held_results(session)
        if held:
            self._spawn(self._record_held(iid, held))

    async def _record_held(self, iid: str, held: list[Pending]) -> None:
        try:
            await self._activities.record_held(iid, held)
        except Exception:  # their work rows remain: the instance's taker re-runs them
            log.warning("could not record the results held for %s", iid, exc_info=True)

    async def wake_up_at(self, iid: str, due: datetime | None) -> Handle | None:
        """Leave ``iid`` a wake-up for ``due`` (now if ``None``); its message, if it has one.

        A far one is a row of the timer index (no message: the alarm sends
        one when it is due); any other is a control message hidden until then.
        Call ``expect_wake_up`` once the rows it wakes for are written.
        """
        if await self.timers.add_if_far(iid, due):
            return None
        hub = self._hub
        return await hub.queues.put(hub.control_queue_of(iid), {"h": iid}, delay=self._until(due))

    def expect_wake_up(self, iid: str, due: datetime | None) -> None:
        """This worker left ``iid`` a wake-up (``wake_up_at``): poll for it when it is due."""
        if not self.timers.is_far(due):
            self._expect(iid, self._until(due))

    def _until(self, due: datetime | None) -> timedelta:
        return timedelta(0) if due is None else max(due - self._hub.now(), timedelta(0))

    def _expect(self, iid: str, delay: timedelta) -> None:
        """This process sent ``iid`` a wake-up: poll its queue when it becomes visible."""
        hub = self._hub
        hub.expect_control(iid, delay)
        if hub.is_worker and delay <= timedelta(0):
            hub.wake()

    # -- committing -------------------------------------------------------------

    async def commit(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version."""
        from ._commit import commit_episode

        return await commit_episode(self, item, commit)

    async def abandon(
        self, item: OrchestrationWorkItem, reason: str, retry_after: timedelta
    ) -> None:
        """Release a lock; its messages come back after ``retry_after`` or are poisoned."""
        hub = self._hub
        session = hub.sessions.get(item.instance.instance_id)
        if session is None or session.lock is None or session.lock.token != item.lock_token:
            return  # someone else owns the instance now; its messages are theirs
        session.lock = None
        now = hub.now()
        ops: list[Op] = []
        for message in item.messages:
            pending = session.pending.get(message.message_id)
            if pending is None:
                continue
            if pending.dequeue_count >= hub.max_dequeue_count:
                await self._poison(session, pending, reason)
                continue
            pending.visible_at = now + retry_after
            if not pending.stored:
                continue  # held in memory: nothing to write
            values = {"VisibleAt": ts(pending.visible_at), "DequeueCount": pending.dequeue_count}
            ops.append(("update", {**_key_of(session.instance_id, pending.row_key), **values},
                        {"mode": "merge"}))  # fmt: skip
        if ops:
            await hub.submit_tolerant(ops, tolerate=gone_ok, what="release messages")
        if retry_after <= timedelta(0):
            hub.wake()

    async def renew(self, item: OrchestrationWorkItem, lease: timedelta) -> None:
        """Extend a lock that ``item`` still holds, with the ownership that backs it.

        The lock lives in this process, which is enough for its other callers;
        other processes go by the row's ``OwnedUntil`` (a takeover needs it
        past), so that is pushed out as well: one conditional merge, which
        fails if the instance was taken over, and then the lock stays lost.
        The guard message is left as it is, as for any session renewed in
        ``_upkeep``: a process that receives it early reads the row and hides
        it until ``OwnedUntil``. That costs the other process a read and a hide
        once per lease, and only while an episode outlives its lease; hiding
        the guard here would cost a request on every renewal.
        """
        hub = self._hub
        iid = item.instance.instance_id
        session = hub.sessions.get(iid)
        if session is None or not _holds(session, item.lock_token):
            return  # committed, abandoned or taken over: nothing of ours to renew
        until = hub.now() + lease
        if session.owned_until < until and not await self._own_until(session, until):
            return
        lock = session.lock
        # The merge awaited: the episode may have been committed or dropped meanwhile.
        if lock is not None and lock.token == item.lock_token and hub.sessions.get(iid) is session:
            lock.expires_at = max(lock.expires_at, until)

    # -- delivering ---------------------------------------------------------------

    async def _deliver(self, iid: str, rows: list[dict[str, Any]]) -> None:
        """Deliver committed outbox rows in order, then delete them."""
        hub = self._hub
        for row in sorted(rows, key=lambda r: str(r["RowKey"])):
            message = await self.message_from_row(row)
            try:
                await self.route(message, create=True)
            except Exception:
                log.exception("delivering a message from %s to %s failed", iid, message.instance_id)
                raise
        deletes: list[Op] = [("delete", key_of_row(r)) for r in rows]
        await hub.submit_batches(deletes, what=f"clear delivered messages of {iid}")

    async def message_from_row(self, row: dict[str, Any]) -> OrchestrationMessage:
        from ..._history import HISTORY_EVENT

        text = await self._hub.codec.get_text(row, "Event") or "{}"
        visible = row.get("VisibleAt")
        return OrchestrationMessage(
            instance_id=str(row["Target"]),
            event=HISTORY_EVENT.validate_json(text),
            execution_id=row.get("ExecutionId"),
            visible_at=parse_ts(str(visible)) if visible else None,
            key=str(row["Key"]),
        )

    async def deliver(self, iid: str, rows: list[dict[str, Any]]) -> None:
        await self._deliver(iid, rows)

    async def resolve(self, session: Session, token: str) -> Literal["applied", "retry", "lost"]:
        return await self._resolve(session, token)

    async def release_guard(self, session: Session) -> None:
        await self._release_guard(session)

    async def refresh(self, session: Session, *, released: bool) -> None:
        await self._refresh(session, released=released)

    def drop_session(self, iid: str) -> None:
        self._drop_session(iid)

    def expect(self, iid: str, delay: timedelta) -> None:
        self._expect(iid, delay)

    @property
    def hub(self) -> Hub:
        return self._hub

    @property
    def activities(self) -> Activities:
        return self._activities

    # -- housekeeping -------------------------------------------------------------

    def spawn(self, work: Any) -> None:
        self._spawn(work)

    def _spawn(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete_history(self, iid: str, generation: int, count: int) -> None:
        """Best effort: drop the rows of a history generation nobody reads any more."""
        if generation < 0 or count <= 0:
            return
        deletes: list[Op] = [
            ("delete", _key_of(iid, history_key(generation, seq))) for seq in range(count)
        ]
        try:
            await self._hub.submit_batches(deletes, what=f"delete old history of {iid}")
        except Exception:
            log.warning("could not delete old history rows of %s (harmless)", iid, exc_info=True)

    def delete_history_later(self, iid: str, generation: int, count: int) -> None:
        self._spawn(self._delete_history(iid, generation, count))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _holds(session: Session, token: str) -> bool:
    """Whether ``token`` names the session's current lock (expired or not)."""
    return session.lock is not None and session.lock.token == token


def _held_results(session: Session) -> list[Pending]:
    """Activity results the session holds in memory only (no inbox row yet)."""
    return [p for p in session.pending.values() if not p.stored and p.work_row is not None]


def _live(row: dict[str, Any], hidden: set[str]) -> bool:
    """Whether a row is committed (not staged by an unfinished or aborted episode)."""
    tag = row.get("Tag")
    return not tag or tag not in hidden


def _key_of(iid: str, row_key: str) -> dict[str, Any]:
    return {"PartitionKey": iid, "RowKey": row_key}
