"""Stores: where instances, history, inboxes and work items live.

``open_store(url)`` picks the implementation from the URL and imports it
lazily, so a process that only uses SQLite never loads the Azure SDK.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._clock import Clock
from ._protocol import Store
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

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "ActivityInvocation",
    "ActivityResult",
    "ActivityWorkItem",
    "EpisodeCommit",
    "InboxMessage",
    "InstanceQuery",
    "InstanceRecord",
    "LockBatch",
    "OrchestrationMessage",
    "OrchestrationWorkItem",
    "Page",
    "PoisonedMessage",
    "Store",
    "default_store_url",
    "open_store",
]

DEFAULT_SQLITE_PATH = Path(".durable_fx") / "durable_fx.db"


def default_store_url() -> str:
    """``DURABLE_FX_STORE``, else ``AzureWebJobsStorage``, else the local SQLite file."""
    for name in ("DURABLE_FX_STORE", "AzureWebJobsStorage"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def open_store(url: str | None = None, *, clock: Clock | None = None) -> Store:
    """Open the store a URL names.

    ``memory://`` is an in-process store (tests, experiments);
    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` is the
    embedded durable store. Without a URL, ``default_store_url()`` decides.
    """
    url = url or default_store_url()
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore(clock=clock)
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore

        path = url.removeprefix("sqlite://").removeprefix("/")
        if not path:
            raise ValueError(f"store URL {url!r} names no file; use sqlite:///path/to/file.db")
        return SqliteStore(path, clock=clock)
    raise ValueError(
        f"unsupported store URL {_redact(url)!r}: use memory://, sqlite:///path.db "
        "(Azure Storage connection strings arrive with the Azure store)"
    )


def _redact(url: str) -> str:
    return url.split("AccountKey=")[0] + ("AccountKey=***" if "AccountKey=" in url else "")
