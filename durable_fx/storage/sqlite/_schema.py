"""The SQLite store's file: schema, connection settings, statements and codecs.

Times are INTEGER microseconds since the Unix epoch: they compare as fast as
REAL seconds and, unlike floats, give back exactly the datetime stored.

Two columns do double duty so that every "what is ready?" query is one index
range scan that stops after ``limit`` rows, however much locked or delayed
work the file holds:

* ``instances.due_at`` is when the instance may next be locked: the earliest
  ``visible_at`` of its inbox while unlocked, its lease expiry while locked,
  NULL when its inbox is empty.
* ``work_items.visible_at`` is the lease expiry while an item is locked, so a
  crashed worker's items become visible again with no second condition.

Batches travel as one JSON array parameter (``json_each``) and come back as
one JSON array (``json_group_array``): each statement is then a single SQLite
step, and the store thread gives up and retakes the GIL once per statement
rather than once per row. Statements are module constants because sqlite3
caches prepared statements per connection by their text.

The module is long because it holds every SQL text of the store, kept beside
the layout the statements rely on so the two are read (and changed) together.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ..._errors import StoreBusyError
from ..._history import ExecutionStarted, FailureDetails
from ..._state import OrchestrationStatus
from .._keyset import decode_keyset, encode_keyset
from .._records import (
    ActivityInvocation,
    ActivityResult,
    ActivityWorkItem,
    InstanceQuery,
    InstanceRecord,
    OrchestrationMessage,
)

__all__ = [
    "COMMIT_INSTANCE",
    "CONSUME_MESSAGES",
    "COUNT_DELIVERIES",
    "DELAY_MESSAGES",
    "DELETE_COMPLETED",
    "DELETE_HISTORY",
    "DELETE_MESSAGES",
    "DELETE_POISON",
    "DELETE_WORK_ITEMS",
    "DELIVER_RESULTS",
    "HAS_READY_WORK",
    "HELD_WORK_ITEM",
    "INSERT_HISTORY",
    "INSERT_INSTANCE",
    "INSERT_MESSAGES",
    "INSERT_POISON",
    "INSERT_USED_KEY",
    "INSERT_WORK_ITEMS",
    "INSTANCE_COLUMNS",
    "LOCK_INSTANCES",
    "LOCK_WORK_ITEMS",
    "LOWER_DUE",
    "NEXT_MESSAGE_DUE",
    "NEXT_WORK_ITEM_DUE",
    "RECOMPUTE_DUE",
    "RECOMPUTE_OWN_DUE",
    "RELEASE_INSTANCE",
    "RELEASE_WORK_ITEM",
    "RENEW_WORK_ITEM",
    "RESTART_INSTANCE",
    "SCHEMA_VERSION",
    "SELECT_DUE_INSTANCES",
    "SELECT_HELD_MESSAGES",
    "SELECT_HELD_WORK_ITEM",
    "SELECT_HISTORY",
    "SELECT_INSTANCE",
    "SELECT_INSTANCE_POISON",
    "SELECT_LOCK_STATE",
    "SELECT_POISON",
    "SELECT_POISON_BY_ID",
    "SELECT_READY_WORK_ITEMS",
    "SELECT_STATUS",
    "SELECT_STATUS_AND_KEY",
    "SELECT_VISIBLE_MESSAGES",
    "SYNCHRONOUS_LEVELS",
    "WORK_ITEM_COLUMNS",
    "busy_error",
    "commit_values",
    "connect",
    "continuation",
    "delay_of",
    "from_micros",
    "held_key",
    "instance_from_row",
    "invocation_item",
    "is_busy",
    "message_extra",
    "message_item",
    "micros",
    "optional_time",
    "query_filter",
    "requeued_items",
    "result_item",
    "start_row",
    "to_micros",
    "work_item_poison",
]

SCHEMA_VERSION = 3
"""1: the first layout. 2: poison ids are never reused (they name messages to requeue or
delete, so an old id must not hit a newer message), and ``poison_instance``. 3: ``used_keys``,
the keys of enqueued messages, remembered until the instance is purged or replaced."""
_MIN_SQLITE = (3, 35, 0)  # RETURNING

SYNCHRONOUS_LEVELS = {"full": 2, "normal": 1}
"""``PRAGMA synchronous`` values the store may run with, by name."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PENDING = OrchestrationStatus.PENDING.value

# AUTOINCREMENT: a deleted or requeued row's id is never given to a later one.
_POISON_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue         TEXT NOT NULL,
    instance_id   TEXT,
    body          TEXT NOT NULL,
    reason        TEXT NOT NULL,
    poisoned_at   INTEGER NOT NULL,
    dequeue_count INTEGER NOT NULL,
    extra         TEXT NOT NULL DEFAULT '{{}}'
);
"""

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
    history_len        INTEGER NOT NULL DEFAULT 0,
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
    id            INTEGER PRIMARY KEY,
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
    id            INTEGER PRIMARY KEY,
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

-- Keys of the messages Store.enqueue accepted (event ids of clients): a repeat
-- is a duplicate even after the first copy was consumed.
CREATE TABLE IF NOT EXISTS used_keys (
    instance_id TEXT NOT NULL,
    msg_key     TEXT NOT NULL,
    PRIMARY KEY (instance_id, msg_key)
) WITHOUT ROWID;

{poison_table}
CREATE INDEX IF NOT EXISTS poison_instance ON poison (instance_id) WHERE instance_id IS NOT NULL;
""".replace("{poison_table}", _POISON_TABLE.format(name="poison"))

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # Version 1 reused the ids of deleted poison rows (a plain INTEGER PRIMARY KEY);
    # only a rebuilt table can have AUTOINCREMENT.
    2: (
        _POISON_TABLE.format(name="poison_v2"),
        "INSERT INTO poison_v2 SELECT id, queue, instance_id, body, reason, poisoned_at,"
        " dequeue_count, extra FROM poison",
        "DROP TABLE poison",
        "ALTER TABLE poison_v2 RENAME TO poison",
    ),
}
"""Statements that bring a file of the version before the key up to the key's version."""


def _fields(*names: str) -> str:
    """Name the items of each array that ``json_each`` yields, in order."""
    return ", ".join(f"json_extract(value, '$[{i}]') AS {name}" for i, name in enumerate(names))


# -- statements: instances -----------------------------------------------------

INSTANCE_COLUMNS = (
    "instance_id, name, execution_id, status, input, output, custom_status, failure,"
    " created_at, updated_at, parent_instance_id, version"
)
SELECT_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
SELECT_STATUS = "SELECT status FROM instances WHERE instance_id = ?"
SELECT_STATUS_AND_KEY = (
    "SELECT status, EXISTS (SELECT 1 FROM used_keys WHERE instance_id = ?1 AND msg_key = ?2)"
    " FROM instances WHERE instance_id = ?1"
)
INSERT_USED_KEY = "INSERT OR IGNORE INTO used_keys (instance_id, msg_key) VALUES (?, ?)"
INSERT_INSTANCE = (
    "INSERT OR IGNORE INTO instances (instance_id, name, execution_id, status, input,"
    " created_at, updated_at, parent_instance_id, due_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, COALESCE(?9, ?10))"
)
# The version keeps counting across incarnations, so a version cached for the
# old instance can never be mistaken for one of the new.
RESTART_INSTANCE = (
    "UPDATE instances SET name = ?2, execution_id = ?3, status = ?4, input = ?5, output = NULL,"
    " custom_status = NULL, failure = NULL, created_at = ?6, updated_at = ?7,"
    " parent_instance_id = ?8, due_at = COALESCE(?9, ?10), version = version + 1, history_len = 0,"
    " locked_by = NULL, locked_until = NULL WHERE instance_id = ?1"
)
COMMIT_INSTANCE = (
    "UPDATE instances SET name = ?, execution_id = ?, status = ?, input = ?, output = ?,"
    " custom_status = ?, failure = ?, created_at = ?, updated_at = ?, parent_instance_id = ?,"
    " history_len = CASE WHEN ? THEN 0 ELSE history_len END + ?, version = version + 1,"
    " locked_by = NULL, locked_until = NULL"
    " WHERE instance_id = ? AND version = ? AND locked_by = ? RETURNING version, history_len"
)
SELECT_LOCK_STATE = "SELECT version, locked_by FROM instances WHERE instance_id = ?"
RELEASE_INSTANCE = (
    "UPDATE instances SET locked_by = NULL, locked_until = NULL"
    " WHERE instance_id = ? AND locked_by = ?"
)
# due_at moves with the lease: a locked instance is due when its lease runs out.
RENEW_INSTANCE = (
    "UPDATE instances SET locked_until = ?3, due_at = ?3 WHERE instance_id = ?1 AND locked_by = ?2"
)
# Only unlocked instances: a locked one is due at its lease expiry until its
# commit (or abandon) recomputes this.
RECOMPUTE_DUE = (
    "UPDATE instances SET due_at = (SELECT MIN(visible_at) FROM inbox"
    " WHERE inbox.instance_id = instances.instance_id)"
    " WHERE instance_id IN (SELECT value FROM json_each(?)) AND locked_by IS NULL"
)
LOWER_DUE = (
    "UPDATE instances SET due_at = MIN(COALESCE(due_at, ?2), ?2)"
    " WHERE instance_id = ?1 AND locked_by IS NULL"
)
RECOMPUTE_OWN_DUE = (
    "UPDATE instances SET due_at = (SELECT MIN(visible_at) FROM inbox WHERE instance_id = ?1)"
    " WHERE instance_id = ?1 RETURNING due_at"
)
SELECT_DUE_INSTANCES = (
    "SELECT json_group_array(json_array("
    f"{INSTANCE_COLUMNS})) FROM (SELECT {INSTANCE_COLUMNS} FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1) ORDER BY due_at LIMIT ?2)"
)
LOCK_INSTANCES = (
    "UPDATE instances SET locked_by = ?2, locked_until = ?3, due_at = ?3"
    " WHERE instance_id IN (SELECT value FROM json_each(?1))"
)
HAS_READY_WORK = (
    "SELECT EXISTS (SELECT 1 FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1))"
    " OR EXISTS (SELECT 1 FROM work_items WHERE visible_at <= ?1)"
)

# -- statements: history and inbox ---------------------------------------------

SELECT_HISTORY = (
    "SELECT '[' || COALESCE(group_concat(event_json, ','), '') || ']'"
    " FROM (SELECT event_json FROM history WHERE instance_id = ? ORDER BY seq)"
)
INSERT_HISTORY = (
    "INSERT INTO history (instance_id, seq, event_json) SELECT ?1, ?2 + key, value"
    " FROM json_each(?3)"
)
DELETE_HISTORY = "DELETE FROM history WHERE instance_id = ?"
# Messages to a missing instance are dropped by the WHERE, in the same statement.
INSERT_MESSAGES = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    " SELECT iid, eid, mkey, event, COALESCE(visible, ?2)"
    f" FROM (SELECT {_fields('iid', 'eid', 'mkey', 'event', 'visible')} FROM json_each(?1))"
    " WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = iid)"
)
SELECT_VISIBLE_MESSAGES = (
    "SELECT json_group_array(json_array(id, instance_id, execution_id, msg_key, event_json,"
    " dequeue_count, visible_at)) FROM inbox"
    " WHERE instance_id IN (SELECT value FROM json_each(?1)) AND visible_at <= ?2"
)
COUNT_DELIVERIES = (
    "UPDATE inbox SET dequeue_count = dequeue_count + 1"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
# "+instance_id" keeps SQLite from scanning the instance's whole inbox through
# inbox_instance (thousands of rows during a fan-out): look up the ids instead.
CONSUME_MESSAGES = (
    "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?2)) AND +instance_id = ?1"
)
SELECT_HELD_MESSAGES = (
    "SELECT id, msg_key, event_json, dequeue_count, execution_id FROM inbox"
    " WHERE id IN (SELECT value FROM json_each(?2)) AND +instance_id = ?1"
)
DELAY_MESSAGES = "UPDATE inbox SET visible_at = ?1 WHERE id IN (SELECT value FROM json_each(?2))"
DELETE_MESSAGES = "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?))"
NEXT_MESSAGE_DUE = "SELECT MIN(visible_at) FROM inbox WHERE visible_at > ?"

# -- statements: work items ----------------------------------------------------

WORK_ITEM_COLUMNS = "id, instance_id, execution_id, task_id, name, input, attempt, dequeue_count"
INSERT_WORK_ITEMS = (
    "INSERT OR IGNORE INTO work_items (instance_id, execution_id, task_id, name, input, attempt,"
    f" visible_at) SELECT {_fields('iid', 'eid', 'task', 'name', 'input', 'attempt')}, ?2"
    " FROM json_each(?1)"
)
SELECT_READY_WORK_ITEMS = (
    f"SELECT json_group_array(json_array({WORK_ITEM_COLUMNS})) FROM (SELECT {WORK_ITEM_COLUMNS}"
    " FROM work_items WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2)"
)
# While locked, an item's visible_at is its lease expiry (see the module docstring).
LOCK_WORK_ITEMS = (
    "UPDATE work_items SET locked_by = ?1, visible_at = ?2, dequeue_count = dequeue_count + 1"
    " WHERE id IN (SELECT value FROM json_each(?3))"
)
NEXT_WORK_ITEM_DUE = (
    "SELECT MIN(visible_at) FROM work_items WHERE visible_at > ? AND locked_by IS NULL"
)
HELD_WORK_ITEM = "instance_id = ? AND execution_id = ? AND task_id = ? AND locked_by = ?"
SELECT_HELD_WORK_ITEM = f"SELECT {WORK_ITEM_COLUMNS} FROM work_items WHERE {HELD_WORK_ITEM}"
RENEW_WORK_ITEM = f"UPDATE work_items SET visible_at = ? WHERE {HELD_WORK_ITEM}"
RELEASE_WORK_ITEM = "UPDATE work_items SET locked_by = NULL, visible_at = ? WHERE id = ?"
DELETE_WORK_ITEMS = "DELETE FROM work_items WHERE id IN (SELECT value FROM json_each(?))"
# A result row: the message (5 items), then the work item it answers and the
# lease token that must still hold it (4 items).
_HELD = (
    "w.instance_id = r.w_iid AND w.execution_id = r.w_eid AND w.task_id = r.w_task"
    " AND w.locked_by = r.token"
)
_RESULTS = (
    "(SELECT "
    + _fields("iid", "eid", "mkey", "event", "visible", "w_iid", "w_eid", "w_task", "token")
    + " FROM json_each(?1)) AS r"
)
# Runs before DELETE_COMPLETED: the EXISTS on the still-held work item is what
# drops the result of a lease that another worker took over.
DELIVER_RESULTS = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    f" SELECT iid, eid, mkey, event, COALESCE(visible, ?2) FROM {_RESULTS}"
    f" WHERE EXISTS (SELECT 1 FROM work_items AS w WHERE {_HELD})"
    " AND EXISTS (SELECT 1 FROM instances WHERE instance_id = iid)"
)
DELETE_COMPLETED = (
    f"DELETE FROM work_items WHERE id IN (SELECT w.id FROM {_RESULTS} JOIN work_items AS w"
    f" ON {_HELD})"
)

# -- statements: poison --------------------------------------------------------

INSERT_POISON = (
    "INSERT INTO poison (queue, instance_id, body, reason, poisoned_at, dequeue_count, extra)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_POISON_COLUMNS = "id, queue, instance_id, body, reason, poisoned_at, dequeue_count, extra"
SELECT_POISON = f"SELECT {_POISON_COLUMNS} FROM poison ORDER BY id"
SELECT_INSTANCE_POISON = f"SELECT {_POISON_COLUMNS} FROM poison WHERE instance_id = ? ORDER BY id"
SELECT_POISON_BY_ID = (
    "SELECT id, queue, instance_id, body, extra FROM poison"
    " WHERE id IN (SELECT value FROM json_each(?))"
    " AND EXISTS (SELECT 1 FROM instances AS i WHERE i.instance_id = poison.instance_id)"
)
DELETE_POISON = "DELETE FROM poison WHERE id IN (SELECT value FROM json_each(?))"

# -- the file ------------------------------------------------------------------


def connect(
    path: Path, *, synchronous: str = "full", busy_timeout: float = 5.0
) -> sqlite3.Connection:
    """Open (creating if needed) the store file and bring its schema up to date.

    ``synchronous`` is ``"full"`` (WAL synced at every commit: a commit survives
    an OS crash or power loss) or ``"normal"`` (synced at checkpoints only);
    ``busy_timeout`` is how many seconds a statement waits for another
    connection's lock before failing with ``SQLITE_BUSY``.
    """
    if sqlite3.sqlite_version_info < _MIN_SQLITE:
        raise RuntimeError(
            f"the SQLite store needs SQLite {'.'.join(map(str, _MIN_SQLITE))} or newer; "
            f"this Python has {sqlite3.sqlite_version}"
        )
    level = SYNCHRONOUS_LEVELS[synchronous]  # validated by the URL parser; KeyError is a bug
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: the store issues BEGIN IMMEDIATE itself, so a write
    # transaction takes the file's write lock up front instead of failing with
    # SQLITE_BUSY halfway through when another process got there first.
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, cached_statements=256)
    try:
        _use_wal(conn, busy_timeout)
        conn.execute(f"PRAGMA synchronous={level}")
        # A build or VFS may refuse a level silently: the store must not claim FULL without it.
        (running,) = conn.execute("PRAGMA synchronous").fetchone()
        if running != level:
            raise RuntimeError(f"SQLite runs with synchronous={running}, not {synchronous}")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-16000")
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (SQLITE_BUSY/LOCKED)."""
    # The low byte is the primary code; extended ones (SQLITE_BUSY_SNAPSHOT...) count too.
    return error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def busy_error(path: Path, busy_timeout: float, error: sqlite3.OperationalError) -> StoreBusyError:
    """The ``StoreBusyError`` for a call that gave up on ``path``'s lock (``is_busy(error)``)."""
    return StoreBusyError(
        f"another connection held {path} locked for more than "
        f"busy_timeout={busy_timeout:g} s: {error}"
    )


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL (once per file), waiting up to ``busy_timeout`` for the lock."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            # The switch needs an exclusive lock, and SQLite answers BUSY at once
            # (its rule against deadlocks) instead of calling the busy handler.
            if not is_busy(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


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
            # A new file (0) gets the current layout at once; an older one is rebuilt
            # step by step, then gets what is new (every CREATE is IF NOT EXISTS).
            for version in range(found + 1, SCHEMA_VERSION + 1) if found else ():
                for statement in _MIGRATIONS.get(version, ()):
                    conn.execute(statement)
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


def instance_from_row(row: Sequence[Any]) -> InstanceRecord:
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


def commit_values(record: InstanceRecord) -> tuple[Any, ...]:
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


def start_row(message: OrchestrationMessage, started: ExecutionStarted) -> tuple[Any, ...]:
    """An ``INSERT_INSTANCE`` row for the instance an ``ExecutionStarted`` message creates.

    Its ``due_at`` is NULL when the message is not delayed: bind "now" after it.
    """
    created = to_micros(started.timestamp)
    parent = started.parent.instance_id if started.parent else None
    return (message.instance_id, started.name, started.execution_id, _PENDING, started.input,
            created, created, parent, delay_of(message))  # fmt: skip


def delay_of(message: OrchestrationMessage) -> int | None:
    """``visible_at`` in microseconds, ``None`` for "now"."""
    return None if message.visible_at is None else to_micros(message.visible_at)


def message_item(message: OrchestrationMessage) -> list[Any]:
    """One ``INSERT_MESSAGES`` array item (its visibility ``None`` means "now")."""
    return [
        message.instance_id,
        message.execution_id,
        message.key,
        message.event.model_dump_json(),
        delay_of(message),
    ]


def result_item(result: ActivityResult) -> list[Any]:
    """One ``DELIVER_RESULTS`` / ``DELETE_COMPLETED`` array item."""
    return message_item(result.message) + list(held_key(result.item))


def held_key(item: ActivityWorkItem) -> tuple[str, str, int, str]:
    """Parameters of ``HELD_WORK_ITEM``: the item, as long as ``item`` still holds it."""
    invocation = item.invocation
    return (invocation.instance_id, invocation.execution_id, invocation.task_id, item.lock_token)


def invocation_item(invocation: ActivityInvocation) -> list[Any]:
    """One ``INSERT_WORK_ITEMS`` array item."""
    i = invocation
    return [i.instance_id, i.execution_id, i.task_id, i.name, i.input, i.attempt]


def work_item_poison(row: Sequence[Any]) -> tuple[str, str]:
    """Poison ``(body, extra)`` of a row selected with ``WORK_ITEM_COLUMNS``."""
    _, iid, eid, task, name, input_, attempt, _ = row
    body = json.dumps(
        {"instance_id": iid, "execution_id": eid, "task_id": task, "name": name,
         "input": input_, "attempt": attempt}
    )  # fmt: skip
    return body, json.dumps({"execution_id": eid, "task_id": str(task), "name": name})


def requeued_items(rows: Sequence[Sequence[Any]]) -> tuple[list[int], list[Any], list[Any]]:
    """Put ``SELECT_POISON_BY_ID`` rows back: (their ids, inbox items, work items).

    The poison row kept everything the original row held: an inbox message's
    event, key and execution in ``body`` and ``extra``; a work item's
    invocation in ``body`` (``work_item_poison``). A row that does not say
    enough (written by hand, say) is left where it is.
    """
    ids: list[int] = []
    inbox: list[Any] = []
    work: list[Any] = []
    for poison_id, queue, iid, body, extra_json in rows:
        extra = json.loads(extra_json or "{}")
        if queue == "activities":
            try:
                invocation = json.loads(body)
                fields = ("execution_id", "task_id", "name", "input", "attempt")
                work.append([iid, *(invocation[name] for name in fields)])
            except (ValueError, KeyError, TypeError):
                continue
        elif extra.get("key"):
            inbox.append([iid, extra.get("execution_id"), extra["key"], body, None])
        else:
            continue
        ids.append(poison_id)
    return ids, inbox, work


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
        created, after = decode_keyset(query.continuation)
        clauses.append("(created_at < ? OR (created_at = ? AND instance_id > ?))")
        params.extend((created, created, after))
    return " AND ".join(clauses), params


def continuation(last: InstanceRecord) -> str:
    """An opaque keyset token: where the next page starts in (created_at DESC, id) order."""
    return encode_keyset(to_micros(last.created_at), last.instance_id)
