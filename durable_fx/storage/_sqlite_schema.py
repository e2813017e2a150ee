"""The SQLite store's file: schema, connection settings, statements and codecs.

Times are stored as INTEGER microseconds since the Unix epoch: they compare as
fast as REAL seconds, and unlike floats they give back exactly the datetime
that was stored.

Two columns do double duty so that every "what is ready?" query is one index
range scan that stops after ``limit`` rows, however much locked or delayed
work the file holds:

* ``instances.due_at`` is when the instance may next be locked: the earliest
  ``visible_at`` of its inbox while unlocked, its lease expiry while locked,
  NULL when its inbox is empty.
* ``work_items.visible_at`` is the lease expiry while an item is locked, so a
  crashed worker's items become visible again without a second condition.

Statements are module constants: sqlite3 caches prepared statements per
connection by their text.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .._history import ExecutionStarted, FailureDetails
from .._state import OrchestrationStatus
from ._records import ActivityInvocation, InstanceQuery, InstanceRecord, OrchestrationMessage

SCHEMA_VERSION = 1

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PENDING = OrchestrationStatus.PENDING.value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id        TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    execution_id       TEXT NOT NULL,
    status             TEXT NOT NULL,
    input              TEXT,
    output             TEXT,
    custom_status      TEXT,
    failure            TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    parent_instance_id TEXT,
    version            INTEGER NOT NULL DEFAULT 1,
    locked_by          TEXT,
    locked_until       INTEGER,
    due_at             INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_due ON instances (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_created ON instances (created_at DESC, instance_id);

CREATE TABLE IF NOT EXISTS history (
    instance_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    event_json  TEXT NOT NULL,
    PRIMARY KEY (instance_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS inbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT NOT NULL,
    execution_id  TEXT,
    msg_key       TEXT NOT NULL,
    event_json    TEXT NOT NULL,
    visible_at    INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance_id, msg_key)
);
CREATE INDEX IF NOT EXISTS inbox_instance ON inbox (instance_id, visible_at);
CREATE INDEX IF NOT EXISTS inbox_visible ON inbox (visible_at);

CREATE TABLE IF NOT EXISTS work_items (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT NOT NULL,
    execution_id  TEXT NOT NULL,
    task_id       INTEGER NOT NULL,
    name          TEXT NOT NULL,
    input         TEXT,
    attempt       INTEGER NOT NULL,
    visible_at    INTEGER NOT NULL,
    locked_by     TEXT,
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance_id, execution_id, task_id)
);
CREATE INDEX IF NOT EXISTS work_items_visible ON work_items (visible_at, id);

CREATE TABLE IF NOT EXISTS poison (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    instance_id   TEXT,
    body          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    poisoned_at   INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL,
    extra         TEXT NOT NULL DEFAULT '{}'
);
"""

# -- statements ----------------------------------------------------------------

INSTANCE_COLUMNS = (
    "instance_id, name, execution_id, status, input, output, custom_status, failure,"
    " created_at, updated_at, parent_instance_id, version"
)
SELECT_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
INSERT_INSTANCE = (
    "INSERT OR IGNORE INTO instances (instance_id, name, execution_id, status, input,"
    " created_at, updated_at, parent_instance_id, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The version keeps counting across incarnations, so a version cached for the
# old instance can never be mistaken for one of the new.
RESTART_INSTANCE = (
    "UPDATE instances SET name = ?2, execution_id = ?3, status = ?4, input = ?5, output = NULL,"
    " custom_status = NULL, failure = NULL, created_at = ?6, updated_at = ?7,"
    " parent_instance_id = ?8, due_at = ?9, version = version + 1, locked_by = NULL,"
    " locked_until = NULL WHERE instance_id = ?1"
)
# Messages to a missing instance are dropped by the WHERE, in the same statement.
INSERT_MESSAGE = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    " SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = ?1)"
)
# A locked instance's due_at is its lease expiry; its commit recomputes it.
LOWER_DUE = (
    "UPDATE instances SET due_at = MIN(COALESCE(due_at, ?2), ?2)"
    " WHERE instance_id = ?1 AND locked_by IS NULL"
)
RECOMPUTE_DUE = (
    "UPDATE instances SET due_at = (SELECT MIN(visible_at) FROM inbox WHERE instance_id = ?1)"
    " WHERE instance_id = ?1"
)
SELECT_DUE_INSTANCES = (
    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1) ORDER BY due_at LIMIT ?2"
)
SELECT_VISIBLE_MESSAGES = (
    "SELECT id, instance_id, execution_id, msg_key, event_json, dequeue_count FROM inbox"
    " WHERE instance_id IN (SELECT value FROM json_each(?1)) AND visible_at <= ?2"
    " ORDER BY visible_at, id"
)
COUNT_DELIVERY = "UPDATE inbox SET dequeue_count = dequeue_count + 1 WHERE id = ?"
LOCK_INSTANCE = (
    "UPDATE instances SET locked_by = ?2, locked_until = ?3, due_at = ?3 WHERE instance_id = ?1"
)
NEXT_MESSAGE_DUE = "SELECT MIN(visible_at) FROM inbox WHERE visible_at > ?"
INSERT_POISON = (
    "INSERT INTO poison (queue, instance_id, body, reason, poisoned_at, dequeue_count, extra)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
COMMIT_INSTANCE = (
    "UPDATE instances SET name = ?, execution_id = ?, status = ?, input = ?, output = ?,"
    " custom_status = ?, failure = ?, created_at = ?, updated_at = ?, parent_instance_id = ?,"
    " version = version + 1, locked_by = NULL, locked_until = NULL"
    " WHERE instance_id = ? AND version = ? AND locked_by = ? RETURNING version"
)
NEXT_SEQ = "SELECT COALESCE(MAX(seq) + 1, 0) FROM history WHERE instance_id = ?"
INSERT_HISTORY = "INSERT INTO history (instance_id, seq, event_json) VALUES (?, ?, ?)"
SELECT_HISTORY = "SELECT event_json FROM history WHERE instance_id = ? ORDER BY seq"
CONSUME_MESSAGE = "DELETE FROM inbox WHERE id = ? AND instance_id = ?"
SELECT_HELD_MESSAGES = (
    "SELECT id, instance_id, msg_key, event_json, dequeue_count, execution_id FROM inbox"
    " WHERE id IN (SELECT value FROM json_each(?)) AND instance_id = ?"
)
INSERT_WORK_ITEM = (
    "INSERT OR IGNORE INTO work_items (instance_id, execution_id, task_id, name, input, attempt,"
    " visible_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
WORK_ITEM_COLUMNS = "id, instance_id, execution_id, task_id, name, input, attempt, dequeue_count"
# While locked, an item's visible_at is its lease expiry (see the module docstring).
LOCK_WORK_ITEMS = (
    "UPDATE work_items SET locked_by = ?1, visible_at = ?2, dequeue_count = dequeue_count + 1"
    " WHERE id IN (SELECT id FROM work_items WHERE visible_at <= ?3"
    f" ORDER BY visible_at, id LIMIT ?4) RETURNING {WORK_ITEM_COLUMNS}"
)
NEXT_WORK_ITEM_DUE = (
    "SELECT MIN(visible_at) FROM work_items WHERE visible_at > ? AND locked_by IS NULL"
)
HELD_WORK_ITEM = "instance_id = ? AND execution_id = ? AND task_id = ? AND locked_by = ?"
SELECT_HELD_WORK_ITEM = f"SELECT {WORK_ITEM_COLUMNS} FROM work_items WHERE {HELD_WORK_ITEM}"
DELETE_HELD_WORK_ITEM = f"DELETE FROM work_items WHERE {HELD_WORK_ITEM}"
RENEW_WORK_ITEM = f"UPDATE work_items SET visible_at = ? WHERE {HELD_WORK_ITEM}"
RELEASE_WORK_ITEM = "UPDATE work_items SET locked_by = NULL, visible_at = ? WHERE id = ?"
# Runs before DELETE_HELD_WORK_ITEM: the EXISTS on the still-held work item is
# what drops the result of a lease that another worker took over.
DELIVER_RESULT = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    " SELECT ?, ?, ?, ?, ?"
    f" WHERE EXISTS (SELECT 1 FROM work_items WHERE {HELD_WORK_ITEM})"
    " AND EXISTS (SELECT 1 FROM instances WHERE instance_id = ?)"
)
HAS_READY_WORK = (
    "SELECT EXISTS (SELECT 1 FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1))"
    " OR EXISTS (SELECT 1 FROM work_items WHERE visible_at <= ?1)"
)
SELECT_POISON = (
    "SELECT queue, instance_id, body, reason, poisoned_at, dequeue_count, extra"
    " FROM poison ORDER BY id"
)

InstanceRow = tuple[
    str, str, str, str, str | None, str | None, str | None, str | None, int, int, str | None, int
]
MessageRow = tuple[str, str | None, str, str, int]
"""``(instance_id, execution_id, key, event_json, visible_at)``: an ``INSERT_MESSAGE`` row."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store file and bring its schema up to date."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: the store issues BEGIN IMMEDIATE itself, so a write
    # transaction takes the file's write lock up front instead of failing with
    # SQLITE_BUSY halfway through when another process got there first.
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, cached_statements=256)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-16000")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"{path} was written by a newer durable_fx (schema {found}, this one reads "
                f"{SCHEMA_VERSION}); upgrade durable_fx or use another file"
            )
        if found < SCHEMA_VERSION:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# -- codecs --------------------------------------------------------------------


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The tz-aware UTC datetime ``to_micros`` encoded."""
    return _EPOCH + timedelta(microseconds=micros)


def optional_time(micros: int | None) -> datetime | None:
    """``from_micros`` that passes ``None`` (SQL NULL) through."""
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


def micros(duration: timedelta) -> int:
    """A duration in whole microseconds (negative durations count as zero)."""
    return max(0, duration // _MICROSECOND)


def instance_from_row(row: InstanceRow) -> InstanceRecord:
    """Build an ``InstanceRecord`` from a row selected with ``INSTANCE_COLUMNS``."""
    (iid, name, execution_id, status, input_, output, custom, failure, created, updated, parent,
     version) = row  # fmt: skip
    return InstanceRecord(
        instance_id=iid,
        name=name,
        execution_id=execution_id,
        status=OrchestrationStatus(status),
        created_at=from_micros(created),
        updated_at=from_micros(updated),
        input=input_,
        output=output,
        custom_status=custom,
        failure=FailureDetails.model_validate_json(failure) if failure else None,
        parent_instance_id=parent,
        version=str(version),
    )


def commit_row(record: InstanceRecord) -> tuple[Any, ...]:
    """The new-values part of a ``COMMIT_INSTANCE`` row."""
    return (
        record.name,
        record.execution_id,
        record.status.value,
        record.input,
        record.output,
        record.custom_status,
        record.failure.model_dump_json() if record.failure else None,
        to_micros(record.created_at),
        to_micros(record.updated_at),
        record.parent_instance_id,
    )


def visible_at(message: OrchestrationMessage, now: int) -> int:
    """When ``message`` may be delivered, in microseconds (``now`` if not delayed)."""
    return to_micros(message.visible_at) if message.visible_at is not None else now


def message_row(message: OrchestrationMessage, now: int) -> MessageRow:
    """An ``INSERT_MESSAGE`` row for ``message``."""
    return (
        message.instance_id,
        message.execution_id,
        message.key,
        message.event.model_dump_json(),
        visible_at(message, now),
    )


def start_row(
    message: OrchestrationMessage, started: ExecutionStarted, now: int
) -> tuple[Any, ...]:
    """An ``INSERT_INSTANCE`` row for the instance an ``ExecutionStarted`` message creates."""
    created = to_micros(started.timestamp)
    parent = started.parent.instance_id if started.parent else None
    return (message.instance_id, started.name, started.execution_id, _PENDING, started.input,
            created, created, parent, visible_at(message, now))  # fmt: skip


def earliest_per_instance(rows: Iterable[MessageRow], skip: str = "") -> list[tuple[str, int]]:
    """``(instance_id, earliest visible_at)`` per target but ``skip``, for ``LOWER_DUE``."""
    earliest: dict[str, int] = {}
    for iid, _, _, _, visible in rows:
        if iid != skip and visible < earliest.get(iid, visible + 1):
            earliest[iid] = visible
    return list(earliest.items())


def work_item_row(invocation: ActivityInvocation, now: int) -> tuple[Any, ...]:
    """An ``INSERT_WORK_ITEM`` row."""
    i = invocation
    return (i.instance_id, i.execution_id, i.task_id, i.name, i.input, i.attempt, now)


def work_item_body(row: tuple[Any, ...]) -> tuple[str, str]:
    """Poison ``(body, extra)`` for a row selected with ``WORK_ITEM_COLUMNS``."""
    _, iid, eid, task, name, input_, attempt, _ = row
    body = json.dumps(
        {"instance_id": iid, "execution_id": eid, "task_id": task, "name": name,
         "input": input_, "attempt": attempt}
    )  # fmt: skip
    return body, json.dumps({"execution_id": eid, "task_id": str(task), "name": name})


def message_extra(message_id: int, key: str, execution_id: str | None) -> str:
    """The poison ``extra`` of an inbox message, as JSON."""
    extra = {"message_id": str(message_id), "key": key}
    if execution_id is not None:
        extra["execution_id"] = execution_id
    return json.dumps(extra)


# -- instance queries ----------------------------------------------------------


def query_filter(query: InstanceQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of an instance query, continuation included."""
    clauses = ["1"]
    params: list[Any] = []
    if query.statuses:
        clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
        params.extend(sorted(status.value for status in query.statuses))
    if query.name is not None:
        clauses.append("name = ?")
        params.append(query.name)
    if query.created_from is not None:
        clauses.append("created_at >= ?")
        params.append(to_micros(query.created_from))
    if query.created_to is not None:
        clauses.append("created_at <= ?")
        params.append(to_micros(query.created_to))
    if query.instance_id_prefix:
        clauses.append("substr(instance_id, 1, ?) = ?")
        params.extend((len(query.instance_id_prefix), query.instance_id_prefix))
    if query.continuation is not None:
        created, after = _parse_continuation(query.continuation)
        clauses.append("(created_at < ? OR (created_at = ? AND instance_id > ?))")
        params.extend((created, created, after))
    return " AND ".join(clauses), params


def continuation(last: InstanceRecord) -> str:
    """An opaque keyset token: where the next page starts in (created_at DESC, id) order."""
    raw = json.dumps([to_micros(last.created_at), last.instance_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _parse_continuation(token: str) -> tuple[int, str]:
    try:
        created, after = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error) as error:
        raise _bad_continuation(token) from error
    if not isinstance(created, int) or not isinstance(after, str):
        raise _bad_continuation(token)
    return created, after


def _bad_continuation(token: str) -> ValueError:
    return ValueError(
        f"invalid continuation token {token[:40]!r}: pass back the one a query returned"
    )
