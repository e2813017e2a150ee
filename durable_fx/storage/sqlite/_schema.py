"""The SQLite store's file: its layout (DDL), migrations and connection settings.

Times are INTEGER microseconds; ``instances.due_at`` and
``work_items.visible_at`` do double duty so that every "what is ready?" query
is one index range scan; batches travel as one JSON array. Why:
docs/design/sqlite-store.md. The statements that rely on this layout are in
``_sql``, the row codecs in ``_rows`` and instance queries in ``_query``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ..._errors import StoreBusyError

__all__ = [
    "SCHEMA_VERSION",
    "SYNCHRONOUS_LEVELS",
    "busy_error",
    "connect",
    "is_busy",
]

SCHEMA_VERSION = 6
"""1: the first layout. 2: poison ids are never reused (they name messages to requeue or
delete, so an old id must not hit a newer message), and ``poison_instance``. 3: ``used_keys``,
the keys of enqueued messages, remembered until the instance is purged or replaced.
4: ``instances.orch_version``, the orchestration version an instance started with.
5: ``work_items.heartbeat_timeout`` and ``heartbeat_details`` (activity heartbeats), and
``trace_context`` (the span an activity's span belongs under). 6: ``instances_status``:
counting by status reads an index, not every row, and a list of one status reads it in order."""
_MIN_SQLITE = (3, 35, 0)  # RETURNING

SYNCHRONOUS_LEVELS = {"full": 2, "normal": 1}
"""``PRAGMA synchronous`` values the store may run with, by name."""

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
    due_at             INTEGER,
    orch_version       TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_due ON instances (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS instances_created ON instances (created_at DESC, instance_id);
CREATE INDEX IF NOT EXISTS instances_status ON instances (status, created_at DESC, instance_id);

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
    heartbeat_timeout REAL,
    heartbeat_details TEXT,
    trace_context     TEXT,
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
    4: ("ALTER TABLE instances ADD COLUMN orch_version TEXT",),
    5: (
        "ALTER TABLE work_items ADD COLUMN heartbeat_timeout REAL",
        "ALTER TABLE work_items ADD COLUMN heartbeat_details TEXT",
        "ALTER TABLE work_items ADD COLUMN trace_context TEXT",
    ),
}
"""Statements that bring a file of the version before the key up to the key's version."""


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
