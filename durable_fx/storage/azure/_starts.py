"""Starting instances and delivering messages to them (an episode's outbox too).

The wake-up goes first, the rows after: a crash between the two leaves a
wake-up that finds nothing (and is dropped after a second look), never a
message nobody is told about. A worker's own starts are owned at once: the
instance row names this store, the wake-up is the session's guard, hidden for
a lease. A message to an instance owned here is written and handed to the
session; to any other, it is written with a touch of the instance row (so an
owner elsewhere notices) after its wake-up.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

from azure.data.tables import TableTransactionError

from ..._entity import is_entity_instance_id
from ..._errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    StoreBusyError,
)
from ..._history import HISTORY_EVENT, ExecutionStarted
from ..._ids import validate_instance_id
from ..._state import OrchestrationStatus
from .._records import (
    InstanceRecord,
    OrchestrationMessage,
    accepts_rewind,
    creation_start,
    finished_refusal,
    new_instance_record,
    started_event,
)
from ._activities import Activities
from ._codec import INSTANCE_ROW, USED_KEYS, odata, parse_ts, ts, used_key
from ._hub import Hub
from ._ops import MAX_BATCH, Op, bump, exists_ok, gone_ok, instance_update, key_of_row
from ._queues import Handle
from ._session import Pending, Session
from ._sessions import Sessions
from ._transient import status_of

__all__ = ["Starts"]

log = logging.getLogger("durable_fx.storage.azure")

_ADD_ATTEMPTS = 20
"""Tries of an enqueue whose instance row keeps changing (commits, other messages)."""


class Starts:
    """Creating instances and routing messages to them."""

    def __init__(self, hub: Hub, sessions: Sessions, activities: Activities) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities

    async def create_instance(
        self, message: OrchestrationMessage, *, replaceable: frozenset[OrchestrationStatus]
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        hub = self._hub
        started = started_event(message)
        iid = validate_instance_id(message.instance_id)
        own = hub.is_worker
        # The wake-up goes first: if this process dies before the row lands, the
        # message finds no instance and is dropped; the other way round, the
        # instance would wait for a wake-up that never comes.
        guard = await self._first_wake_up(iid, message, own=own)
        try:
            session = await self._create(message, started, replaceable, own=own)
        except BaseException:
            await hub.queues.discard(guard)
            raise
        if session is None:
            self._sessions.expect_wake_up(iid, message.visible_at)
            return
        self._sessions.drop(iid)
        session.guard = guard
        self._sessions.add(session)
        hub.wake()

    async def _create(
        self,
        message: OrchestrationMessage,
        started: ExecutionStarted,
        replaceable: frozenset[OrchestrationStatus],
        *,
        own: bool,
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
            _check_replaceable(iid, row, replaceable)
            return await self._replace(message, started, row, inbox, pending, replaceable, own=own)
        else:
            raise StoreBusyError(f"instance {iid!r} kept changing while it was being created")
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
        replaceable: frozenset[OrchestrationStatus],
        *,
        own: bool,
    ) -> Session | None:
        """Re-create a finished instance: new generation; old messages, work and used keys dropped.

        The write is conditional on the ETag of the row whose status was
        checked, so a concurrent start or restart makes it fail, not replace twice.
        """
        hub = self._hub
        iid = message.instance_id
        partition = await hub.read_partition(iid)
        current = partition.instance or row
        _check_replaceable(iid, current, replaceable)
        low, high = USED_KEYS
        used = await hub.query(
            f"PartitionKey eq {odata(iid)} and RowKey ge '{low}' and RowKey lt '{high}'",
            what=f"list the used keys of {iid}",
            select=["PartitionKey", "RowKey"],
        )
        version, generation = int(current.get("Version", 1)) + 1, int(current.get("Gen", 0)) + 1
        old = [*partition.inbox, *partition.work, *partition.outbox, *used]
        deletes: list[Op] = [
            ("delete", key_of_row(r)) for r in old if r["RowKey"] != inbox["RowKey"]
        ]
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
                ops, tolerate=gone_ok, what=f"re-create instance {iid}"
            )
            etag = results[0]["etag"]
        except TableTransactionError:
            again = await hub.read_instance(iid)
            if again is None or again.get("Token") != token:
                status = str(again["Status"]) if again is not None else "re-created"
                raise InstanceExistsError(iid, status) from None
            etag = again["etag"]
        self._activities.forget_work(iid, [str(r["RowKey"]) for r in partition.work])
        self._sessions.drop(iid)
        self._sessions.delete_history_later(iid, generation - 1, int(current.get("Count", 0)))
        if not own:
            return None
        return self._new_session(record, etag, version, generation, 0, {pending.row_key: pending})

    async def deliver(self, message: OrchestrationMessage) -> bool:
        """``Store.enqueue``: add a message and remember its key; False if the key was used.

        The wake-up goes first, as for any message to an instance owned elsewhere.
        """
        hub = self._hub
        iid = validate_instance_id(message.instance_id)
        owned = iid in self._sessions
        hint = None
        if not owned:
            hint = await self._sessions.wake_up_at(iid, message.visible_at)
        added = False
        try:
            added = await self._write_message(message)
        finally:
            if not added:  # a duplicate, or the write failed
                await hub.queues.discard(hint)
        if not added:
            return False
        session = self._sessions.get(iid)
        if session is not None:
            session.stale = True  # our write changed its row: re-read before the next lock
            hub.wake()
            return True
        if owned:
            # The session ended while the message was being written: wake whoever is next.
            await self._sessions.wake_up_at(iid, message.visible_at)
        self._sessions.expect_wake_up(iid, message.visible_at)
        return True

    async def _write_message(self, message: OrchestrationMessage) -> bool:
        """One transaction: the used-key row, the inbox row, and If-Match on the instance row.

        The used-key row makes a repeat fail (409: a duplicate, pending or
        consumed); the condition on the instance row makes the status read
        before it still hold at the write, so an instance that finished in
        between refuses the message instead of dropping it unseen.
        """
        hub = self._hub
        iid = message.instance_id
        entity, _ = await hub.inbox_entity(message)
        token = hub.token()
        used = {"PartitionKey": iid, "RowKey": used_key(message.key), "Token": token}
        if is_entity_instance_id(iid):
            return await self._write_entity_request(used, entity)
        for _ in range(_ADD_ATTEMPTS):
            row = await hub.read_instance(iid)
            if row is None:
                raise InstanceNotFoundError(iid)
            status = OrchestrationStatus(row["Status"])
            if refusal := finished_refusal(iid, message.event.kind, status):
                if await self._used_by(used) is not None:
                    return False
                raise refusal
            touch: dict[str, Any] = {"PartitionKey": iid, "RowKey": INSTANCE_ROW, "Mail": token}
            if accepts_rewind(message.event.kind):
                # Accepted in this step (the If-Match holds it to the FAILED row read):
                # clients see it RUNNING at once. The failure stays until the rewind runs.
                touch["Status"] = OrchestrationStatus.RUNNING.value
                touch["UpdatedAt"] = ts(hub.now())
            ops: list[Op] = [
                ("create", used),
                ("create", entity),
                instance_update(touch, str(row["etag"]), merge=True),
            ]
            try:
                await hub.submit(ops, what=f"message {iid}")
                return True
            except TableTransactionError as error:
                index, code = getattr(error, "index", None), status_of(error)
                if index == 0 and code == 409:
                    # Ours if only the response of an applied try was lost.
                    return await self._used_by(used) == token
                if index == 1 and code == 409:
                    return False  # a message with this key is pending already
                if index == 2 and code in (404, 412):
                    continue  # the instance changed (or was purged): look again
                raise
        # Busy, not lost: nothing was added, and the caller may send it again (503 over HTTP).
        raise StoreBusyError(f"instance {iid!r} kept changing while a message was added")

    async def _write_entity_request(self, used: dict[str, Any], inbox: dict[str, Any]) -> bool:
        """An operation for an entity: no status to check, so no read and no If-Match.

        An entity never finishes, so nothing can refuse it; an unconditional
        touch (404 if the entity does not exist) lets any number of callers
        signal one entity at once, where a conditional write would make them
        retry each other out.
        """
        iid = str(used["PartitionKey"])
        try:
            await self._hub.submit(
                [("create", used), ("create", inbox), bump(iid)], what=f"message {iid}"
            )
            return True
        except TableTransactionError as error:
            index, code = getattr(error, "index", None), status_of(error)
            if index == 0 and code == 409:
                return await self._used_by(used) == str(
                    used["Token"]
                )  # ours if a response was lost
            if index == 1 and code == 409:
                return False  # a message with this key is pending already
            if index == 2 and code == 404:
                raise InstanceNotFoundError(iid) from None
            raise

    async def _used_by(self, used: dict[str, Any]) -> str | None:
        """The token of the stored used-key row ``used`` names, or ``None`` if there is none."""
        row = await self._hub.read_row(str(used["PartitionKey"]), str(used["RowKey"]))
        return None if row is None else str(row.get("Token", ""))

    async def route(self, message: OrchestrationMessage, *, create: bool) -> bool:
        """Deliver a message to its instance's inbox; False if the instance does not exist.

        With ``create`` an ``ExecutionStarted`` creates its missing target (a
        sub-orchestration); an existing target just gets the message.
        """
        hub = self._hub
        iid = message.instance_id
        session = self._sessions.get(iid)
        log.debug("route %s to %s (owned here: %s)", message.event.kind, iid, session is not None)
        if session is not None:
            return await self._enqueue_owned(session, message)
        started = creation_start(message) if create else None
        if started is not None:
            own = hub.is_worker
            guard = await self._first_wake_up(iid, message, own=own)
            try:
                created = await self._create_missing(message, started, own=own)
            except BaseException:
                await hub.queues.discard(guard)
                raise
            if created is not None:
                if created is not True:
                    created.guard = guard
                    self._sessions.add(created)
                    hub.wake()
                else:
                    self._sessions.expect_wake_up(iid, message.visible_at)
                return True
            await hub.queues.discard(guard)
        hint = await self._sessions.wake_up_at(iid, message.visible_at)
        entity, _ = await hub.inbox_entity(message)
        try:
            await hub.submit_tolerant(
                [("create", entity), bump(iid)], tolerate=exists_ok, what=f"message {iid}"
            )
        except TableTransactionError as error:
            await hub.queues.discard(hint)
            if status_of(error) == 404:
                return False
            raise
        # A 409 means a message with this key is pending, or that our own first try
        # went in and only its response was lost: keep the wake-up either way.
        self._sessions.expect_wake_up(iid, message.visible_at)
        return True

    async def send_outbox(self, iid: str, rows: list[dict[str, Any]]) -> None:
        """Deliver an instance's committed outbox rows in order, then delete them."""
        for row in sorted(rows, key=lambda r: str(r["RowKey"])):
            message = await self._message_from_row(row)
            try:
                await self.route(message, create=True)
            except Exception:
                log.exception("delivering a message from %s to %s failed", iid, message.instance_id)
                raise
        deletes: list[Op] = [("delete", key_of_row(r)) for r in rows]
        await self._hub.submit_batches(deletes, what=f"clear delivered messages of {iid}")

    async def _message_from_row(self, row: dict[str, Any]) -> OrchestrationMessage:
        text = await self._hub.codec.get_text(row, "Event") or "{}"
        visible = row.get("VisibleAt")
        return OrchestrationMessage(
            instance_id=str(row["Target"]),
            event=HISTORY_EVENT.validate_json(text),
            execution_id=row.get("ExecutionId"),
            visible_at=parse_ts(str(visible)) if visible else None,
            key=str(row["Key"]),
        )

    async def _first_wake_up(
        self, iid: str, message: OrchestrationMessage, *, own: bool
    ) -> Handle | None:
        """The wake-up sent before a new instance's rows: its guard if this worker owns it."""
        if not own:
            return await self._sessions.wake_up_at(iid, message.visible_at)
        hub = self._hub
        return await hub.queues.put(hub.control_queue_of(iid), {"h": iid}, delay=hub.lease)

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
                [("create", entity), bump(iid)], tolerate=exists_ok, what=f"message {iid}"
            )
        except TableTransactionError as error:
            if status_of(error) == 404:
                self._sessions.drop(iid)  # purged by another process
                return False
            raise
        if not self._sessions.holds(session):
            # The session ended while the message was being written: wake whoever is next.
            await self._sessions.wake_up_at(iid, message.visible_at)
            self._sessions.expect_wake_up(iid, message.visible_at)
            return True
        session.etag = str(results[-1]["etag"])
        if len(applied) == 2:
            session.pending.setdefault(pending.row_key, pending)
        else:
            session.stale = True  # a duplicate, or our own write whose response was lost
        hub.wake()
        return True

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


def _check_replaceable(
    iid: str, row: dict[str, Any], replaceable: frozenset[OrchestrationStatus]
) -> None:
    """Raise ``InstanceExistsError`` unless ``row``'s instance may be replaced."""
    status = OrchestrationStatus(row["Status"])
    if not (status.is_terminal and status in replaceable):
        raise InstanceExistsError(iid, status.value)
