"""Committing one episode: rows to write, the transaction(s), and what follows.

The protocol (big episodes, staging, resolving a failed If-Match) is described
in ``_orchestrations``; this module carries it out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from azure.data.tables import TableTransactionError

from ..._errors import ConflictError
from ..._ids import validate_instance_id
from .._records import ActivityInvocation, EpisodeCommit, OrchestrationWorkItem, creation_start
from ._activities import Activities
from ._codec import INSTANCE_ROW, history_key, inbox_key, outbox_key, ts, work_key
from ._hub import Hub
from ._ops import MAX_BATCH, MAX_BATCH_BYTES, Op, entity_size, instance_update
from ._session import Pending, Session, consumed_rows
from ._sessions import Sessions
from ._starts import Starts
from ._transient import status_of

__all__ = ["Commits"]

_CHANGED = "a client changed the instance's status meanwhile (a rewind); the episode is done again"

_ATTEMPTS = 6

log = logging.getLogger("durable_fx.storage.azure")


@dataclass
class _Plan:
    """Everything one commit writes, split into what goes first and the final transaction."""

    token: str
    version: int
    generation: int
    count: int
    stay: bool
    instance: dict[str, Any]
    final: list[Op] = field(default_factory=list)
    first: list[Op] = field(default_factory=list)
    staging: str | None = None
    consumed: list[str] = field(default_factory=list)
    cancelled_dues: list[datetime] = field(default_factory=list)
    """When the timers the episode cancelled were due (their index rows go)."""
    self_pending: list[Pending] = field(default_factory=list)
    work: list[ActivityInvocation] = field(default_factory=list)
    local: int = 0
    """How many of ``work`` (the first) this worker holds without queue messages."""
    outbox: list[dict[str, Any]] = field(default_factory=list)


class Commits:
    """Commits of episodes: one per locked work item, on the instance's session."""

    def __init__(
        self, hub: Hub, sessions: Sessions, activities: Activities, starts: Starts
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities
        self._starts = starts

    async def commit(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode atomically, release the lock and return the new version."""
        hub = self._hub
        iid = item.instance.instance_id
        if commit.instance.instance_id != iid:
            raise ValueError(
                f"commit for instance {commit.instance.instance_id!r} "
                f"does not match the locked instance {iid!r}"
            )
        for message in commit.messages:  # validate before writing anything
            validate_instance_id(message.instance_id)
            if message.instance_id != iid:
                creation_start(message)  # a start (or an entity operation) names its target
        session = self._sessions.get(iid)
        if session is None:
            raise ConflictError(iid, "it was purged, replaced or taken over while locked")
        if session.lock is None or session.lock.token != item.lock_token:
            raise ConflictError(iid, "the lease expired and another worker locked it")
        if str(session.version) != item.instance.version:
            raise ConflictError(
                iid, f"version {item.instance.version} is stale (now {session.version})"
            )
        plan = await self._plan(session, commit)
        await self._write(session, plan)
        old_generation, old_count = session.generation, session.count
        self._apply(session, commit, plan)
        try:
            await self._after(session, plan)
        except Exception:
            # The episode is committed; only sending what it made failed (storage kept
            # failing). Its work rows and outbox rows stay: give the instance up here, and
            # its guard's wake-up has it taken over and everything re-sent from the rows.
            log.warning(
                "sending what an episode of %s made failed; re-sent later", iid, exc_info=True
            )
            self._sessions.drop(iid)
            if session.hosted:
                # No guard under the host: its message is the wake-up, so the invocation must
                # fail for it to come back (the row still names this owner: all is re-sent).
                raise
            hub.expect_control(iid, hub.lease)
        if plan.generation != old_generation:
            self._sessions.delete_history_later(iid, old_generation, old_count)
        return str(plan.version)

    async def _plan(self, session: Session, commit: EpisodeCommit) -> _Plan:
        hub = self._hub
        codec = hub.codec
        iid = session.instance_id
        now = hub.now()
        version = session.version + 1
        generation = session.generation + 1 if commit.reset_history else session.generation
        start = 0 if commit.reset_history else session.count

        history: list[Op] = []
        for offset, event in enumerate(commit.new_history):
            row: dict[str, Any] = {
                "PartitionKey": iid,
                "RowKey": history_key(generation, start + offset),
            }
            await codec.put_text(row, "Event", event.model_dump_json(), iid)
            history.append(("upsert", row))

        cancelled = [inbox_key(key) for key in commit.cancelled]
        consumed = [
            rk for rk in dict.fromkeys([*commit.consumed, *cancelled]) if rk in session.pending
        ]
        cancelled_dues = [
            session.pending[rk].visible_at for rk in cancelled if rk in session.pending
        ]
        tagged: list[Op] = []
        work: list[ActivityInvocation] = []
        seen_work: set[str] = set()
        for invocation in commit.activities:
            key = work_key(invocation.execution_id, invocation.task_id)
            if key in session.outstanding or key in seen_work:
                continue  # already scheduled and not completed: never twice
            seen_work.add(key)
            work.append(invocation)
        # What this process's worker has room for it runs without a queue message.
        local = self._activities.room(len(work))
        for index, invocation in enumerate(work):
            row = await self._activities.work_row(invocation, local=index < local)
            tagged.append(("upsert", row))

        still_pending = {rk for rk in session.pending if rk not in consumed}
        self_pending: list[Pending] = []
        outbox: list[dict[str, Any]] = []
        for index, message in enumerate(commit.messages):
            if message.instance_id == iid:
                entity, pending = await hub.inbox_entity(message)
                if pending.row_key in still_pending:
                    continue  # at most one pending message per key
                still_pending.add(pending.row_key)
                self_pending.append(pending)
                tagged.append(("upsert", entity))
                continue
            row = {
                "PartitionKey": iid,
                "RowKey": outbox_key(version, index),
                "Target": message.instance_id,
                "Key": message.key,
            }
            if message.execution_id is not None:
                row["ExecutionId"] = message.execution_id
            if message.visible_at is not None:
                row["VisibleAt"] = ts(message.visible_at)
            await codec.put_text(row, "Event", message.event.model_dump_json(), iid)
            outbox.append(row)
            tagged.append(("upsert", row))

        terminal = commit.instance.status.is_terminal
        outstanding = bool(session.outstanding) or bool(work)
        ready = any(p.visible_at <= now for rk, p in session.pending.items() if rk in still_pending)
        ready = ready or any(p.visible_at <= now for p in self_pending)
        stay = (outstanding and not terminal) or ready
        if session.hosted:
            # The invocation ends after this episode unless more is ready: give the instance
            # up in this same write (its guard, deleted after the sends, covers a crash).
            stay = ready
        token = hub.token()
        record = dataclasses.replace(commit.instance, version=str(version))
        state: dict[str, Any] = {
            "Version": version,
            "Gen": generation,
            "Count": start + len(history),
            "Token": token,
            "Owner": hub.owner_id if stay else "",
        }
        if stay:
            state["OwnedUntil"] = ts(now + hub.lease)
        if session.aborted:
            state["Aborted"] = json.dumps(session.aborted)
        instance = await codec.instance_entity(record, **state)
        plan = _Plan(
            token=token,
            version=version,
            generation=generation,
            count=start + len(history),
            stay=stay,
            instance=instance,
            consumed=consumed,
            cancelled_dues=cancelled_dues,
            self_pending=self_pending,
            work=work,
            local=local,
            outbox=outbox,
        )
        deletes: list[Op] = [
            op for rk in consumed for op in consumed_rows(iid, session.pending[rk])
        ]
        plan.final = deletes
        size = sum(entity_size(op) for op in deletes) + entity_size(("upsert", instance))
        tagged_size = sum(entity_size(op) for op in tagged)
        if 1 + len(deletes) + len(tagged) <= MAX_BATCH and size + tagged_size <= MAX_BATCH_BYTES:
            plan.final += tagged
            size += tagged_size
        elif tagged:
            # Too big for one transaction: written first, invisible until the commit clears Staging.
            plan.staging = hub.token()
            for op in tagged:
                op[1]["Tag"] = plan.staging
            plan.first += tagged
        for op in history:
            if 1 + len(plan.final) < MAX_BATCH and size + entity_size(op) <= MAX_BATCH_BYTES:
                plan.final.append(op)
                size += entity_size(op)
            else:
                plan.first.append(op)  # beyond Count until the commit: nobody reads it
        return plan

    async def _write(self, session: Session, plan: _Plan) -> None:
        hub = self._hub
        iid = session.instance_id
        if plan.staging is not None:
            await self._set_staging(session, plan.staging)
        if plan.first:
            await hub.submit_batches(plan.first, what=f"write the episode of {iid} (first part)")
        final = list(plan.final)
        for _ in range(_ATTEMPTS):
            ops = [instance_update(plan.instance, session.etag), *final]
            try:
                results = await hub.submit(ops, what=f"commit an episode of {iid}")
                session.etag = str(results[0]["etag"])
                return
            except TableTransactionError as error:
                index = getattr(error, "index", None)
                failed = ops[index] if isinstance(index, int) and 0 < index < len(ops) else None
                if failed is not None and failed[0] == "delete" and status_of(error) == 404:
                    final.remove(failed)  # a consumed row that is gone already (poisoned, purged)
                    continue
                outcome = await self._sessions.resolve(session, plan.token)
                if outcome == "applied":
                    return
                if outcome == "lost":
                    raise ConflictError(iid, "another worker took the instance over") from None
                if outcome == "changed":
                    raise ConflictError(iid, _CHANGED, lock_kept=True) from None
        raise _still_ours_but_busy(iid)

    async def _set_staging(self, session: Session, staging: str) -> None:
        hub = self._hub
        iid = session.instance_id
        for _ in range(_ATTEMPTS):
            token = hub.token()
            update = {
                "PartitionKey": iid,
                "RowKey": INSTANCE_ROW,
                "Staging": staging,
                "Token": token,
            }
            try:
                results = await hub.submit(
                    [instance_update(update, session.etag, merge=True)], what=f"stage {iid}"
                )
                session.etag = str(results[0]["etag"])
                return
            except TableTransactionError:
                outcome = await self._sessions.resolve(session, token)
                if outcome == "applied":
                    return
                if outcome == "lost":
                    raise ConflictError(iid, "another worker took the instance over") from None
                if outcome == "changed":
                    raise ConflictError(iid, _CHANGED, lock_kept=True) from None
        raise _still_ours_but_busy(iid)

    def _apply(self, session: Session, commit: EpisodeCommit, plan: _Plan) -> None:
        """Bring the session in line with what was written."""
        hub = self._hub
        session.record = dataclasses.replace(commit.instance, version=str(plan.version))
        session.version = plan.version
        session.generation = plan.generation
        session.count = plan.count
        for rk in plan.consumed:
            session.pending.pop(rk, None)
        for pending in plan.self_pending:
            session.pending[pending.row_key] = pending
        for invocation in plan.work:
            session.outstanding[work_key(invocation.execution_id, invocation.task_id)] = invocation
        if commit.instance.status.is_terminal:
            session.outstanding.clear()  # their results will be dropped; nothing to wait for
        session.lock = None
        if plan.stay:
            session.owned_until = hub.now() + hub.lease

    async def _after(self, session: Session, plan: _Plan) -> None:
        """Send the work items and messages the commit made; end the session if it is done."""
        hub = self._hub
        if plan.cancelled_dues:
            await self._sessions.forget_timers(session, plan.cancelled_dues)
        if plan.work:
            self._activities.hold(plan.work[: plan.local])
            await self._activities.send(plan.work[plan.local :], redelivery=False)
        if plan.outbox:
            await self._starts.send_outbox(session.instance_id, plan.outbox)
        if session.stale and not (plan.stay and session.has_backlog(hub.now())):
            # Someone wrote to the instance during the commit: new messages, read them
            # now so that ending the session leaves a wake-up for them (a session that
            # stays with a backlog reads them later: Session.has_backlog).
            await self._sessions.refresh(session, released=not plan.stay)
        if not plan.stay:
            await self._sessions.release_guard(session)
        elif session.visible(hub.now()):
            hub.wake()


def _still_ours_but_busy(iid: str) -> ConflictError:
    # Every try found the lock still ours but the row changed again (messages kept
    # arriving): the lock is kept, so the caller releases it and the messages come
    # back at once, instead of waiting out the lease.
    return ConflictError(
        iid, "the instance kept changing under the commit; it will be retried", lock_kept=True
    )
