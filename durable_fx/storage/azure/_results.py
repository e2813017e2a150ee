"""Activity results on Azure: into the inbox of their instance, their work rows deleted.

A result for an instance this process owns (and trusts its lease on) joins
its session's inbox in memory (``defer``); any other result is one
transaction per instance and chunk (``complete_chunk``): delete the work row,
insert the result into the inbox. ``Activities.complete`` chooses.
"""

from __future__ import annotations

from datetime import timedelta

from .._records import ActivityResult
from ._hub import Hub
from ._ops import Op, bump
from ._session import HeldWork, Session
from ._sessions import Sessions, submit_results

__all__ = ["complete_chunk", "defer", "trusted"]


def trusted(hub: Hub, session: Session) -> bool:
    """Whether the session's lease is comfortably ours (no one else may take it now)."""
    return session.owned_until - hub.now() > hub.lease / 4


def defer(
    hub: Hub, session: Session, entries: list[tuple[HeldWork, ActivityResult]]
) -> list[tuple[HeldWork, ActivityResult]]:
    """Hand results to an instance owned here in memory; return the rest.

    The episode that consumes them deletes their work rows in its own
    transaction, so a result costs no request of its own. A crash before that
    episode loses nothing: the work rows are still there, and the instance's
    taker re-runs them (results are recorded once they are in the history).
    """
    rest = []
    for held, result in entries:
        if held.row_key not in session.outstanding:
            rest.append((held, result))  # not expected (a copy, a finished instance)
            continue
        del session.outstanding[held.row_key]
        pending = hub.pending_of(result.message)
        pending.stored, pending.work_row = False, held.row_key
        session.pending.setdefault(pending.row_key, pending)
    if len(rest) < len(entries):
        hub.wake()
    return rest


async def complete_chunk(
    hub: Hub, sessions: Sessions, instance_id: str, chunk: list[tuple[HeldWork, ActivityResult]]
) -> None:
    session = sessions.get(instance_id)
    # Trust the session only while its lease is comfortably ours; otherwise also
    # tell whoever may have taken the instance over (a touch and a wake-up).
    trusted = session is not None and session.owned_until - hub.now() > hub.lease / 4
    ops: list[Op] = []
    pendings = {}
    seen: set[str] = set()
    for held, result in chunk:
        if held.row_key in seen:
            continue  # two copies of one task finished together: the first counts
        seen.add(held.row_key)
        entity, pending = await hub.inbox_entity(result.message)
        ops.append(("delete", {"PartitionKey": instance_id, "RowKey": held.row_key}))
        ops.append(("create", entity))
        pendings[held.row_key] = pending
    woken = False
    # Under the host, the wake-up goes after the rows: sent first, it could be taken
    # (the work row still there, the result not yet) and used up before they land.
    # A crash in between leaves the host's message, whose redelivery finds the
    # result recorded and wakes the instance (``_drop_completed``).
    hosted = any(held.handle is not None and held.handle.hosted for held, _ in chunk)
    if not trusted:
        ops.append(bump(instance_id))
    if not trusted and not hosted:
        # The wake-up goes first: a crash after the rows cannot leave them unseen.
        await sessions.wake_now(instance_id)
        woken = True
    applied = await submit_results(hub, instance_id, ops)
    if applied is None:
        for held, _ in chunk:
            if held.guard is not None:
                await hub.queues.delete(held.guard)  # the instance is gone
        return
    delivered = [pendings[rk] for rk in applied]
    # A dropped pair may be one our own earlier try wrote (its response lost):
    # re-read the inbox, or wake whoever owns the instance, rather than guess.
    uncertain = len(applied) < len(pendings)
    if uncertain and session is not None and sessions.holds(session):
        session.stale = True
        hub.wake()
    elif uncertain:
        trusted = False
        delivered = delivered or list(pendings.values())[:1]
    if trusted and sessions.get(instance_id) is not session:
        trusted = False  # the session ended while the results were written
    if session is not None and sessions.holds(session):
        for rk in pendings:  # every work row of the chunk is gone now, one way or another
            session.outstanding.pop(rk, None)
        for pending in delivered:
            session.pending.setdefault(pending.row_key, pending)
        if delivered:
            hub.wake()
    guards = [held.guard for held, _ in chunk if held.guard is not None]
    # A guard (under the host) becomes the wake-up: the result is in now.
    wake = not trusted and delivered and not woken
    if wake and (not guards or not await hub.queues.hide(guards.pop(), timedelta(0))):
        await sessions.wake_now(instance_id)
    for guard in guards:
        await hub.queues.delete(guard)
