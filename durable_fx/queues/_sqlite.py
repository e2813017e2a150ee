"""``SqliteQueues``: queues in a table of the SQLite store's file.

The table lives beside the store's own tables (which it never touches), so a
``durable-fx serve`` on SQLite needs one file. Several processes may share it:
a receive takes the file's write lock (``BEGIN IMMEDIATE``) while it hides the
messages it hands out. Calls run on a worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from .._clock import Clock, SystemClock
from ..storage.sqlite._schema import busy_error, is_busy
from ._messages import QueuedMessage, poison_queue_of, validate_queue_name

__all__ = ["SqliteQueues"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fx_queue_messages (
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    text TEXT NOT NULL,
    pop_receipt TEXT NOT NULL DEFAULT '',
    dequeue_count INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    inserted_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    reason TEXT,
    PRIMARY KEY (queue, id)
);
CREATE INDEX IF NOT EXISTS fx_queue_messages_due ON fx_queue_messages (queue, visible_at, seq);
"""
_COLUMNS = "queue, id, text, pop_receipt, dequeue_count, inserted_at, visible_at, reason"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class SqliteQueues:
    """A ``QueueBackend`` on a SQLite file (usually the SQLite store's)."""

    def __init__(
        self, path: str | Path, *, clock: Clock | None = None, busy_timeout: float = 5.0
    ) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        """Seconds a call waits for another connection's lock before ``StoreBusyError``."""
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                return work(self._connection())

        try:
            return await asyncio.to_thread(call)
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            raise busy_error(self.path, self.busy_timeout, error) from error

    async def send(self, queue: str, text: str, *, delay: timedelta = timedelta(0)) -> None:
        """Add a message, invisible for ``delay``."""
        validate_queue_name(queue)
        now = self._clock.now()
        await self._run(lambda conn: _insert(conn, queue, text, now, now + delay, None))

    async def receive(
        self, queue: str, *, limit: int, visibility: timedelta
    ) -> list[QueuedMessage]:
        """Up to ``limit`` visible messages, oldest first, each hidden for ``visibility``."""
        now = self._clock.now()

        def receive(conn: sqlite3.Connection) -> list[QueuedMessage]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM fx_queue_messages WHERE queue = ? AND visible_at <= ?"
                    " ORDER BY visible_at, seq LIMIT ?",
                    (queue, _micros(now), max(0, limit)),
                ).fetchall()
                taken = []
                for row in rows:
                    receipt = uuid.uuid4().hex
                    hidden_until = _micros(now + visibility)
                    conn.execute(
                        "UPDATE fx_queue_messages SET pop_receipt = ?, visible_at = ?,"
                        " dequeue_count = dequeue_count + 1 WHERE queue = ? AND id = ?",
                        (receipt, hidden_until, row[0], row[1]),
                    )
                    taken.append(_message(row, receipt, hidden_until))
                conn.execute("COMMIT")
                return taken
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return await self._run(receive)

    async def delete(self, message: QueuedMessage) -> bool:
        """Delete a received message; False if it is gone or was received again since."""

        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "DELETE FROM fx_queue_messages WHERE queue = ? AND id = ? AND pop_receipt = ?",
                (message.queue, message.id, message.pop_receipt),
            )
            return cursor.rowcount > 0

        return await self._run(delete)

    async def update_visibility(
        self, message: QueuedMessage, visibility: timedelta
    ) -> QueuedMessage | None:
        """Hide a received message for ``visibility`` from now; ``None`` if no longer ours."""
        receipt = uuid.uuid4().hex
        visible_at = self._clock.now() + visibility

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE fx_queue_messages SET pop_receipt = ?, visible_at = ?"
                " WHERE queue = ? AND id = ? AND pop_receipt = ?",
                (receipt, _micros(visible_at), message.queue, message.id, message.pop_receipt),
            )
            return cursor.rowcount > 0

        if not await self._run(update):
            return None
        return dataclasses.replace(message, pop_receipt=receipt, next_visible_at=visible_at)

    async def poison(self, message: QueuedMessage, reason: str) -> bool:
        """Move a received message to its poison queue, keeping ``reason``, in one transaction."""
        target = poison_queue_of(message.queue)
        if target is None:
            raise ValueError(f"queue {message.queue!r} has no poison queue")
        now = self._clock.now()

        def poison(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "DELETE FROM fx_queue_messages WHERE queue = ? AND id = ? AND pop_receipt = ?",
                    (message.queue, message.id, message.pop_receipt),
                )
                moved = cursor.rowcount > 0
                if moved:
                    _insert(conn, target, message.text, now, now, reason)
                conn.execute("COMMIT")
                return moved
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        return await self._run(poison)

    async def close(self) -> None:
        """Close the connection."""

        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)


def _insert(
    conn: sqlite3.Connection,
    queue: str,
    text: str,
    now: datetime,
    visible_at: datetime,
    reason: str | None,
) -> None:
    # seq orders messages that become visible in the same microsecond: max + 1
    # inside the statement keeps it monotonic across processes sharing the file.
    conn.execute(
        "INSERT INTO fx_queue_messages (queue, id, text, seq, inserted_at, visible_at, reason)"
        " VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM fx_queue_messages), ?, ?, ?)",
        (queue, uuid.uuid4().hex, text, _micros(now), _micros(visible_at), reason),
    )


def _message(row: tuple[Any, ...], receipt: str, visible_at: int) -> QueuedMessage:
    """A row as just received: one more delivery, the new receipt and visibility."""
    queue, id_, text, _, count, inserted, _, reason = row
    return QueuedMessage(
        queue=queue,
        id=id_,
        pop_receipt=receipt,
        text=text,
        dequeue_count=count + 1,
        inserted_at=_time(inserted),
        next_visible_at=_time(visible_at),
        reason=reason,
    )
