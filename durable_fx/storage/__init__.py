"""Stores: where instances, history, inboxes and work items live.

``open_store(url)`` picks the implementation from the URL and imports it
lazily, so a process that only uses SQLite never loads the Azure SDK.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._clock import Clock
from ._protocol import Accept, CountsInstances, ReportsBacklog, Store
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
    QueueBacklog,
)

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "Accept",
    "ActivityInvocation",
    "ActivityResult",
    "ActivityWorkItem",
    "CountsInstances",
    "EpisodeCommit",
    "InboxMessage",
    "InstanceQuery",
    "InstanceRecord",
    "LockBatch",
    "OrchestrationMessage",
    "OrchestrationWorkItem",
    "Page",
    "PoisonedMessage",
    "QueueBacklog",
    "ReportsBacklog",
    "Store",
    "default_store_url",
    "open_store",
]

DEFAULT_SQLITE_PATH = Path(".durable_fx") / "durable_fx.db"


def default_store_url() -> str:
    """``DURABLE_FX_STORE``, else ``AzureWebJobsStorage``, else the local SQLite file.

    The Functions identity settings (``AzureWebJobsStorage__accountName`` and
    friends, no connection string) select ``azure://``: identity auth.
    """
    for name in ("DURABLE_FX_STORE", "AzureWebJobsStorage"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    if any(k.startswith("AzureWebJobsStorage__") and v for k, v in os.environ.items()):
        return "azure://"
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def open_store(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    hub: str | None = None,
    partitions: int | None = None,
    max_dequeue_count: int = 5,
) -> Store:
    """Open the store a URL names.

    ``memory://`` is an in-process store (tests, experiments);
    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` is the
    embedded durable store (``?synchronous=normal`` trades durability against
    an OS crash for speed, ``?busy_timeout=SECONDS`` bounds lock waits; see
    ``SqliteStore``); an Azure Storage connection string (including
    ``UseDevelopmentStorage=true``) or ``azure://<account>`` (identity auth)
    is the Azure store, whose task hub is ``hub``, else ``TaskHub=`` in the
    connection string or ``?hub=`` in the URL, else ``DURABLE_FX_HUB``, and
    whose control partition count is ``partitions``, else ``Partitions=`` or
    ``?partitions=``, else ``DURABLE_FX_PARTITIONS``, else 4 (fixed per hub;
    other stores ignore it). Without a URL, ``default_store_url()`` decides.
    ``max_dequeue_count``: deliveries after which a message that never
    succeeded is poisoned.
    """
    url = url or default_store_url()
    if _is_azure(url):
        try:
            from .azure import open_azure_store
        except ImportError as error:
            raise ImportError(
                f"the Azure store needs the azure extra: pip install 'durable-fx[azure]' ({error})"
            ) from error
        return open_azure_store(
            url,
            hub=hub,
            partitions=partitions,
            clock=clock,
            max_dequeue_count=max_dequeue_count,
        )
    if url == "memory://":
        from .memory import MemoryStore

        return MemoryStore(clock=clock, max_dequeue_count=max_dequeue_count)
    if url.startswith("sqlite://"):
        from .sqlite import SqliteStore, parse_sqlite_url

        path, params = parse_sqlite_url(url)
        return SqliteStore(
            path,
            clock=clock,
            max_dequeue_count=max_dequeue_count,
            synchronous=params.get("synchronous", "full"),
            busy_timeout=float(params.get("busy_timeout", 5.0)),
        )
    raise ValueError(
        f"unsupported store URL {_redact(url)!r}: use memory://, sqlite:///path.db, "
        "an Azure Storage connection string or azure://<account>"
    )


def _is_azure(url: str) -> bool:
    # Kept here, not imported from .azure: deciding must not load the Azure SDK.
    lowered = url.lower().replace(" ", "")
    return (
        url.startswith("azure://")
        or "usedevelopmentstorage=true" in lowered
        or "accountname=" in lowered
    )


def _redact(url: str) -> str:
    return url.split("AccountKey=")[0] + ("AccountKey=***" if "AccountKey=" in url else "")
