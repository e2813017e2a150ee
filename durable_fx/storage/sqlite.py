"""The embedded store: one SQLite file (WAL) holding a whole task hub.

Several processes may share the file. Every write is one ``BEGIN IMMEDIATE``
transaction, so an episode commits atomically and writers queue on the file's
lock instead of failing halfway; work is claimed with lease columns
(``locked_by`` plus an expiry), so a crashed process's work comes back once its
lease runs out.

Within a process all SQL runs on one dedicated thread that owns the only
connection, and the async methods hand calls to it. That keeps the connection
off every event loop (the store may be shared by several) and keeps SQLite's
statement and page caches warm.

Semantics the protocol leaves open are those of ``MemoryStore``, with one
difference: re-creating a finished instance keeps counting its version up
(rather than restarting at ``"1"``), so a version cached for the old instance
is never mistaken for one of the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from .._clock import Clock, SystemClock
from .._errors import ConflictError, InstanceExistsError, InstanceNotFoundError
from .._history import HISTORY_EVENT, ExecutionStarted, HistoryEvent
from .._ids import validate_instance_id
from .._state import OrchestrationStatus
from . import _sqlite_schema as sql
from ._records import (
    ActivityInvocation,
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InboxMessage,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Page,
    PoisonedMessage,
)

if TYPE_CHECKING:
    import sqlite3

__all__ = ["SqliteStore"]

T = TypeVar("T")

_HISTORY = TypeAdapter(list[HistoryEvent])
_ORCHESTRATIONS = "orchestrations"
_ACTIVITIES = "activities"


class _Engine:
    """The synchronous store: each public method is one transaction on the store thread."""

    def __init__(
        self, path: Path, clock: Clock, max_dequeue_count: int, on_work: Callable[[], None]
    ) -> None:
        self._db = sql.connect(path)
        self._clock = clock
        self._max_dequeue = max_dequeue_count
        self._on_work = on_work
        # Tokens differ between lock calls, even of one owner: a worker must not
        # complete, with an old lease, work that was locked again since.
        self._token_prefix = os.urandom(6).hex()
        self._token_counter = itertools.count()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _now(self) -> int:
        return sql.to_micros(self._clock.now())

    def _token(self, owner: str) -> str:
        return f"{owner}#{self._token_prefix}.{next(self._token_counter)}"

    # -- starting and messaging -------------------------------------------------

    def create_instance(self, message: OrchestrationMessage) -> None:
        started = _started_event(message)
        iid = validate_instance_id(message.instance_id)
        now = self._now()
        instance = sql.start_row(message, started, now)
        with self._write() as db:
            row = db.execute("SELECT status FROM instances WHERE instance_id = ?", (iid,))
            status = row.fetchone()
            if status is None:
                db.execute(sql.INSERT_INSTANCE, instance)
            elif OrchestrationStatus(status[0]).is_terminal:
                _delete_instance_data(db, iid)
                db.execute(sql.RESTART_INSTANCE, instance)
            else:
                raise InstanceExistsError(iid, status[0])
            db.execute(sql.INSERT_MESSAGE, sql.message_row(message, now))
        if sql.visible_at(message, now) <= now:
            self._on_work()

    def enqueue(self, message: OrchestrationMessage) -> None:
        iid = validate_instance_id(message.instance_id)
        now = self._now()
        row = sql.message_row(message, now)
        with self._write() as db:
            if db.execute(sql.INSERT_MESSAGE, row).rowcount:
                db.execute(sql.LOWER_DUE, (iid, row[4]))
            elif db.execute("SELECT 1 FROM instances WHERE instance_id = ?", (iid,)).fetchone():
                return  # a message with this key is already pending
            else:
                raise InstanceNotFoundError(iid)
        if row[4] <= now:
            self._on_work()

    # -- orchestration work -----------------------------------------------------

    def lock_orchestrations(
        self, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[OrchestrationWorkItem]:
        now = self._now()
        until = now + sql.micros(lease)
        token = self._token(owner)
        with self._write() as db:
            rows = db.execute(sql.SELECT_DUE_INSTANCES, (now, max(0, limit))).fetchall()
            candidates = {row[0]: sql.instance_from_row(row) for row in rows}
            taken = self._deliver_inbox(db, list(candidates), now) if candidates else {}
            items = [
                OrchestrationWorkItem(record, taken[iid], token)
                for iid, record in candidates.items()
                if iid in taken
            ]
            db.executemany(sql.LOCK_INSTANCE, ((iid, token, until) for iid in taken))
            # A candidate whose visible messages were all poisoned stays unlocked.
            db.executemany(sql.RECOMPUTE_DUE, ((iid,) for iid in candidates if iid not in taken))
            (next_due,) = db.execute(sql.NEXT_MESSAGE_DUE, (now,)).fetchone()
        return LockBatch(items, sql.optional_time(next_due))

    def _deliver_inbox(
        self, db: sqlite3.Connection, instance_ids: list[str], now: int
    ) -> dict[str, list[InboxMessage]]:
        """Count one delivery of each visible message; poison the undeliverable ones."""
        rows = db.execute(sql.SELECT_VISIBLE_MESSAGES, (json.dumps(instance_ids), now)).fetchall()
        taken: dict[str, list[InboxMessage]] = {}
        spent: list[tuple[Any, ...]] = []
        for msg_id, iid, execution_id, key, event_json, count in rows:
            if count >= self._max_dequeue:
                reason = f"delivered {count} times without a successful episode"
            else:
                try:
                    event = HISTORY_EVENT.validate_json(event_json)
                except ValidationError as error:
                    reason = f"undecodable message: {error}"
                else:
                    message = InboxMessage(str(msg_id), event, execution_id, count + 1)
                    taken.setdefault(iid, []).append(message)
                    continue
            spent.append((msg_id, iid, event_json, reason, count, key, execution_id))
        db.executemany(
            sql.COUNT_DELIVERY,
            ((int(m.message_id),) for messages in taken.values() for m in messages),
        )
        _poison_messages(db, spent, now)
        return taken

    def history_texts(self, instance_id: str) -> list[str]:
        rows = self._db.execute(sql.SELECT_HISTORY, (instance_id,)).fetchall()
        return [text for (text,) in rows]

    def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        iid = item.instance.instance_id
        if commit.instance.instance_id != iid:
            raise ValueError(
                f"commit for instance {commit.instance.instance_id!r} "
                f"does not match the locked instance {iid!r}"
            )
        # Serialize and validate up front: nothing below may fail halfway for bad input.
        now = self._now()
        starts = [(m, _started_event(m)) for m in commit.messages if _starts(m)]
        for message in commit.messages:
            validate_instance_id(message.instance_id)
        expected = (iid, int(item.instance.version or 0), item.lock_token)
        instance = sql.commit_row(commit.instance) + expected
        history = [event.model_dump_json() for event in commit.new_history]
        messages = [sql.message_row(message, now) for message in commit.messages]
        with self._write() as db:
            version = db.execute(sql.COMMIT_INSTANCE, instance).fetchone()
            if version is None:
                raise ConflictError(iid, _conflict_detail(db, item))
            if commit.reset_history:
                db.execute("DELETE FROM history WHERE instance_id = ?", (iid,))
            (seq,) = db.execute(sql.NEXT_SEQ, (iid,)).fetchone()
            db.executemany(sql.INSERT_HISTORY, ((iid, seq + i, e) for i, e in enumerate(history)))
            db.executemany(sql.CONSUME_MESSAGE, ((int(mid), iid) for mid in commit.consumed))
            db.executemany(
                sql.INSERT_WORK_ITEM, (sql.work_item_row(a, now) for a in commit.activities)
            )
            db.executemany(sql.INSERT_INSTANCE, (sql.start_row(m, e, now) for m, e in starts))
            db.executemany(sql.INSERT_MESSAGE, messages)
            db.executemany(sql.LOWER_DUE, sql.earliest_per_instance(messages, skip=iid))
            db.execute(sql.RECOMPUTE_DUE, (iid,))
            (due,) = db.execute(
                "SELECT due_at FROM instances WHERE instance_id = ?", (iid,)
            ).fetchone()
        if (
            commit.activities
            or (due is not None and due <= now)
            or any(m[4] <= now for m in messages)
        ):
            self._on_work()
        return str(version[0])

    def abandon_orchestration(
        self, item: OrchestrationWorkItem, reason: str, retry_after: timedelta
    ) -> None:
        iid = item.instance.instance_id
        now = self._now()
        retry_at = now + sql.micros(retry_after)
        ids = json.dumps([int(message.message_id) for message in item.messages])
        with self._write() as db:
            released = db.execute(
                "UPDATE instances SET locked_by = NULL, locked_until = NULL"
                " WHERE instance_id = ? AND locked_by = ?",
                (iid, item.lock_token),
            ).rowcount
            if not released:
                return  # the lease was lost: the messages belong to another worker now
            rows = db.execute(sql.SELECT_HELD_MESSAGES, (ids, iid)).fetchall()
            spent = [
                (msg_id, iid, body, reason, count, key, execution_id)
                for msg_id, _, key, body, count, execution_id in rows
                if count >= self._max_dequeue
            ]
            _poison_messages(db, spent, now)
            db.executemany(
                "UPDATE inbox SET visible_at = ? WHERE id = ?",
                ((retry_at, row[0]) for row in rows if row[4] < self._max_dequeue),
            )
            db.execute(sql.RECOMPUTE_DUE, (iid,))
        if retry_at <= now and len(spent) < len(rows):
            self._on_work()

    # -- activity work ----------------------------------------------------------

    def lock_activities(
        self, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        now = self._now()
        token = self._token(owner)
        with self._write() as db:
            locked = (token, now + sql.micros(lease), now, max(0, limit))
            rows = db.execute(sql.LOCK_WORK_ITEMS, locked).fetchall()
            # The count includes this delivery: above the limit means the item
            # had already been delivered max_dequeue_count times.
            spent = [(*row[:7], row[7] - 1) for row in rows if row[7] > self._max_dequeue]
            _poison_work_items(db, spent, None, now)
            (next_due,) = db.execute(sql.NEXT_WORK_ITEM_DUE, (now,)).fetchone()
        rows.sort()  # RETURNING has no order: hand work out oldest first
        items = [
            ActivityWorkItem(
                ActivityInvocation(iid, eid, task, name, input_, attempt), token, count
            )
            for _, iid, eid, task, name, input_, attempt, count in rows
            if count <= self._max_dequeue
        ]
        return LockBatch(items, sql.optional_time(next_due))

    def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        if not results:
            return
        now = self._now()
        keys = [_held_key(result.item) for result in results]
        rows = [sql.message_row(result.message, now) for result in results]
        with self._write() as db:
            db.executemany(
                sql.DELIVER_RESULT,
                (row + key + (row[0],) for row, key in zip(rows, keys, strict=True)),
            )
            db.executemany(sql.DELETE_HELD_WORK_ITEM, keys)
            db.executemany(sql.LOWER_DUE, sql.earliest_per_instance(rows))
        if any(row[4] <= now for row in rows):
            self._on_work()

    def abandon_activity(self, item: ActivityWorkItem, reason: str, retry_after: timedelta) -> None:
        now = self._now()
        retry_at = now + sql.micros(retry_after)
        with self._write() as db:
            row = db.execute(sql.SELECT_HELD_WORK_ITEM, _held_key(item)).fetchone()
            if row is None:
                return  # the lease was lost: the item belongs to another worker now
            if row[7] >= self._max_dequeue:
                _poison_work_items(db, [row], reason, now)
                return
            db.execute(sql.RELEASE_WORK_ITEM, (retry_at, row[0]))
        if retry_at <= now:
            self._on_work()

    def renew_activity_lease(self, item: ActivityWorkItem, lease: timedelta) -> None:
        until = self._now() + sql.micros(lease)
        with self._write() as db:
            db.execute(sql.RENEW_WORK_ITEM, (until, *_held_key(item)))

    # -- reading and housekeeping -----------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        row = self._db.execute(sql.SELECT_INSTANCE, (instance_id,)).fetchone()
        return sql.instance_from_row(row) if row else None

    def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        if query.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {query.page_size}")
        where, params = sql.query_filter(query)
        rows = self._db.execute(
            f"SELECT {sql.INSTANCE_COLUMNS} FROM instances WHERE {where}"
            " ORDER BY created_at DESC, instance_id LIMIT ?",
            (*params, query.page_size + 1),
        ).fetchall()
        records = [sql.instance_from_row(row) for row in rows[: query.page_size]]
        more = len(rows) > query.page_size
        return Page(records, sql.continuation(records[-1]) if more else None)

    def purge_instance(self, instance_id: str) -> bool:
        with self._write() as db:
            _delete_instance_data(db, instance_id)
            deleted = db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
            return deleted.rowcount > 0

    def poisoned_messages(self) -> list[PoisonedMessage]:
        rows = self._db.execute(sql.SELECT_POISON).fetchall()
        return [
            PoisonedMessage(queue, iid, body, reason, sql.from_micros(at), count, json.loads(extra))
            for queue, iid, body, reason, at, count, extra in rows
        ]

    def has_ready_work(self) -> bool:
        (ready,) = self._db.execute(sql.HAS_READY_WORK, (self._now(),)).fetchone()
        return bool(ready)


def _started_event(message: OrchestrationMessage) -> ExecutionStarted:
    event = message.event
    if not isinstance(event, ExecutionStarted):
        raise ValueError(f"an instance starts from an ExecutionStarted event, not {event.kind}")
    if event.instance_id != message.instance_id:
        raise ValueError(
            f"ExecutionStarted names instance {event.instance_id!r} "
            f"but the message is addressed to {message.instance_id!r}"
        )
    return event


def _starts(message: OrchestrationMessage) -> bool:
    return isinstance(message.event, ExecutionStarted)


def _conflict_detail(db: sqlite3.Connection, item: OrchestrationWorkItem) -> str:
    row = db.execute(
        "SELECT version, locked_by FROM instances WHERE instance_id = ?",
        (item.instance.instance_id,),
    ).fetchone()
    if row is None:
        return "it was purged while locked"
    if str(row[0]) != item.instance.version:
        return f"version {item.instance.version} is stale (now {row[0]})"
    return "the lease expired and another worker locked it"


def _held_key(item: ActivityWorkItem) -> tuple[str, str, int, str]:
    """Parameters of ``HELD_WORK_ITEM``: the item, as long as ``item`` still holds it."""
    invocation = item.invocation
    return (invocation.instance_id, invocation.execution_id, invocation.task_id, item.lock_token)


def _poison_messages(db: sqlite3.Connection, rows: list[tuple[Any, ...]], now: int) -> None:
    """Move inbox rows ``(id, instance, body, reason, count, key, execution_id)`` to poison."""
    db.executemany(
        sql.INSERT_POISON,
        ((_ORCHESTRATIONS, iid, body, reason, now, count, sql.message_extra(mid, key, eid))
         for mid, iid, body, reason, count, key, eid in rows),
    )  # fmt: skip
    db.executemany("DELETE FROM inbox WHERE id = ?", ((row[0],) for row in rows))


def _poison_work_items(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], reason: str | None, now: int
) -> None:
    """Move work item rows (``WORK_ITEM_COLUMNS``, count = deliveries so far) to poison."""
    poison = []
    for row in rows:
        body, extra = sql.work_item_body(row)
        why = reason or f"delivered {row[7]} times without completing"
        poison.append((_ACTIVITIES, row[1], body, why, now, row[7], extra))
    db.executemany(sql.INSERT_POISON, poison)
    db.executemany("DELETE FROM work_items WHERE id = ?", ((row[0],) for row in rows))


def _delete_instance_data(db: sqlite3.Connection, instance_id: str) -> None:
    """Drop an instance's history, inbox and work items (not its row)."""
    for table in ("history", "inbox", "work_items"):
        db.execute(f"DELETE FROM {table} WHERE instance_id = ?", (instance_id,))


class SqliteStore:
    """The embedded durable store: a task hub in one SQLite file.

    Args:
        path: The database file; it and its parent directories are created.
        clock: Source of "now" for visibility, leases and poisoning; the system
            clock by default (tests pass a manual clock).
        max_dequeue_count: Deliveries after which a message or work item that
            never succeeded is moved to the poison list.
    """

    def __init__(
        self, path: str | Path, *, clock: Clock | None = None, max_dequeue_count: int = 5
    ) -> None:
        if max_dequeue_count < 1:
            raise ValueError(f"max_dequeue_count must be at least 1, got {max_dequeue_count}")
        self.path = Path(path)
        self._state_lock = threading.Lock()
        self._closed = False
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="durable_fx-sqlite")
        engine = partial(_Engine, self.path, clock or SystemClock(), max_dequeue_count, self._wake)
        try:
            # Built on the store thread: the connection may only be used there.
            self._engine = self._executor.submit(engine).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    async def _call(self, call: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # -- starting and messaging -------------------------------------------------

    async def create_instance(self, message: OrchestrationMessage) -> None:
        """Create (or replace a finished) instance and put its start message in the inbox."""
        await self._call(partial(self._engine.create_instance, message))

    async def enqueue(self, message: OrchestrationMessage) -> None:
        """Add a message to an existing instance's inbox, unless its key is pending."""
        await self._call(partial(self._engine.enqueue, message))

    # -- orchestration work -----------------------------------------------------

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[OrchestrationWorkItem]:
        """Lock up to ``limit`` unlocked instances with visible messages, each with all of them."""
        return await self._call(partial(self._engine.lock_orchestrations, owner, limit, lease))

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current execution's history, oldest first (empty if none)."""
        texts = await self._call(partial(self._engine.history_texts, instance_id))
        # One validation of a JSON array is about twice as fast as one per event,
        # and it runs on the caller's thread so the store thread stays free for SQL.
        return _HISTORY.validate_json(f"[{','.join(texts)}]") if texts else []

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        """Persist one episode, release the lock and return the new version.

        Raises ``ConflictError`` (changing nothing) when ``item`` is stale.
        """
        return await self._call(partial(self._engine.commit_episode, item, commit))

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release the lock; retry the messages later, or poison the over-delivered ones."""
        await self._call(partial(self._engine.abandon_orchestration, item, reason, retry_after))

    # -- activity work ----------------------------------------------------------

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        """Lock up to ``limit`` visible work items, oldest first."""
        return await self._call(partial(self._engine.lock_activities, owner, limit, lease))

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        """Deliver each result whose work item this worker still holds; drop the rest."""
        await self._call(partial(self._engine.complete_activities, results))

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        """Release a work item for a retry after ``retry_after``, or poison it."""
        await self._call(partial(self._engine.abandon_activity, item, reason, retry_after))

    async def renew_activity_lease(self, item: ActivityWorkItem, lease: timedelta) -> None:
        """Extend the lease if this worker still holds the item; otherwise do nothing."""
        await self._call(partial(self._engine.renew_activity_lease, item, lease))

    # -- reading and housekeeping -----------------------------------------------

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        return await self._call(partial(self._engine.get_instance, instance_id))

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Matching instances, newest first, ``query.page_size`` at a time."""
        return await self._call(partial(self._engine.query_instances, query))

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance with its history, inbox and work items; False if absent."""
        return await self._call(partial(self._engine.purge_instance, instance_id))

    async def poisoned_messages(self) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first."""
        return await self._call(self._engine.poisoned_messages)

    # -- waiting and closing ----------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109 (protocol signature)
        """Return when this store object makes work visible, or after ``timeout`` seconds."""
        if timeout <= 0 or self._closed:
            return
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._state_lock:
            self._waiters.add(waiter)
        try:
            # Registered before looking, so work committed between the caller's
            # last poll and this check is either seen here or wakes the waiter.
            if await self._call(self._engine.has_ready_work):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter[1].wait(), timeout)
        finally:
            with self._state_lock:
                self._waiters.discard(waiter)

    def _wake(self) -> None:
        """Wake every ``wait_for_work`` caller; safe from any thread."""
        with self._state_lock:
            waiters = list(self._waiters)
        for loop, event in waiters:
            # A waiter's loop may have closed since it registered; nothing to wake then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    async def close(self) -> None:
        """Close the connection, stop the store thread and wake waiters; idempotent."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.close)
        finally:
            self._executor.shutdown(wait=True)
            self._wake()
