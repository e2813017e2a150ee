"""What the sidecar holds for SDK workers: their streams and the work items under tokens.

A ``Connection`` is one ``GetWorkItems`` stream; a ``HeldEpisode``,
``HeldEntityBatch`` or ``HeldActivity`` is a locked work item sent on it under a completion token,
until the worker completes or abandons it or its stream ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from ..storage._protocol import Accept, Store
from ..storage._records import ActivityWorkItem, OrchestrationWorkItem
from ..worker._entity_batch import EntityBatch
from ._episodes import PreparedEpisode
from ._proto import pb

__all__ = [
    "Connection",
    "HeldActivity",
    "HeldEntityBatch",
    "HeldEpisode",
    "HeldItem",
    "Send",
    "StreamClosed",
    "UnknownTokenError",
    "UnmatchedCompletionError",
    "activity_token",
    "describe",
    "episode_token",
    "free",
    "locked_instance",
    "renew_held",
    "unless_lost",
]

log = logging.getLogger("durable_fx.sidecar")

T = TypeVar("T")
Send = Callable[[pb.WorkItem], Awaitable[None]]


class StreamClosed(Exception):
    """Sending on a worker's stream failed: the worker is gone."""


class UnknownTokenError(LookupError):
    """A completion token no held work item has (completed, released, or from before a restart)."""

    def __init__(self, token: str) -> None:
        super().__init__(
            f"no work item is held under completion token {token!r}: it was completed or "
            "abandoned already, or released when its worker's stream ended or the sidecar "
            "restarted; it is (or was) delivered again"
        )


class UnmatchedCompletionError(UnknownTokenError):
    """A completion without a token that matches no held work item."""

    def __init__(self, what: str) -> None:
        LookupError.__init__(
            self,
            f"a completion without a completion token names {what}, and no work item of it "
            "is held: it was completed or abandoned already, or released when its worker's "
            "stream ended; it is (or was) delivered again",
        )


@dataclass(eq=False, slots=True)
class Connection:
    """One ``GetWorkItems`` stream: what one SDK worker holds and may take."""

    max_episodes: int
    max_activities: int
    send: Send
    episodes: set[str] = field(default_factory=set)
    activities: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: float = 0.0
    locking: set[asyncio.Task[Any]] = field(default_factory=set)
    """Lock calls in progress: they finish (and their items are held) even if the stream ends."""
    accept: Accept | None = None
    """The instances the worker's filters ask for (``None``: all)."""


@dataclass(slots=True)
class HeldEpisode:
    connection: Connection
    prepared: PreparedEpisode
    renewed_at: float
    partial: list[pb.OrchestratorAction] = field(default_factory=list)
    """Actions of chunks already received (a worker may split a large response)."""


@dataclass(slots=True)
class HeldEntityBatch:
    connection: Connection
    batch: EntityBatch
    renewed_at: float


@dataclass(slots=True)
class HeldActivity:
    connection: Connection
    item: ActivityWorkItem
    renewed_at: float
    handed_at: float
    """When the worker got it (loop time): what the activity timeout counts from."""


HeldItem = HeldEpisode | HeldEntityBatch | HeldActivity


def locked_instance(held: HeldEpisode | HeldEntityBatch) -> OrchestrationWorkItem:
    """The locked instance work item behind an episode or an entity batch."""
    return held.prepared.item if isinstance(held, HeldEpisode) else held.batch.item


def episode_token(held: Mapping[str, object], instance_id: str) -> str:
    """The token of the episode held for ``instance_id``.

    SDKs that predate completion tokens (Dapr's, e.g. durabletask-js 1.0)
    send none; an instance has at most one episode out at a time, so its id
    names it, as in durabletask-go.
    """
    for token, item in tuple(held.items()):  # a snapshot: the loop thread changes the dict
        if isinstance(item, HeldEpisode) and item.prepared.instance.instance_id == instance_id:
            return token
    raise UnmatchedCompletionError(f"instance {instance_id!r}")


def activity_token(held: Mapping[str, object], instance_id: str, task_id: int) -> str:
    """The token of the activity held for task ``task_id`` of ``instance_id`` (no token sent)."""
    for token, item in tuple(held.items()):
        if (
            isinstance(item, HeldActivity)
            and item.item.invocation.instance_id == instance_id
            and item.item.invocation.task_id == task_id
        ):
            return token
    raise UnmatchedCompletionError(f"task {task_id} of instance {instance_id!r}")


def free(connection: Connection, token: str) -> None:
    """The work under ``token`` is done: its worker has room for more."""
    connection.episodes.discard(token)
    connection.activities.discard(token)
    connection.wake.set()


def describe(held: HeldItem) -> str:
    """A held item as log messages name it."""
    if isinstance(held, HeldEpisode):
        return f"the episode of {held.prepared.instance.instance_id}"
    if isinstance(held, HeldEntityBatch):
        return f"the batch of entity {held.batch.item.instance.instance_id}"
    return f"activity {held.item.invocation.name} of {held.item.invocation.instance_id}"


async def unless_lost(connection: Connection, locking: Awaitable[T]) -> T:
    """Run a lock call that a stream ending cannot cut short.

    Cancelled halfway, a lock call would leave its items locked but held by
    no token until their lease expired; shielded, it finishes, holds them,
    and the ending stream waits for it and then releases them.
    """
    task = asyncio.ensure_future(locking)
    connection.locking.add(task)
    task.add_done_callback(connection.locking.discard)
    return await asyncio.shield(task)


async def renew_held(held_items: dict[str, HeldItem], store: Store, lease: timedelta) -> None:
    """Renew the leases of what workers hold for long: activities and episodes alike.

    An episode is usually back in milliseconds, but an SDK worker may take
    longer than a lease (a long history to replay, a saturated thread
    pool); unrenewed, its instance would go to another sidecar on the
    store, and the work would be done twice with one commit lost.
    """
    loop = asyncio.get_running_loop()
    # Every item is renewed at most two intervals after the last time: half the lease.
    interval = lease.total_seconds() / 4
    while True:
        await asyncio.sleep(interval)
        due = loop.time() - interval
        for token, held in list(held_items.items()):
            # Skip what was completed or released since the snapshot: nothing to renew.
            if held.renewed_at <= due and held_items.get(token) is held:
                await _renew(held, store, lease)


async def _renew(held: HeldItem, store: Store, lease: timedelta) -> None:
    """Renew one held item's lease; a failure is retried on the next round."""
    try:
        if isinstance(held, HeldEpisode | HeldEntityBatch):
            await store.renew_orchestration_lease(locked_instance(held), lease)
        else:
            await store.renew_activity_lease(held.item, lease)
        held.renewed_at = asyncio.get_running_loop().time()
    except Exception:
        log.warning("could not renew the lease of %s", describe(held))
