"""The embedded store: a task hub in one SQLite file (see ``SqliteStore``).

The store is in ``_store``, the SQL calls in ``_engine``, the thread that owns
the connection in ``_thread``; the file's layout, migrations and connection
settings in ``_schema``, the statements in ``_sql``, the row codecs in
``_rows`` and instance queries in ``_query``.
"""

from ._store import SqliteStore, parse_sqlite_url

__all__ = ["SqliteStore", "parse_sqlite_url"]
