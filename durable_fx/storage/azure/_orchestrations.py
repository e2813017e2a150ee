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
no message ready); a pending timer then travels as a delayed control message.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from datetime import datetime, timedelta
from typing import Any, Literal

from azure.data.tables import TableTransactionError

from ..._errors import ConflictError, InstanceExistsError, InstanceNotFoundError
from ..._history import ExecutionStarted
from ..._ids import validate_instance_id
from ..._state import OrchestrationStatus
from .._records import (
    EpisodeCommit,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    new_instance_record,
    started_event,
)
from ._activities import Activities
from ._codec import INSTANCE_ROW, history_key, json_list, parse_ts, ts, work_key
from ._hub import (
    MAX_BATCH,
    Hub,
    Lease,
    Op,
    Partition,
    Pending,
    Session,
    bump,
    consumed_rows,
    instance_update,
)
from ._queues import Received
from ._transient import status_of

__all__ = ["MAX_MESSAGES_PER_EPISODE", "Orchestrations"]

log = logging.getLogger("durable_fx.storage.azure")

MAX_MESSAGES_PER_EPISODE = 90
_NOT_CREATED_YET = timedelta(seconds=30)
"""How long a wake-up may precede its instance row (a starter writes the message first)."""
_ABORTED_KEPT = 8
_SECOND_LOOK = timedelta(seconds=10)


class Orchestrations:
    """The orchestration half of the Store protocol, on top of a ``Hub``."""

    def __init__(self, hub: Hub, activities: Activities) -> None:
        self._hub = hub
        self._activities = activities
        self._tasks: set[asyncio.Task[None]] = set()
        self._remote_dues: list[datetime] = []

    # -- starting and messaging -------------------------------------------------

    async def create_instance(self, message: OrchestrationMessage) -> None:
        """Create (or replace a finished) instance with its start message in the inbox."""
        hub = self._hub
        started = started_event(message)
        iid = validate_instance_id(message.instance_id)
        own = hub.is_worker
        # The wake-up goes first: if this process dies before the row lands, the
        # message finds no instance and is dropped; the other way round, the
        # instance would wait for a wake-up that never comes.
        delay = hub.lease if own else _delay(message, hub)
        guard = await hub.queues.put(hub.names.control_queue, {"h": iid}, delay=delay)
        try:
            session = await self._create(message, started, own=own)
        except BaseException:
            with contextlib.suppress(Exception):
                await hub.queues.delete(guard)
            raise
        if session is None:
            self._expect(delay)
            return
        self._drop_session(iid)
        session.guard = guard
        hub.sessions[iid] = session
        hub.wake()

    async def _create(
        self, message: OrchestrationMessage, started: ExecutionStarted, *, own: bool
    ) -> Session | None:
        hub = self._hub
        iid = message.instance_id
        record = new_instance_record(iid, started)
        inbox, pending = await hub.inbox_entity(message)
        for _ in range(5):
            token = hub.token()
            state = self._owner_state(own, token)
            entity = await hub.codec.instance_entity(record, Version=1, Gen=0, Count=0, **state)
            try:
                results = await hub.submit(
                    [("create", entity), ("upsert", inbox)], what=f"create instance {iid}"
                )
                etag = results[0]["etag"]
                break
            except TableTransactionError as error:
                if status_of(error) != 409 or getattr(error, "index", 0) != 0:
                    raise
            row = await hub.read_instance(iid)
            if row is None:
                continue  # purged in between: try again
            if row.get("Token") == token:
                etag = row["etag"]  # our create applied; its response was lost
                break
            if not OrchestrationStatus(row["Status"]).is_terminal:
                raise InstanceExistsError(iid, str(row["Status"]))
            return await self._replace(message, started, row, inbox, pending, own=own)
        else:
            raise ConflictError(iid, "it kept changing while being created; try again")
        if not own:
            return None
        return self._new_session(record, etag, 1, 0, 0, {pending.row_key: pending})

    async def _replace(
        self,
        message: OrchestrationMessage,
        started: ExecutionStarted,
        row: dict[str, Any],
        inbox: dict[str, Any],
        pending: Pending,
        *,
        own: bool,
    ) -> Session | None:
        """Re-create a finished instance: new generation, old messages and work dropped."""
        hub = self._hub
        iid = message.instance_id
        partition = await hub.read_partition(iid)
        current = partition.instance or row
        version, generation = int(current.get("Version", 1)) + 1, int(current.get("Gen", 0)) + 1
        old = [*partition.inbox, *partition.work, *partition.outbox]
        deletes: list[Op] = [("delete", _key(r)) for r in old if r["RowKey"] != inbox["RowKey"]]
        head, tail = deletes[: MAX_BATCH - 2], deletes[MAX_BATCH - 2 :]
        await hub.submit_batches(tail, what=f"clear the old rows of {iid}")
        record = dataclasses.replace(new_instance_record(iid, started), version=str(version))
        token = hub.token()
        entity = await hub.codec.instance_entity(
            record, Version=version, Gen=generation, Count=0, **self._owner_state(own, token)
        )
        ops: list[Op] = [instance_update(entity, str(current["etag"])), ("upsert", inbox), *head]
        try:
            _applied, results = await hub.submit_tolerant(
                ops, tolerate=_gone_ok, what=f"re-create instance {iid}"
            )
            etag = results[0]["etag"]
        except TableTransactionError:
            again = await hub.read_instance(iid)
            if again is None or again.get("Token") != token:
                raise InstanceExistsError(iid, "re-created by another starter") from None
            etag = again["etag"]
        self._activities.forget_work(iid, [str(r["RowKey"]) for r in partition.work])
        self._drop_session(iid)
        self._spawn(self._delete_history(iid, generation - 1, int(current.get("Count", 0))))
        if not own:
            return None
        return self._new_session(record, etag, version, generation, 0, {pending.row_key: pending})

    async def enqueue(self, message: OrchestrationMessage) -> None:
        """Put a message in an existing instance's inbox (ignored if its key is pending)."""
        iid = validate_instance_id(message.instance_id)
        if not await self.route(message, create=False):
            raise InstanceNotFoundError(iid)

    async def route(self, message: OrchestrationMessage, *, create: bool) -> bool:
        """Deliver a message to its instance's inbox; False if the instance does not exist.

        With ``create`` an ``ExecutionStarted`` creates its missing target (a
        sub-orchestration); an existing target just gets the message.
        """
        hub = self._hub
        iid = message.instance_id
        session = hub.sessions.get(iid)
        log.debug("route %s to %s (owned here: %s)", message.event.kind, iid, session is not None)
        if session is not None:
            return await self._enqueue_owned(session, message)
        if create and isinstance(message.event, ExecutionStarted):
            own = hub.is_worker
            delay = hub.lease if own else _delay(message, hub)
            guard = await hub.queues.put(hub.names.control_queue, {"h": iid}, delay=delay)
            try:
                created = await self._create_missing(message, message.event, own=own)
            except BaseException:
                with contextlib.suppress(Exception):
                    await hub.queues.delete(guard)
                raise
            if created is not None:
                if created is not True:
                    created.guard = guard
                    hub.sessions[iid] = created
                    hub.wake()
                else:
                    self._expect(delay)
                return True
            with contextlib.suppress(Exception):
                await hub.queues.delete(guard)
        delay = _delay(message, hub)
        hint = await hub.queues.put(hub.names.control_queue, {"h": iid}, delay=delay)
        entity, _ = await hub.inbox_entity(message)
        try:
            await hub.submit_tolerant(
                [("create", entity), bump(iid)], tolerate=_exists_ok, what=f"message {iid}"
            )
        except TableTransactionError as error:
            with contextlib.suppress(Exception):
                await hub.queues.delete(hint)
            if status_of(error) == 404:
                return False
            raise
        # A 409 means a message with this key is pending, or that our own first try
        # went in and only its response was lost: keep the wake-up either way.
        self._expect(delay)
        return True

    async def _create_missing(
        self, message: OrchestrationMessage, started: ExecutionStarted, *, own: bool
    ) -> Session | Literal[True] | None:
        """Create ``message``'s target; ``None`` if it exists (the caller then enqueues)."""
        hub = self._hub
        iid = message.instance_id
        record = new_instance_record(iid, started)
        inbox, pending = await hub.inbox_entity(message)
        token = hub.token()
        entity = await hub.codec.instance_entity(
            record, Version=1, Gen=0, Count=0, **self._owner_state(own, token)
        )
        try:
            results = await hub.submit(
                [("create", entity), ("upsert", inbox)], what=f"start sub-orchestration {iid}"
            )
            etag = results[0]["etag"]
        except TableTransactionError as error:
            if status_of(error) != 409:
                raise
            row = await hub.read_instance(iid)
            if row is None or row.get("Token") != token:
                return None
            etag = row["etag"]
        if not own:
            return True
        return self._new_session(record, etag, 1, 0, 0, {pending.row_key: pending})

    async def _enqueue_owned(self, session: Session, message: OrchestrationMessage) -> bool:
        hub = self._hub
        iid = session.instance_id
        entity, pending = await hub.inbox_entity(message)
        try:
            applied, results = await hub.submit_tolerant(
                [("create", entity), bump(iid)], tolerate=_exists_ok, what=f"message {iid}"
            )
        except TableTransactionError as error:
            if status_of(error) == 404:
                self._drop_session(iid)  # purged by another process
                return False
            raise
        if hub.sessions.get(iid) is not session:
            # The session ended while the message was being written: wake whoever is next.
            await hub.queues.put(hub.names.control_queue, {"h": iid}, delay=_delay(message, hub))
            self._expect(_delay(message, hub))
            return True
        session.etag = str(results[-1]["etag"])
        if len(applied) == 2:
            session.pending.setdefault(pending.row_key, pending)
        else:
            session.stale = True  # a duplicate, or our own write whose response was lost
        hub.wake()
        return True

    # -- locking ----------------------------------------------------------------

    async def lock(
        self, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` instances with visible messages (owned ones first)."""
        hub = self._hub
        hub.is_worker = True
        hub.lease = lease
        await self._upkeep(lease)
        if hub.control_poll.due():
            await self._poll(limit, lease)
        items = await self._hand_out(owner, limit, lease)
        now = hub.now()
        dues = [d for s in hub.sessions.values() if (d := s.next_due(now)) is not None]
        remote = hub.control_poll.next_expected()
        if remote is not None:
            dues.append(now + timedelta(seconds=remote))
        dues.extend(self._remote_dues)
        self._remote_dues.clear()
        return LockBatch(items, min((d for d in dues if d > now), default=None))

    async def _poll(self, limit: int, lease: timedelta) -> None:
        hub = self._hub
        found = False
        seen: set[str] = set()
        while True:
            received = await hub.queues.receive(hub.names.control_queue, limit=32, lease=lease)
            fresh = [r for r in received if r.handle.id not in seen]
            seen.update(r.handle.id for r in received)
            found = found or bool(fresh)
            groups: dict[str, list[Received]] = {}
            for message in fresh:
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
            if len(received) < 32 or len(seen) >= max(limit, 1) * 4 or not fresh:
                break
        hub.control_poll.polled(found)

    async def _poison_hint(self, message: Received) -> None:
        hub = self._hub
        await hub.record_poison(
            queue=hub.names.control_queue,
            logical_queue="orchestrations",
            instance_id=None,
            body=message.text,
            reason='undecodable control message: expected {"h": <instance id>}',
            dequeue_count=message.dequeue_count,
            extra={"message_id": message.handle.id},
        )
        await hub.queues.delete(message.handle)

    async def _on_wake_up(self, iid: str, messages: list[Received], lease: timedelta) -> None:
        hub = self._hub
        session = hub.sessions.get(iid)
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
                if age < _NOT_CREATED_YET:
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
        pendings = [await hub.pending_from_row(r) for r in partition.inbox if _live(r, hidden)]
        work = [r for r in partition.work if _live(r, hidden)]
        outbox = [r for r in partition.outbox if _live(r, hidden)]
        visible = [p for p in pendings if p.visible_at <= now]
        if not visible and not work and not outbox:
            keep, extra = messages[0], messages[1:]
            for message in extra:
                await self._discard(message)
            due = min((p.visible_at for p in pendings), default=None)
            if due is None:
                await self._discard(keep)
            else:
                self._remote_dues.append(due)
                await hub.queues.hide(keep.handle, due - now)
                self._expect(due - now)
            return
        session = await self._take_over(partition, row, pendings, lease)
        if session is None:
            return  # someone else got there first; the wake-ups come back after the lease
        await self._keep_one_as_guard(session, messages)
        await self._redispatch(session, work, outbox)

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
        hub = self._hub
        fresh = message.dequeue_count <= 1 and hub.now() - message.inserted_on < _SECOND_LOOK
        if fresh:
            await hub.queues.hide(message.handle, timedelta(seconds=2))
        else:
            await hub.queues.delete(message.handle)

    async def _take_over(
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
        hub.sessions[iid] = session
        return session

    async def _redispatch(
        self, session: Session, work: list[dict[str, Any]], outbox: list[dict[str, Any]]
    ) -> None:
        """Send again what a previous owner committed but may not have delivered."""
        invocations = [await self._activities.invocation_from_row(r) for r in work]
        for invocation in invocations:
            session.outstanding[work_key(invocation.execution_id, invocation.task_id)] = invocation
        # Items their scheduler held without a message can have no copy in the queue:
        # they go at once. Others may still be queued, hidden by a dead worker's lease.
        local = [i for i, r in zip(invocations, work, strict=True) if r.get("Local")]
        queued = [i for i, r in zip(invocations, work, strict=True) if not r.get("Local")]
        held = self._activities.room(len(local)) if self._hub.is_worker else 0
        self._activities.hold(local[:held])
        await self._activities.send(local[held:], redelivery=True, delay=timedelta(0))
        await self._activities.send(queued, redelivery=True)
        if outbox:
            await self._deliver(session.instance_id, outbox)

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
        extra = {"message_id": pending.row_key, "key": pending.key}
        if pending.execution_id is not None:
            extra["execution_id"] = pending.execution_id
        await hub.record_poison(
            queue=hub.names.control_queue,
            logical_queue="orchestrations",
            instance_id=session.instance_id,
            body=pending.event_json,
            reason=reason,
            dequeue_count=pending.dequeue_count,
            extra=extra,
        )
        await hub.submit_tolerant(
            consumed_rows(session.instance_id, pending),
            tolerate=_gone_ok,
            what="delete a poisoned message",
        )
        session.pending.pop(pending.row_key, None)

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
        hub = self._hub
        until = hub.now() + lease
        update = {"Owner": hub.owner_id, "OwnedUntil": ts(until)}
        if await self._merge_owned(session, update):
            session.owned_until = until

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
        self._drop_session(session.instance_id)
        return "lost"

    async def _release_guard(self, session: Session) -> None:
        hub = self._hub
        hub.sessions.pop(session.instance_id, None)
        guard = session.guard
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
        if due is None:
            if guard is not None:
                await hub.queues.delete(guard)
            return
        delay = max(due - now, timedelta(0))
        if guard is None or not await hub.queues.hide(guard, delay):
            await hub.queues.put(hub.names.control_queue, {"h": session.instance_id}, delay=delay)
        self._expect(delay)

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

    def _new_session(
        self,
        record: InstanceRecord,
        etag: str,
        version: int,
        generation: int,
        count: int,
        pending: dict[str, Pending],
    ) -> Session:
        hub = self._hub
        return Session(
            record=record,
            etag=str(etag),
            version=version,
            generation=generation,
            count=count,
            owned_until=hub.now() + hub.lease,
            pending=pending,
        )

    def _owner_state(self, own: bool, token: str) -> dict[str, Any]:
        hub = self._hub
        if not own:
            return {"Owner": "", "Token": token}
        return {"Owner": hub.owner_id, "OwnedUntil": ts(hub.now() + hub.lease), "Token": token}

    def _expect(self, delay: timedelta) -> None:
        """This process sent a wake-up: poll for it when it becomes visible."""
        hub = self._hub
        if hub.is_worker:
            if delay <= timedelta(0):
                hub.control_poll.kick()
                hub.wake()
            else:
                hub.control_poll.expect(min(delay, hub.queues.max_delay))

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
            await hub.submit_tolerant(ops, tolerate=_gone_ok, what="release messages")
        if retry_after <= timedelta(0):
            hub.wake()

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
        deletes: list[Op] = [("delete", _key(r)) for r in rows]
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

    def expect(self, delay: timedelta) -> None:
        self._expect(delay)

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


def _held_results(session: Session) -> list[Pending]:
    """Activity results the session holds in memory only (no inbox row yet)."""
    return [p for p in session.pending.values() if not p.stored and p.work_row is not None]


def _delay(message: OrchestrationMessage, hub: Hub) -> timedelta:
    if message.visible_at is None:
        return timedelta(0)
    return max(timedelta(0), message.visible_at - hub.now())


def _live(row: dict[str, Any], hidden: set[str]) -> bool:
    """Whether a row is committed (not staged by an unfinished or aborted episode)."""
    tag = row.get("Tag")
    return not tag or tag not in hidden


def _key(row: dict[str, Any]) -> dict[str, Any]:
    return {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}


def _key_of(iid: str, row_key: str) -> dict[str, Any]:
    return {"PartitionKey": iid, "RowKey": row_key}


def _gone_ok(op: Op, status: int) -> bool:
    return op[0] in ("delete", "update") and status == 404 and op[1].get("RowKey") != "i"


def _exists_ok(op: Op, status: int) -> bool:
    return op[0] == "create" and status == 409
