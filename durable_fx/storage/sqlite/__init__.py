"""The embedded store: a task hub in one SQLite file (see ``SqliteStore``).

The store is in ``_store``, the SQL calls in ``_engine``, the thread that owns
the connection in ``_thread`` and the file's layout in ``_schema``.
"""

from ._store import SqliteStore, parse_sqlite_url

__all__ = ["SqliteStore", "parse_sqlite_url"]
