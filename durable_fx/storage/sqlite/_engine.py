"""The SQLite store's thread-side half: transactions and the calls they run.

``Engine`` owns the connection and runs on the store thread only (see
``_thread``). Its write calls run inside a transaction the thread opens,
possibly together with other calls (group commit), so each one raises its
expected errors (``ConflictError``, ``InstanceExistsError``...) before it
writes anything. Its arguments are built on the caller's thread (``_rows``:
``CommitPlan`` and the batch codecs), so the store thread spends its time in
SQLite rather than in serialization.

About 500 lines, one class: the SQL side of every Store method, which share
the one connection and the thread's transaction.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import ValidationError

from ..._clock import Clock
from ..._errors import (
    ConflictError,
    DurableFxError,
    InstanceExistsError,
    InstanceNotFoundError,
)
from ..._history import HISTORY_EVENT
from ..._metrics import record_poisoned
from ..._state import OrchestrationStatus
from .._protocol import Accept
from .._records import (
    ActivityInvocation,
    ActivityWorkItem,
    InboxMessage,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationWorkItem,
    Page,
    PoisonedMessage,
    QueueBacklog,
    accepts_rewind,
    finished_refusal,
)
from .._trace_codec import trace_of
from . import _schema as schema
from . import _sql as sql
from ._query import continuation, query_filter
from ._rows import (
    CommitPlan,
    dumps,
    from_micros,
    instance_from_row,
    message_extra,
    micros,
    optional_time,
    requeued_items,
    to_micros,
    work_item_poison,
)
from ._thread import GroupBroken

__all__ = ["Engine"]

T = TypeVar("T")

_ORCHESTRATIONS = "orchestrations"
_ACTIVITIES = "activities"
_FULL = 2  # PRAGMA synchronous
_EXPECTED = (DurableFxError, ValueError)
"""Errors a call raises before writing, which leave the rest of its group intact."""


class Engine:
    """The synchronous store on its own thread: transactions and the calls they run."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        max_dequeue_count: int,
        connect: Callable[[Path], sqlite3.Connection] = schema.connect,
    ) -> None:
        # Opened on first use, on the store thread (opening may wait for a lock).
        self._path = path
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._clock = clock
        self._max_dequeue = max_dequeue_count
        self._work_arrived = False
        # Tokens differ between lock calls, even of one owner: a worker must not
        # complete, with an old lease, work that was locked again since.
        self._token_prefix = os.urandom(6).hex()
        self._token_counter = itertools.count()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect(self._path)
        return self._conn

    def open(self) -> None:
        """Open the file and bring its schema up to date, unless that is done."""
        _ = self._db

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    @contextmanager
    def unsynced(self) -> Iterator[None]:
        """Commits in the block skip the sync ``synchronous=FULL`` does (for leases only).

        A lease nobody was told about may be lost to a power cut; the next
        synced commit syncs it too, since the WAL is written in order.
        """
        db = self._db
        if db.execute("PRAGMA synchronous").fetchone()[0] < _FULL:
            yield
            return
        db.execute("PRAGMA synchronous=NORMAL")  # refused inside a transaction
        try:
            yield
        finally:
            try:
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error:
                self._conn = None  # never go on unsynced: the next call opens a new connection
                db.close()
                raise

    def _now(self) -> int:
        return to_micros(self._clock.now())

    def _token(self, owner: str) -> str:
        return f"{owner}#{self._token_prefix}.{next(self._token_counter)}"

    def _notify(self) -> None:
        """Note that this transaction makes work visible now (waiters wake after commit)."""
        self._work_arrived = True

    def take_work_arrived(self) -> bool:
        arrived, self._work_arrived = self._work_arrived, False
        return arrived

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            self._work_arrived = False
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def run_alone(self, call: Callable[[], T]) -> T:
        """Run one write call in its own transaction."""
        with self._transaction():
            return call()

    def run_group(
        self, calls: Sequence[Callable[[], Any]], *, isolated: bool = False
    ) -> list[tuple[bool, Any]]:
        """Run write calls in one transaction: ``(True, result)`` or ``(False, error)`` each.

        Raises ``GroupBroken`` (having rolled everything back) if a call fails
        in any other way than an expected error raised before it wrote
        anything; errors of the transaction itself (say, the file stayed
        locked by another process) propagate as they are. ``isolated`` runs
        each call in a SAVEPOINT instead, undoing only a failed call's writes.
        """
        outcomes: list[tuple[bool, Any]] = []
        with self._transaction():
            for call in calls:
                if isolated:
                    outcomes.append(self._in_savepoint(call))
                    continue
                before = self._db.total_changes
                try:
                    outcomes.append((True, call()))
                except _EXPECTED as error:
                    if self._db.total_changes != before:
                        # It wrote first: only rolling back the group undoes that.
                        raise GroupBroken from error
                    outcomes.append((False, error))
                except Exception as error:
                    raise GroupBroken from error
        return outcomes

    def _in_savepoint(self, call: Callable[[], Any]) -> tuple[bool, Any]:
        self._db.execute("SAVEPOINT call")
        try:
            result = call()
        except Exception as error:
            self._db.execute("ROLLBACK TO call")
            return False, error
        finally:
            self._db.execute("RELEASE call")
        return True, result

    # -- starting and messaging -------------------------------------------------

    def create_instance(
        self, iid: str, instance: tuple[Any, ...], message: str, replaceable: frozenset[str]
    ) -> None:
        db = self._db
        now = self._now()
        status = db.execute(sql.SELECT_STATUS, (iid,)).fetchone()
        if status is None:
            db.execute(sql.INSERT_INSTANCE, (*instance, now))
        elif status[0] in replaceable and OrchestrationStatus(status[0]).is_terminal:
            _delete_instance_data(db, iid)
            db.execute(sql.RESTART_INSTANCE, (*instance, now))
        else:
            raise InstanceExistsError(iid, status[0])
        db.execute(sql.INSERT_MESSAGES, (message, now))
        if _visible(instance[-1], now):
            self._notify()

    def enqueue(self, iid: str, key: str, kind: str, message: str, delay: int | None) -> bool:
        db = self._db
        # One read answers both questions before anything is written, so a refusal
        # leaves the rest of a group commit intact (see run_group).
        found = db.execute(sql.SELECT_STATUS_AND_KEY, (iid, key)).fetchone()
        if found is None:
            raise InstanceNotFoundError(iid)
        status, used = found
        if used:
            return False
        if refusal := finished_refusal(iid, kind, OrchestrationStatus(status)):
            raise refusal
        db.execute(sql.INSERT_USED_KEY, (iid, key))
        now = self._now()
        if not db.execute(sql.INSERT_MESSAGES, (message, now)).rowcount:
            return False  # a message with this key is pending (put there by a worker)
        if accepts_rewind(kind):
            db.execute(sql.ACCEPT_REWIND, (iid, now))
        db.execute(sql.LOWER_DUE, (iid, now if delay is None else delay))
        if _visible(delay, now):
            self._notify()
        return True

    # -- orchestration work -----------------------------------------------------

    def lock_orchestrations(
        self, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        db = self._db
        now = self._now()
        if accept is None:
            (found,) = db.execute(sql.SELECT_DUE_INSTANCES, (now, max(0, limit))).fetchone()
        else:
            # The caller's filter, in the query: a page of instances it does not run
            # must not hide the ones it does.
            db.create_function("dfx_accept", 2, accept)
            (found,) = db.execute(sql.SELECT_DUE_ACCEPTED, (now, max(0, limit))).fetchone()
        candidates = {row[0]: row for row in json.loads(found)}
        items: list[OrchestrationWorkItem] = []
        if candidates:
            token = self._token(owner)
            taken = self._deliver_inbox(dumps(list(candidates)), now)
            if taken:
                until = now + micros(lease)
                db.execute(sql.LOCK_INSTANCES, (dumps(list(taken)), token, until))
            if len(taken) < len(candidates):
                # Every visible message of these was poisoned: they stay unlocked.
                idle = [iid for iid in candidates if iid not in taken]
                db.execute(sql.RECOMPUTE_DUE, (dumps(idle),))
            items = [
                OrchestrationWorkItem(instance_from_row(row), taken[iid], token)
                for iid, row in candidates.items()
                if iid in taken
            ]
        (next_due,) = db.execute(sql.NEXT_MESSAGE_DUE, (now,)).fetchone()
        return LockBatch(items, optional_time(next_due))

    def _deliver_inbox(self, instance_ids: str, now: int) -> dict[str, list[InboxMessage]]:
        """Count one delivery of each visible message; poison the undeliverable ones."""
        db = self._db
        (found,) = db.execute(sql.SELECT_VISIBLE_MESSAGES, (instance_ids, now)).fetchone()
        rows = json.loads(found)
        rows.sort(key=lambda row: (row[6], row[0]))  # oldest first: (visible_at, arrival)
        taken: dict[str, list[InboxMessage]] = {}
        spent: list[tuple[Any, ...]] = []
        for msg_id, iid, execution_id, key, event_json, count, _ in rows:
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
        delivered = [int(m.message_id) for messages in taken.values() for m in messages]
        if delivered:
            db.execute(sql.COUNT_DELIVERIES, (dumps(delivered),))
        self._poison_messages(spent, now)
        return taken

    def history(self, instance_id: str) -> str:
        (text,) = self._db.execute(sql.SELECT_HISTORY, (instance_id,)).fetchone()
        return cast(str, text)

    def commit_episode(self, plan: CommitPlan) -> str:
        db = self._db
        iid = plan.instance_id
        now = self._now()
        row = db.execute(sql.COMMIT_INSTANCE, plan.update).fetchone()
        if row is None:
            held = plan.update[-2:]
            state = db.execute(sql.SELECT_LOCK_STATE, (iid,)).fetchone()
            kept = state is not None and state[1] == held[1]
            raise ConflictError(iid, _conflict_detail(db, iid, held), lock_kept=kept)
        version, history_len = row
        if plan.reset:
            db.execute(sql.DELETE_HISTORY, (iid,))
        if plan.history_count:
            first_seq = history_len - plan.history_count
            db.execute(sql.INSERT_HISTORY, (iid, first_seq, plan.history))
        if plan.consumed:
            db.execute(sql.CONSUME_MESSAGES, (iid, plan.consumed))
        if plan.cancelled:
            db.execute(sql.CANCEL_MESSAGES, (iid, plan.cancelled))
        if plan.activities:
            db.execute(sql.INSERT_WORK_ITEMS, (plan.activities, now))
            self._notify()
        if plan.starts:
            db.executemany(sql.INSERT_INSTANCE, [(*start, now) for start in plan.starts])
        if plan.messages:
            db.execute(sql.INSERT_MESSAGES, (plan.messages, now))
        if plan.targets:
            db.execute(sql.RECOMPUTE_DUE, (plan.targets,))
        (due,) = db.execute(sql.RECOMPUTE_OWN_DUE, (iid,)).fetchone()
        if _visible(due, now, empty=False) or any(_visible(d, now) for d in plan.delays):
            self._notify()
        return str(version)

    def abandon_orchestration(
        self, iid: str, token: str, message_ids: str, reason: str, retry_after: timedelta
    ) -> None:
        db = self._db
        now = self._now()
        if not db.execute(sql.RELEASE_INSTANCE, (iid, token)).rowcount:
            return  # the lease was lost: the messages belong to another worker now
        rows = db.execute(sql.SELECT_HELD_MESSAGES, (iid, message_ids)).fetchall()
        spent = [
            (msg_id, iid, body, reason, count, key, execution_id)
            for msg_id, key, body, count, execution_id in rows
            if count >= self._max_dequeue
        ]
        self._poison_messages(spent, now)
        retry = [row[0] for row in rows if row[3] < self._max_dequeue]
        if retry:
            db.execute(sql.DELAY_MESSAGES, (now + micros(retry_after), dumps(retry)))
        (due,) = db.execute(sql.RECOMPUTE_OWN_DUE, (iid,)).fetchone()
        if _visible(due, now, empty=False):
            self._notify()

    def renew_orchestration_lease(self, iid: str, token: str, lease: timedelta) -> None:
        # A lost lock has another holder's token (or none): the WHERE leaves it alone.
        self._db.execute(sql.RENEW_INSTANCE, (iid, token, self._now() + micros(lease)))

    def _poison_messages(self, rows: list[tuple[Any, ...]], now: int) -> None:
        """Move inbox rows ``(id, instance, body, reason, count, key, execution_id)`` to poison."""
        if not rows:
            return
        self._db.executemany(
            sql.INSERT_POISON,
            [(_ORCHESTRATIONS, iid, body, reason, now, count, message_extra(mid, key, eid))
             for mid, iid, body, reason, count, key, eid in rows],
        )  # fmt: skip
        self._db.execute(sql.DELETE_MESSAGES, (dumps([row[0] for row in rows]),))
        record_poisoned(_ORCHESTRATIONS, len(rows))

    # -- activity work ----------------------------------------------------------

    def lock_activities(
        self, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        db = self._db
        now = self._now()
        (found,) = db.execute(sql.SELECT_READY_WORK_ITEMS, (now, max(0, limit))).fetchone()
        rows = json.loads(found)
        take = [row for row in rows if row[7] < self._max_dequeue]
        token = self._token(owner)
        if take:
            ids = dumps([row[0] for row in take])
            db.execute(sql.LOCK_WORK_ITEMS, (token, now + micros(lease), ids))
        if len(take) < len(rows):
            spent = [row for row in rows if row[7] >= self._max_dequeue]
            self._poison_work_items(spent, None, now)
        (next_due,) = db.execute(sql.NEXT_WORK_ITEM_DUE, (now,)).fetchone()
        items = [
            ActivityWorkItem(
                ActivityInvocation(
                    iid, eid, task, name, input_, attempt, hb_timeout, hb_details, trace_of(traced)
                ),
                token,
                n + 1,
            )
            for _, iid, eid, task, name, input_, attempt, n, hb_timeout, hb_details, traced in take
        ]
        return LockBatch(items, optional_time(next_due))

    def complete_activities(self, results: str, delays: list[int | None], targets: str) -> None:
        db = self._db
        now = self._now()
        delivered = db.execute(sql.DELIVER_RESULTS, (results, now)).rowcount
        db.execute(sql.DELETE_COMPLETED, (results,))
        if delivered:
            db.execute(sql.RECOMPUTE_DUE, (targets,))
            if any(_visible(delay, now) for delay in delays):
                self._notify()

    def abandon_activity(
        self, key: tuple[str, str, int, str], reason: str, retry_after: timedelta
    ) -> None:
        db = self._db
        now = self._now()
        row = db.execute(sql.SELECT_HELD_WORK_ITEM, key).fetchone()
        if row is None:
            return  # the lease was lost: the item belongs to another worker now
        if row[7] >= self._max_dequeue:
            self._poison_work_items([row], reason, now)
            return
        retry_at = now + micros(retry_after)
        db.execute(sql.RELEASE_WORK_ITEM, (retry_at, row[0]))
        if retry_at <= now:
            self._notify()

    def renew_activity_lease(
        self, key: tuple[str, str, int, str], lease: timedelta, heartbeat: str | None
    ) -> None:
        self._db.execute(sql.RENEW_WORK_ITEM, (self._now() + micros(lease), heartbeat, *key))

    def _poison_work_items(self, rows: list[Any], reason: str | None, now: int) -> None:
        """Move work item rows (``WORK_ITEM_COLUMNS``, count = deliveries so far) to poison."""
        poison = []
        for row in rows:
            body, extra = work_item_poison(row)
            why = reason or f"delivered {row[7]} times without completing"
            poison.append((_ACTIVITIES, row[1], body, why, now, row[7], extra))
        self._db.executemany(sql.INSERT_POISON, poison)
        self._db.execute(sql.DELETE_WORK_ITEMS, (dumps([row[0] for row in rows]),))
        record_poisoned(_ACTIVITIES, len(rows))

    # -- reading and housekeeping -----------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        row = self._db.execute(sql.SELECT_INSTANCE, (instance_id,)).fetchone()
        return instance_from_row(row) if row else None

    def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        where, params = query_filter(query)
        rows = self._db.execute(
            f"SELECT {sql.INSTANCE_COLUMNS} FROM instances WHERE {where}"
            " ORDER BY created_at DESC, instance_id LIMIT ?",
            (*params, query.page_size + 1),
        ).fetchall()
        records = [instance_from_row(row) for row in rows[: query.page_size]]
        more = len(rows) > query.page_size
        return Page(records, continuation(records[-1]) if more else None)

    def purge_instance(self, instance_id: str) -> bool:
        _delete_instance_data(self._db, instance_id)
        deleted = self._db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
        return deleted.rowcount > 0

    def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        if not version.isdigit():
            return False
        deleted = self._db.execute(sql.DELETE_IDLE_INSTANCE, (instance_id, int(version)))
        if deleted.rowcount == 0:
            return False
        _delete_instance_data(self._db, instance_id)
        return True

    def count_instances(self) -> dict[OrchestrationStatus, int]:
        rows = self._db.execute(sql.COUNT_BY_STATUS).fetchall()
        return {OrchestrationStatus(status): int(count) for status, count in rows}

    def backlog(self) -> list[QueueBacklog]:
        now = self._now()
        found = []
        queries = ((_ORCHESTRATIONS, sql.DUE_MESSAGES), (_ACTIVITIES, sql.DUE_WORK_ITEMS))
        for queue, query in queries:
            due, oldest = self._db.execute(query, (now,)).fetchone()
            since = from_micros(oldest) if oldest is not None else None
            found.append(QueueBacklog.at(queue, int(due), since, from_micros(now)))
        return found

    def poisoned_messages(self, instance_id: str | None) -> list[PoisonedMessage]:
        if instance_id is None:
            rows = self._db.execute(sql.SELECT_POISON).fetchall()
        else:
            rows = self._db.execute(sql.SELECT_INSTANCE_POISON, (instance_id,)).fetchall()
        return [
            PoisonedMessage(str(pid), queue, iid, body, reason, from_micros(at), count,
                            json.loads(extra))
            for pid, queue, iid, body, reason, at, count, extra in rows
        ]  # fmt: skip

    def requeue_poisoned(self, poison_ids: str) -> int:
        """Move poison rows back to the inbox or the work items, in one transaction."""
        db = self._db
        now = self._now()
        rows = db.execute(sql.SELECT_POISON_BY_ID, (poison_ids,)).fetchall()
        ids, inbox, work = requeued_items(rows)
        if inbox:
            # A message whose key is pending again meanwhile is ignored, not doubled.
            db.execute(sql.INSERT_MESSAGES, (dumps(inbox), now))
            db.execute(sql.RECOMPUTE_DUE, (dumps(sorted({item[0] for item in inbox})),))
        if work:
            db.execute(sql.INSERT_WORK_ITEMS, (dumps(work), now))
        if ids:
            db.execute(sql.DELETE_POISON, (dumps(ids),))
            self._notify()
        return len(ids)

    def delete_poisoned(self, poison_ids: str) -> int:
        return self._db.execute(sql.DELETE_POISON, (poison_ids,)).rowcount

    def has_ready_work(self) -> bool:
        (ready,) = self._db.execute(sql.HAS_READY_WORK, (self._now(),)).fetchone()
        return bool(ready)


def _visible(due: int | None, now: int, *, empty: bool = True) -> bool:
    """Whether something due at ``due`` is visible at ``now``; ``None`` means ``empty``."""
    return empty if due is None else due <= now


def _conflict_detail(db: sqlite3.Connection, iid: str, held: tuple[Any, ...]) -> str:
    row = db.execute(sql.SELECT_LOCK_STATE, (iid,)).fetchone()
    if row is None:
        return "it was purged while locked"
    if row[0] != held[0]:
        return f"version {held[0]} is stale (now {row[0]})"
    return "the lease expired and another worker locked it"


def _delete_instance_data(db: sqlite3.Connection, instance_id: str) -> None:
    """Drop an instance's history, inbox, work items and used keys (not its row)."""
    for table in ("history", "inbox", "work_items", "used_keys"):
        db.execute(f"DELETE FROM {table} WHERE instance_id = ?", (instance_id,))
