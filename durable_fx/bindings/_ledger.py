"""Which provider events an event source has raised already, past the instance's life.

Providers redeliver webhooks (timeouts, their own retries, replays). The store
dedupes an event id atomically for the life of its instance; the ledger
remembers each (source, provider event id) after its event is raised, so a
redelivery after the instance was purged (or to another instance) is still a
duplicate. Recording is one idempotent insert; a crash before it leaves the
store's dedupe in charge.

It lives with the store: a table in the SQLite file, a table ``<hub>events`` in
the Azure account, a set in memory. Ids are kept hashed; nothing expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._errors import StoreBusyError
from ..storage.sqlite._schema import is_busy

if TYPE_CHECKING:
    from ..storage import Store
    from ..storage.azure import AzureSettings

__all__ = ["EventLedger", "MemoryLedger", "SqliteLedger", "open_ledger"]

BUSY_TIMEOUT_SECONDS = 2.0
"""How long a write waits for another connection's lock before ``StoreBusyError``.

Webhooks answer 503 with ``Retry-After`` then; waiting longer only holds the request.
"""


T = TypeVar("T")


class EventLedger(Protocol):
    """Remembers provider event ids per event source."""

    async def seen(self, source: str, event_id: str) -> bool:
        """Whether ``event_id`` was recorded for ``source``."""
        ...

    async def record(self, source: str, event_id: str) -> None:
        """Remember ``event_id`` for ``source`` (recording twice is harmless)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


def _digest(event_id: str) -> str:
    # Provider ids may hold characters table keys refuse (/ \ # ?): keep a hash.
    return hashlib.sha256(event_id.encode()).hexdigest()


class MemoryLedger:
    """An ``EventLedger`` in process memory (for ``memory://`` stores)."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    async def seen(self, source: str, event_id: str) -> bool:
        """Whether ``event_id`` was recorded for ``source``."""
        return (source, _digest(event_id)) in self._seen

    async def record(self, source: str, event_id: str) -> None:
        """Remember ``event_id`` for ``source``."""
        self._seen.add((source, _digest(event_id)))

    async def close(self) -> None:
        """Nothing to release."""


class SqliteLedger:
    """An ``EventLedger`` in a table of the SQLite store's file."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _run(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.OperationalError as error:
                if is_busy(error):
                    raise StoreBusyError(
                        f"the event ledger in {self._path.name} stayed locked for "
                        f"{BUSY_TIMEOUT_SECONDS:g} s ({error})",
                        retry_after=BUSY_TIMEOUT_SECONDS,
                    ) from None
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS fx_event_ids (source TEXT NOT NULL, digest "
                    "TEXT NOT NULL, raised_at TEXT NOT NULL, PRIMARY KEY (source, digest))"
                )
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def seen(self, source: str, event_id: str) -> bool:
        """Whether ``event_id`` was recorded for ``source``."""
        rows = await asyncio.to_thread(
            self._run,
            "SELECT 1 FROM fx_event_ids WHERE source = ? AND digest = ?",
            (source, _digest(event_id)),
        )
        return bool(rows)

    async def record(self, source: str, event_id: str) -> None:
        """Remember ``event_id`` for ``source``."""
        await asyncio.to_thread(
            self._run,
            "INSERT OR IGNORE INTO fx_event_ids (source, digest, raised_at) VALUES (?, ?, ?)",
            (source, _digest(event_id), datetime.now(UTC).isoformat()),
        )

    async def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class AzureLedger:
    """An ``EventLedger`` in the table ``<hub>events`` of the store's account."""

    def __init__(self, settings: AzureSettings, hub: str) -> None:
        from azure.data.tables import TableClient

        from ..storage.azure import sync_credential

        self._table = TableClient(
            settings.endpoint("table"),
            f"{hub}events",
            credential=sync_credential(settings),
            connection_timeout=10,
            read_timeout=30,
            retry_total=3,
        )
        self._created = False

    def _ensure(self) -> None:
        if not self._created:
            from azure.core.exceptions import ResourceExistsError

            with contextlib.suppress(ResourceExistsError):
                self._table.create_table()
            self._created = True

    async def seen(self, source: str, event_id: str) -> bool:
        """Whether ``event_id`` was recorded for ``source``."""
        from azure.core.exceptions import ResourceNotFoundError

        def read() -> bool:
            self._ensure()
            try:
                self._table.get_entity(source, _digest(event_id), select=["RowKey"])
            except ResourceNotFoundError:
                return False
            return True

        return await self._call(read)

    async def record(self, source: str, event_id: str) -> None:
        """Remember ``event_id`` for ``source``."""
        entity = {
            "PartitionKey": source,
            "RowKey": _digest(event_id),
            "RaisedAt": datetime.now(UTC).isoformat(),
        }

        def write() -> None:
            self._ensure()
            self._table.upsert_entity(entity)

        await self._call(write)

    async def _call(self, run: Callable[[], T]) -> T:
        """Run a table call off the loop; storage that kept failing is StoreBusyError.

        The client retried already; the caller answers busy (503, Retry-After),
        so the provider sends the event again instead of losing it to a 500.
        """
        from ..storage.azure import is_transient

        try:
            return await asyncio.to_thread(run)
        except Exception as error:
            if not is_transient(error):
                raise
            detail = f"the event ledger's table kept failing: {type(error).__name__}: {error}"
            raise StoreBusyError(detail[:500]) from error

    async def close(self) -> None:
        """Close the client."""
        await asyncio.to_thread(self._table.close)


def open_ledger(store: Store, hub: str) -> EventLedger:
    """The ledger that lives with ``store``."""
    from ..storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteLedger(store.path)
    azure = sys.modules.get("durable_fx.storage.azure")
    if azure is not None and isinstance(store, azure.AzureStore):
        return AzureLedger(store.settings, hub)
    return MemoryLedger()
