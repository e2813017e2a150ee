"""Orchestration work on Azure: starting, messaging, locking and committing episodes.

A worker that locks an instance owns it: a *session* keeps its row, ETag and
pending messages in memory, and a hidden *guard* message has it taken over if
the process dies; an episode commits as one entity-group transaction with
If-Match on the instance row. Why and how (ownership, the guard, the commit,
big episodes): docs/design/azure-store.md, "Orchestrations".

``Orchestrations`` is the facade the store calls; the work is done below it:
sessions in ``_sessions``, starting instances and routing messages in
``_starts``, the control queue's wake-ups and takeovers in ``_wakeups``, the
commit in ``_commit``. None of those knows this module.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..._state import OrchestrationStatus
from .._protocol import Accept
from .._records import (
    EpisodeCommit,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
)
from ._codec import ts
from ._commit import Commits
from ._hub import Hub
from ._ops import Op, gone_ok
from ._session import MAX_MESSAGES_PER_EPISODE, Lease, Session
from ._sessions import Sessions
from ._starts import Starts
from ._timers import Timers
from ._wakeups import WakeUps

__all__ = ["PASS_ON_AFTER", "Orchestrations"]

PASS_ON_AFTER = timedelta(seconds=2)
"""How long an instance a worker passed on (another version's) waits before its next wake-up."""


class Orchestrations:
    """The orchestration half of the Store protocol, over the parts that do the work."""

    def __init__(
        self,
        hub: Hub,
        sessions: Sessions,
        timers: Timers,
        starts: Starts,
        wake_ups: WakeUps,
        commits: Commits,
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._timers = timers
        self._starts = starts
        self._wake_ups = wake_ups
        self._commits = commits
        self._callers: dict[str, tuple[Accept | None, datetime]] = {}
        """Who called ``lock`` on this store object: what each runs, and until when that counts."""

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self, message: OrchestrationMessage, *, replaceable: frozenset[OrchestrationStatus]
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        await self._starts.create_instance(message, replaceable=replaceable)

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Put a message in a live instance's inbox; False if its key was used already."""
        return await self._starts.deliver(message)

    # -- locking ----------------------------------------------------------------

    async def lock(
        self, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` instances with visible messages (owned ones first)."""
        hub = self._hub
        # Known before anything is awaited: another caller's pass-on meanwhile spares its work.
        self._callers[owner] = (accept, hub.now() + lease)
        hub.serve_worker(lease)
        await self._sessions.upkeep(lease)
        await self._wake_ups.poll(limit, lease)
        if accept is not None:
            await self._pass_on(owner, accept)
        items = await self._hand_out(owner, limit, lease, accept)
        now = hub.now()
        dues = self._sessions.next_dues(now)
        remote = hub.control_polls.next_expected()
        if remote is not None:
            dues.append(now + timedelta(seconds=remote))
        dues.extend(self._wake_ups.take_remote_dues())
        dues.extend(self._timers.dues)
        self._timers.dues.clear()
        return LockBatch(items, min((d for d in dues if d > now), default=None))

    async def _pass_on(self, owner: str, accept: Accept) -> None:
        """Give up the instances no caller of this store object runs, for a worker that does.

        An instance another caller here runs stays: that caller's next ``lock``
        hands it out, so workers of several versions sharing one store object
        never pass their instances to each other. Any other comes back after
        ``PASS_ON_AFTER``: any worker polling the partition may take it then,
        this one included (which passes it on again), so an instance reaches
        a worker of its version in another process within a few rounds.
        """
        sessions = self._sessions
        others = self._other_callers(owner)
        for session in list(sessions.all()):
            name, version = session.record.name, session.record.orchestration_version
            if session.lock is not None or accept(name, version):
                continue
            if not any(other is None or other(name, version) for other in others):
                await sessions.end(session, not_before=PASS_ON_AFTER)

    def _other_callers(self, owner: str) -> list[Accept | None]:
        """What the other callers of ``lock`` run, if their last call's lease still runs."""
        now = self._hub.now()
        for gone in [o for o, (_, until) in self._callers.items() if until <= now]:
            del self._callers[gone]
        return [accept for o, (accept, _) in self._callers.items() if o != owner]

    async def _hand_out(
        self, owner: str, limit: int, lease: timedelta, accept: Accept | None
    ) -> list[OrchestrationWorkItem]:
        hub = self._hub
        sessions = self._sessions
        now = hub.now()
        # A stale session re-reads its partition before it is handed out, unless it
        # still has a backlog to work through (Session.has_backlog).
        stale = [
            s for s in sessions.all() if s.stale and s.lockable(now) and not s.has_backlog(now)
        ]
        for session in stale:
            await sessions.refresh(session)
        # Checked again here, with nothing awaited since: sessions begun while
        # _pass_on awaited (a start from this process) must not slip through.
        ready = [
            (s.visible(now), s)
            for s in sessions.all()
            if s.lockable(now)
            and (accept is None or accept(s.record.name, s.record.orchestration_version))
        ]
        queue = sorted(((v, s) for v, s in ready if v), key=lambda e: e[0][0].order())
        items: list[OrchestrationWorkItem] = []
        for visible, session in queue:
            if len(items) >= limit:
                break
            spent = [p for p in visible if p.dequeue_count >= hub.max_dequeue_count]
            for p in spent:
                reason = f"delivered {p.dequeue_count} times without a successful episode"
                await sessions.poison(session, p, reason)
            deliver = [p for p in visible if p not in spent][:MAX_MESSAGES_PER_EPISODE]
            if not deliver or session.instance_id not in sessions:
                continue
            for p in deliver:
                p.dequeue_count += 1
            session.lock = Lease(hub.token(), owner, now + lease)
            messages = [p.message() for p in deliver]
            items.append(OrchestrationWorkItem(session.record, messages, session.lock.token))
        return items

    # -- committing -------------------------------------------------------------

    async def commit(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version."""
        return await self._commits.commit(item, commit)

    async def abandon(
        self, item: OrchestrationWorkItem, reason: str, retry_after: timedelta
    ) -> None:
        """Release a lock; its messages come back after ``retry_after`` or are poisoned."""
        hub = self._hub
        session = self._sessions.get(item.instance.instance_id)
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
                await self._sessions.poison(session, pending, reason)
                continue
            pending.visible_at = now + retry_after
            if not pending.stored:
                continue  # held in memory: nothing to write
            values = {"VisibleAt": ts(pending.visible_at), "DequeueCount": pending.dequeue_count}
            key = {"PartitionKey": session.instance_id, "RowKey": pending.row_key}
            ops.append(("update", {**key, **values}, {"mode": "merge"}))
        if ops:
            await hub.submit_tolerant(ops, tolerate=gone_ok, what="release messages")
        if retry_after <= timedelta(0):
            hub.wake()

    async def renew(self, item: OrchestrationWorkItem, lease: timedelta) -> None:
        """Extend a lock that ``item`` still holds, with the ownership that backs it.

        The row's ``OwnedUntil`` is pushed out too (one conditional merge, which fails
        if the instance was taken over); the guard is left as it is. Why:
        docs/design/azure-store.md, "Renewing a lock".
        """
        hub = self._hub
        iid = item.instance.instance_id
        session = self._sessions.get(iid)
        if session is None or not _holds(session, item.lock_token):
            return  # committed, abandoned or taken over: nothing of ours to renew
        until = hub.now() + lease
        if session.owned_until < until and not await self._sessions.own_until(session, until):
            return
        lock = session.lock
        # The merge awaited: the episode may have been committed or dropped meanwhile.
        if lock is not None and lock.token == item.lock_token and self._sessions.holds(session):
            lock.expires_at = max(lock.expires_at, until)

    async def close(self) -> None:
        """Cancel the background work of the sessions."""
        await self._sessions.close()


def _holds(session: Session, token: str) -> bool:
    """Whether ``token`` names the session's current lock (expired or not)."""
    return session.lock is not None and session.lock.token == token
