"""The embedded store: one SQLite file (WAL) holding a whole task hub.

Several processes may share the file. Every write runs in a ``BEGIN
IMMEDIATE`` transaction, so an episode commits atomically and writers queue on
the file's lock instead of failing halfway; work is claimed with lease columns
(``locked_by`` plus an expiry), so a crashed process's work comes back once its
lease runs out.

Within a process all SQL runs on one thread that owns the only connection
(``_thread``); the async methods below turn their arguments into
statement parameters on the caller's thread and queue the call, so the store
may be used from any number of event loops and threads. Writes that queue up
while the thread is busy share one transaction (group commit), each call
still succeeding or failing on its own.

Durability: ``synchronous=FULL`` by default, so a call that returned survives
an OS crash or power loss (group commit pays one fsync per batch, not per
call); ``synchronous="normal"`` (``?synchronous=normal`` in the URL) syncs the
WAL only at checkpoints. A write waits up to ``busy_timeout`` seconds for
another connection's lock, then fails with ``StoreBusyError``.

The layout of the file is in ``_schema``, the calls themselves in
``_engine``. Rules the protocol leaves open are those ``MemoryStore``
lists; as fairness choices, the instance due longest and the work item visible
longest go first.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter

from ..._clock import Clock, SystemClock
from ..._history import HistoryEvent
from ..._ids import validate_instance_id
from ..._state import OrchestrationStatus
from .._protocol import Accept
from .._records import (
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Page,
    PoisonedMessage,
    QueueBacklog,
    started_event,
)
from . import _schema as schema
from ._engine import Engine
from ._rows import CommitPlan, delay_of, dumps, held_key, message_item, result_item, start_row
from ._thread import Call, StoreThread, Waiters

__all__ = ["SqliteStore", "parse_sqlite_url"]

T = TypeVar("T")

_HISTORY = TypeAdapter(list[HistoryEvent])


class SqliteStore:
    """The embedded durable store: a task hub in one SQLite file.

    Args:
        path: The database file; it and its parent directories are created.
        clock: Source of "now" for visibility, leases and poisoning; the system
            clock by default (tests pass a manual clock).
        max_dequeue_count: Deliveries after which a message or work item that
            never succeeded is moved to the poison list.
        synchronous: ``"full"`` (the default): every commit is synced to disk
            before the call returns, so it survives an OS crash or power loss;
            ``"normal"``: synced at WAL checkpoints only, so a crash of the
            machine (not of the process) can roll back the last commits.
        busy_timeout: Seconds a call waits for another connection's lock on
            the file before it fails with ``StoreBusyError``.

    Created outside an event loop, the store opens the file before returning
    and raises what opening raised; created on a running loop, it returns at
    once and the first call reports a failure to open (and the next tries
    again), so the loop never waits for the file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        max_dequeue_count: int = 5,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
    ) -> None:
        if max_dequeue_count < 1:
            raise ValueError(f"max_dequeue_count must be at least 1, got {max_dequeue_count}")
        self.path = Path(path)
        self.synchronous = _synchronous(synchronous, "synchronous")
        """The ``PRAGMA synchronous`` level the connection runs with: "full" or "normal"."""
        self.busy_timeout = _busy_timeout(busy_timeout, "busy_timeout")
        """Seconds a call waits for another connection's lock before ``StoreBusyError``."""
        self._closed = False
        self._waiters = Waiters()
        connect = partial(
            schema.connect, synchronous=self.synchronous, busy_timeout=self.busy_timeout
        )
        self._engine = Engine(self.path, clock or SystemClock(), max_dequeue_count, connect)
        self._thread = StoreThread(self._engine, self._waiters.wake)
        # Stops the thread if the store is dropped without close().
        self._finalizer = weakref.finalize(self, self._thread.queue.put, None)
        if not _on_event_loop():
            self._wait_opened()

    def _wait_opened(self) -> None:
        try:
            self._thread.opened.result()
        except BaseException as error:
            self._finalizer()
            if isinstance(error, sqlite3.OperationalError) and schema.is_busy(error):
                raise schema.busy_error(self.path, self.busy_timeout, error) from error
            raise

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r}, synchronous={self.synchronous!r})"

    async def _call(self, run: Callable[[], T], *, write: bool = True, synced: bool = True) -> T:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        try:
            return await self._queue(run, write=write, synced=synced)
        except sqlite3.OperationalError as error:
            if not schema.is_busy(error):
                raise
            raise schema.busy_error(self.path, self.busy_timeout, error) from error

    def _queue(self, run: Callable[[], T], *, write: bool, synced: bool) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._thread.queue.put(Call(run, write, loop, future, synced))
        return future

    # -- starting and messaging -------------------------------------------------

    async def create_instance(
        self,
        message: OrchestrationMessage,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
    ) -> None:
        """Create an instance, replacing one whose status is in ``replaceable``."""
        started = started_event(message)
        iid = validate_instance_id(message.instance_id)
        row = start_row(message, started)
        batch = dumps([message_item(message)])
        statuses = frozenset(status.value for status in replaceable)
        await self._call(partial(self._engine.create_instance, iid, row, batch, statuses))

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        """Add a message to a live instance's inbox; False if its key was used already."""
        iid = validate_instance_id(message.instance_id)
        batch = dumps([message_item(message)])
        kind = message.event.kind
        enqueue = partial(self._engine.enqueue, iid, message.key, kind, batch)
        return await self._call(partial(enqueue, delay_of(message)))

    # -- orchestration work -----------------------------------------------------

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` unlocked instances with visible messages, each with all of them."""
        lock = partial(self._engine.lock_orchestrations, owner, limit, lease, accept)
        return await self._call(lock, synced=False)  # a lease: see _thread

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current execution's history, oldest first (empty if none)."""
        text = await self._call(partial(self._engine.history, instance_id), write=False)
        # Validated on the caller's thread, as one array (about twice as fast as
        # event by event), so the store thread stays free for SQL.
        return _HISTORY.validate_json(text)

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version.

        Raises ``ConflictError`` (changing nothing) when ``item`` is stale.
        """
        plan = CommitPlan.build(item, commit)
        return await self._call(partial(self._engine.commit_episode, plan))

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release the lock; retry the messages later, or poison the over-delivered ones."""
        ids = dumps([int(message.message_id) for message in item.messages])
        abandon = partial(self._engine.abandon_orchestration, item.instance.instance_id)
        await self._call(partial(abandon, item.lock_token, ids, reason, retry_after))

    async def renew_orchestration_lease(
        self, item: OrchestrationWorkItem, lease: timedelta
    ) -> None:
        """Extend the lock if ``item`` still holds it; otherwise do nothing."""
        renew = self._engine.renew_orchestration_lease
        await self._call(
            partial(renew, item.instance.instance_id, item.lock_token, lease), synced=False
        )

    # -- activity work ----------------------------------------------------------

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` visible work items, oldest first."""
        lock = partial(self._engine.lock_activities, owner, limit, lease)
        return await self._call(lock, synced=False)

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each result whose work item this worker still holds; drop the rest."""
        if not results:
            return
        batch = dumps([result_item(result) for result in results])
        delays = [delay_of(result.message) for result in results]
        targets = dumps(sorted({result.message.instance_id for result in results}))
        complete = partial(self._engine.complete_activities, batch, delays, targets)
        await self._call(complete, synced=False)  # lost, the activities run again

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release a work item for a retry after ``retry_after``, or poison it."""
        key = held_key(item)
        await self._call(partial(self._engine.abandon_activity, key, reason, retry_after))

    async def renew_activity_lease(
        self, item: ActivityWorkItem, lease: timedelta, *, heartbeat: str | None = None
    ) -> None:
        """Extend the lease if this worker still holds the item; otherwise do nothing.

        Heartbeat details are written as durably as a commit (a lease alone
        need not survive a power loss: an expired one only means a redelivery).
        """
        renew = partial(self._engine.renew_activity_lease, held_key(item), lease, heartbeat)
        await self._call(renew, synced=heartbeat is not None)

    # -- reading and housekeeping -----------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        return await self._call(partial(self._engine.get_instance, instance_id), write=False)

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Matching instances, newest first, ``query.page_size`` at a time."""
        if query.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {query.page_size}")
        return await self._call(partial(self._engine.query_instances, query), write=False)

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance with its history, inbox and work items; False if absent."""
        return await self._call(partial(self._engine.purge_instance, instance_id))

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        """``purge_instance``, only while the row is at ``version`` and nothing is pending."""
        return await self._call(partial(self._engine.purge_idle_instance, instance_id, version))

    async def backlog(self) -> list[QueueBacklog]:
        """Due inbox messages and activity work items, and how long the oldest has waited."""
        return await self._call(self._engine.backlog, write=False)

    async def count_instances(self) -> dict[OrchestrationStatus, int]:
        """How many instances have each status (from an index, not the rows)."""
        return await self._call(self._engine.count_instances, write=False)

    async def poisoned_messages(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first (only ``instance_id``'s if given)."""
        read = partial(self._engine.poisoned_messages, instance_id)
        return await self._call(read, write=False)

    async def requeue_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Put poisoned messages back as they were, visible now; returns how many."""
        ids = _row_ids(poison_ids)
        if not ids:
            return 0
        return await self._call(partial(self._engine.requeue_poisoned, ids))

    async def delete_poisoned(self, poison_ids: Sequence[str]) -> int:
        """Drop poisoned messages for good; returns how many."""
        ids = _row_ids(poison_ids)
        if not ids:
            return 0
        return await self._call(partial(self._engine.delete_poisoned, ids))

    # -- waiting and closing ----------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when this store object makes work visible, or after ``timeout`` seconds."""
        if timeout <= 0 or self._closed:
            return
        with self._waiters.waiting() as arrived:
            # Registered before looking, so work committed between the caller's
            # last poll and this check is either seen here or wakes the waiter.
            if await self._call(self._engine.has_ready_work, write=False):
                return
            with suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), timeout)

    async def close(self) -> None:
        """Finish queued calls, close the file, stop the thread, wake waiters; idempotent."""
        if self._closed:
            return
        self._closed = True
        # Behind every call already queued: the thread runs them, closes the file and stops.
        self._finalizer()
        await asyncio.wrap_future(self._thread.stopped)
        self._waiters.wake()


def parse_sqlite_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``sqlite:///path.db?name=value&...`` into the path and its parameters.

    Parameters are ``synchronous`` (``full`` or ``normal``) and ``busy_timeout``
    (seconds); any other, a repeated one or a bad value is a ``ValueError``
    naming it and what is allowed. Values are checked, not converted.
    """
    rest = url.removeprefix("sqlite://").removeprefix("/")
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError(f"store URL {url!r} names no file; use sqlite:///path/to/file.db")
    params: dict[str, str] = {}
    for pair in query.split("&") if query else ():
        name, equals, value = pair.partition("=")
        if name not in _CHECKS:
            raise ValueError(
                f"unknown store URL parameter {name!r} in {url!r}; "
                f"SQLite store URLs take {' and '.join(sorted(_CHECKS))}"
            )
        if not equals or name in params:
            raise ValueError(f"store URL parameter {name!r} needs exactly one value: {name}=...")
        _CHECKS[name](value, f"store URL parameter {name}")
        params[name] = value
    return path, params


def _synchronous(value: str, what: str) -> str:
    if not isinstance(value, str) or value.lower() not in schema.SYNCHRONOUS_LEVELS:
        raise ValueError(f"{what} must be full or normal, got {value!r}")
    return value.lower()


def _busy_timeout(value: str | float, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{what} must be a number of seconds, 0 or more, got {value!r}")
    return seconds


_CHECKS: dict[str, Callable[[str, str], object]] = {
    "synchronous": _synchronous,
    "busy_timeout": _busy_timeout,
}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _row_ids(poison_ids: Sequence[str]) -> str | None:
    """The poison row ids among ``poison_ids`` as a JSON array; ids of other stores are skipped."""
    ids = sorted({int(i) for i in poison_ids if i.isascii() and i.isdigit() and len(i) < 19})
    return dumps(ids) if ids else None
