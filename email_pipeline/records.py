"""What the pipeline remembers next to the store: sends, message ids and outcomes.

* the sent-ledger: one row per send (instance id + attempt), inserted if absent,
  so a re-run or redelivered ``send_email`` returns the first result instead of
  sending again;
* the message map: provider message id -> instance id, written at send time,
  so receipts (which only name the message) reach the right instance;
* the outcomes table: how each delivery ended, and when (the daily digest
  counts the outcomes of a time window);
* the overdue claims: which sweep reported a send as overdue first, so each
  send waiting too long for its receipt is reported once, by one sweep.

SQLite tables in the store's file, Azure Tables (``<hub>emailsent``,
``<hub>emailmap``, ``<hub>emailoutcomes``, ``<hub>emailoverdue``) in the
store's account, or memory.

On SQLite, reads take no lock (the file is in WAL mode), so a webhook's
``instance_for`` never waits for a writer, and gives up after
``READ_TIMEOUT_SECONDS`` with ``StoreBusyError`` (503) if it ever must. Writes
come from activities, on threads: they wait up to ``WRITE_TIMEOUT_SECONDS``,
since failing ``record_sent`` after the provider took the mail is worse.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from durable_fx import StoreBusyError

from .models import DeliveryOutcome, SendResult

if TYPE_CHECKING:
    from durable_fx import Store
    from durable_fx.storage.azure import AzureSettings

__all__ = [
    "READ_TIMEOUT_SECONDS",
    "WRITE_TIMEOUT_SECONDS",
    "EmailRecords",
    "MemoryRecords",
    "SqliteRecords",
    "open_records",
]

READ_TIMEOUT_SECONDS = 2.0
"""How long a read may wait for SQLite's locks before ``StoreBusyError``."""
WRITE_TIMEOUT_SECONDS = 30.0
"""How long a write waits for another connection's write lock before ``StoreBusyError``."""


class EmailRecords(Protocol):
    """The three tables (module docstring); synchronous: activities run on threads."""

    def sent(self, key: str) -> SendResult | None:
        """The recorded result of send ``key``, if it was recorded."""
        ...

    def record_sent(self, key: str, result: SendResult, instance_id: str) -> SendResult:
        """Record send ``key`` unless recorded; returns the first recorded result."""
        ...

    def instance_for(self, message_id: str) -> str | None:
        """The instance that sent ``message_id``."""
        ...

    def record_outcome(self, outcome: DeliveryOutcome) -> None:
        """Write (or overwrite) an instance's outcome."""
        ...

    def outcomes(self) -> list[DeliveryOutcome]:
        """Every recorded outcome."""
        ...

    def outcomes_between(self, start: datetime, end: datetime) -> list[DeliveryOutcome]:
        """The outcomes of deliveries that ended in ``[start, end)``, by instance id."""
        ...

    def claim_overdue(self, key: str, sweep_id: str) -> str:
        """Claim send ``key`` as overdue for ``sweep_id`` unless claimed; returns the claimer."""
        ...


def ended_at(outcome: DeliveryOutcome) -> datetime:
    """When ``outcome``'s delivery ended: its own time, else now (outcomes of older code)."""
    return outcome.ended_at or datetime.now(UTC)


def _stamp(moment: datetime) -> str:
    # Fixed width, always UTC: such stamps sort as text in the order of time.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MemoryRecords:
    """``EmailRecords`` in process memory (for ``memory://`` stores and tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, SendResult] = {}
        self._map: dict[str, str] = {}
        self._outcomes: dict[str, DeliveryOutcome] = {}
        self._overdue: dict[str, str] = {}

    def sent(self, key: str) -> SendResult | None:
        """The recorded result of send ``key``."""
        return self._sent.get(key)

    def record_sent(self, key: str, result: SendResult, instance_id: str) -> SendResult:
        """Record send ``key`` unless recorded; returns the first result."""
        with self._lock:
            first = self._sent.setdefault(key, result)
            self._map.setdefault(first.message_id, instance_id)
            return first

    def instance_for(self, message_id: str) -> str | None:
        """The instance that sent ``message_id``."""
        return self._map.get(message_id)

    def record_outcome(self, outcome: DeliveryOutcome) -> None:
        """Write an instance's outcome."""
        self._outcomes[outcome.instance_id] = outcome.model_copy(
            update={"ended_at": ended_at(outcome)}
        )

    def outcomes(self) -> list[DeliveryOutcome]:
        """Every recorded outcome."""
        return list(self._outcomes.values())

    def outcomes_between(self, start: datetime, end: datetime) -> list[DeliveryOutcome]:
        """The outcomes that ended in ``[start, end)``, by instance id."""
        found = [o for o in self._outcomes.values() if o.ended_at and start <= o.ended_at < end]
        return sorted(found, key=lambda o: o.instance_id)

    def claim_overdue(self, key: str, sweep_id: str) -> str:
        """Claim send ``key`` for ``sweep_id`` unless claimed; returns the claimer."""
        with self._lock:
            return self._overdue.setdefault(key, sweep_id)


class SqliteRecords:
    """``EmailRecords`` as tables in the SQLite store's file."""

    _SCHEMA = (
        "CREATE TABLE IF NOT EXISTS email_sent (key TEXT PRIMARY KEY, result TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS email_messages (message_id TEXT PRIMARY KEY, "
        "instance_id TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS email_outcomes (instance_id TEXT PRIMARY KEY, "
        "outcome TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS email_overdue (key TEXT PRIMARY KEY, sweep TEXT NOT NULL)",
    )

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=READ_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                for ddl in self._SCHEMA:
                    conn.execute(ddl)
                _add_ended_at(conn)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> list[Any]:
        """Run statements in one write transaction; returns the last one's rows."""
        with self._lock, _busy(self._path, WRITE_TIMEOUT_SECONDS):
            conn = self._connection()
            conn.execute(f"PRAGMA busy_timeout = {WRITE_TIMEOUT_SECONDS * 1000:.0f}")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {READ_TIMEOUT_SECONDS * 1000:.0f}")
            try:
                rows: list[Any] = []
                for sql, args in statements:
                    rows = conn.execute(sql, args).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return rows

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """One query, outside any transaction: in WAL mode it waits for no writer."""
        with self._lock, _busy(self._path, READ_TIMEOUT_SECONDS):
            return self._connection().execute(sql, args).fetchall()

    def sent(self, key: str) -> SendResult | None:
        """The recorded result of send ``key``."""
        rows = self._read("SELECT result FROM email_sent WHERE key = ?", (key,))
        return SendResult.model_validate_json(rows[0][0]) if rows else None

    def record_sent(self, key: str, result: SendResult, instance_id: str) -> SendResult:
        """Record send ``key`` unless recorded (with its message id); returns the first result."""
        rows = self._run(
            ("INSERT OR IGNORE INTO email_sent (key, result) VALUES (?, ?)",
             (key, result.model_dump_json())),
            ("INSERT OR IGNORE INTO email_messages (message_id, instance_id) "
             "SELECT json_extract(result, '$.message_id'), ? FROM email_sent WHERE key = ?",
             (instance_id, key)),
            ("SELECT result FROM email_sent WHERE key = ?", (key,)),
        )  # fmt: skip
        return SendResult.model_validate_json(rows[0][0])

    def instance_for(self, message_id: str) -> str | None:
        """The instance that sent ``message_id``."""
        rows = self._read(
            "SELECT instance_id FROM email_messages WHERE message_id = ?", (message_id,)
        )
        return str(rows[0][0]) if rows else None

    def record_outcome(self, outcome: DeliveryOutcome) -> None:
        """Write an instance's outcome, with when it ended."""
        outcome = outcome.model_copy(update={"ended_at": ended_at(outcome)})
        assert outcome.ended_at is not None
        self._run(
            ("INSERT OR REPLACE INTO email_outcomes (instance_id, outcome, ended_at) "
             "VALUES (?, ?, ?)",
             (outcome.instance_id, outcome.model_dump_json(), _stamp(outcome.ended_at))),
        )  # fmt: skip

    def outcomes(self) -> list[DeliveryOutcome]:
        """Every recorded outcome, by instance id."""
        rows = self._read("SELECT outcome FROM email_outcomes ORDER BY instance_id", ())
        return [DeliveryOutcome.model_validate_json(row[0]) for row in rows]

    def outcomes_between(self, start: datetime, end: datetime) -> list[DeliveryOutcome]:
        """The outcomes that ended in ``[start, end)`` (an index range), by instance id."""
        rows = self._read(
            "SELECT outcome FROM email_outcomes WHERE ended_at >= ? AND ended_at < ? "
            "ORDER BY instance_id",
            (_stamp(start), _stamp(end)),
        )
        return [DeliveryOutcome.model_validate_json(row[0]) for row in rows]

    def claim_overdue(self, key: str, sweep_id: str) -> str:
        """Claim send ``key`` for ``sweep_id`` unless claimed; returns the claimer."""
        rows = self._run(
            ("INSERT OR IGNORE INTO email_overdue (key, sweep) VALUES (?, ?)", (key, sweep_id)),
            ("SELECT sweep FROM email_overdue WHERE key = ?", (key,)),
        )
        return str(rows[0][0])


def _add_ended_at(conn: sqlite3.Connection) -> None:
    """Give an outcomes table made before the digest its ``ended_at`` column and index."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(email_outcomes)")}
    if "ended_at" not in columns:
        try:
            conn.execute("ALTER TABLE email_outcomes ADD COLUMN ended_at TEXT")
        except sqlite3.OperationalError as error:
            # Another process sharing the file added it between our look and our ALTER.
            if "duplicate column" not in str(error):
                raise
    conn.execute("CREATE INDEX IF NOT EXISTS email_outcomes_ended ON email_outcomes (ended_at)")


@contextlib.contextmanager
def _busy(path: Path, waited: float) -> Iterator[None]:
    """Turn SQLite's "database is locked" into ``StoreBusyError`` (503 at HTTP level)."""
    try:
        yield
    except sqlite3.OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        raise StoreBusyError(
            f"{path.name} stayed locked for {waited:g} s ({error})",
            retry_after=min(waited, READ_TIMEOUT_SECONDS),
        ) from None


def _key(value: str) -> str:
    # Table keys refuse / \ # ? and control characters: keep a hash.
    return hashlib.sha256(value.encode()).hexdigest()


class AzureRecords:
    """``EmailRecords`` as Azure Tables in the store's account (insert-if-absent = create)."""

    def __init__(self, settings: AzureSettings, hub: str) -> None:
        from azure.data.tables import TableClient

        from durable_fx.storage.azure import sync_credential

        def table(name: str) -> TableClient:
            return TableClient(
                settings.endpoint("table"),
                f"{hub}{name}",
                credential=sync_credential(settings),
                connection_timeout=10,
                read_timeout=30,
                retry_total=3,
            )

        self._sent, self._map, self._outcomes, self._overdue = (
            table("emailsent"),
            table("emailmap"),
            table("emailoutcomes"),
            table("emailoverdue"),
        )
        self._created = False

    def _ensure(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        if not self._created:
            for client in (self._sent, self._map, self._outcomes, self._overdue):
                with contextlib.suppress(ResourceExistsError):
                    client.create_table()
            self._created = True

    def _get(self, client: Any, key: str, column: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError

        self._ensure()
        try:
            entity = client.get_entity(_key(key), "")
        except ResourceNotFoundError:
            return None
        return str(entity[column])

    def _insert(self, client: Any, key: str, column: str, value: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        self._ensure()
        with contextlib.suppress(ResourceExistsError):
            client.create_entity({"PartitionKey": _key(key), "RowKey": "", column: value})

    def sent(self, key: str) -> SendResult | None:
        """The recorded result of send ``key``."""
        found = self._get(self._sent, key, "Result")
        return SendResult.model_validate_json(found) if found else None

    def record_sent(self, key: str, result: SendResult, instance_id: str) -> SendResult:
        """Record send ``key`` unless recorded; returns the first result."""
        self._insert(self._sent, key, "Result", result.model_dump_json())
        first = self.sent(key) or result
        self._insert(self._map, first.message_id, "InstanceId", instance_id)
        return first

    def instance_for(self, message_id: str) -> str | None:
        """The instance that sent ``message_id``."""
        return self._get(self._map, message_id, "InstanceId")

    def record_outcome(self, outcome: DeliveryOutcome) -> None:
        """Write an instance's outcome."""
        self._ensure()
        outcome = outcome.model_copy(update={"ended_at": ended_at(outcome)})
        entity = {
            "PartitionKey": _key(outcome.instance_id),
            "RowKey": "",
            "Outcome": outcome.model_dump_json(),
            "EndedAt": outcome.ended_at,
        }
        self._outcomes.upsert_entity(entity)

    def outcomes(self) -> list[DeliveryOutcome]:
        """Every recorded outcome."""
        self._ensure()
        found = [
            DeliveryOutcome.model_validate_json(e["Outcome"])
            for e in self._outcomes.list_entities()
        ]
        return sorted(found, key=lambda o: o.instance_id)

    def outcomes_between(self, start: datetime, end: datetime) -> list[DeliveryOutcome]:
        """The outcomes that ended in ``[start, end)`` (a filtered scan), by instance id."""
        self._ensure()
        entities = self._outcomes.query_entities(
            "EndedAt ge @start and EndedAt lt @end",
            parameters={"start": start.astimezone(UTC), "end": end.astimezone(UTC)},
        )
        found = [DeliveryOutcome.model_validate_json(e["Outcome"]) for e in entities]
        return sorted(found, key=lambda o: o.instance_id)

    def claim_overdue(self, key: str, sweep_id: str) -> str:
        """Claim send ``key`` for ``sweep_id`` unless claimed; returns the claimer."""
        self._insert(self._overdue, key, "Sweep", sweep_id)
        return self._get(self._overdue, key, "Sweep") or sweep_id


def open_records(store: Store, hub: str) -> EmailRecords:
    """The records that live with ``store``."""
    from durable_fx.storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteRecords(store.path)
    azure = sys.modules.get("durable_fx.storage.azure")
    if azure is not None and isinstance(store, azure.AzureStore):
        return AzureRecords(store.settings, hub)
    return MemoryRecords()
