"""Queues with the Functions host's semantics, kept beside a store.

Under Azure Functions the host reads Azure Storage queues for queue triggers.
``durable-fx serve`` does the same through a ``QueueBackend``: the Azure
store's account for the Azure store, a table in the SQLite file for the SQLite
store, process memory for ``memory://``. ``open_queues`` picks the one that
goes with a store (or a store URL), importing only what it needs.

Messages are text; ``encode_body`` gives the text an output binding would
write (Base64 by default, as the host expects) and ``decode_body`` the body a
function receives.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ._memory import MemoryQueues
from ._messages import (
    MessageEncoding,
    QueuedMessage,
    decode_body,
    encode_body,
    poison_queue_of,
    validate_queue_name,
)
from ._protocol import QueueBackend
from ._sqlite import SqliteQueues

if TYPE_CHECKING:
    from ..storage import Store

__all__ = [
    "MemoryQueues",
    "MessageEncoding",
    "QueueBackend",
    "QueuedMessage",
    "SqliteQueues",
    "decode_body",
    "encode_body",
    "open_queues",
    "poison_queue_of",
    "validate_queue_name",
]


def open_queues(store: Store | str) -> QueueBackend:
    """The queues that go with ``store``: its Azure account, its SQLite file, or memory.

    Given a URL, the backend reaches the same place ``open_store(url)`` would
    (``memory://`` gives new, private queues).
    """
    if isinstance(store, str):
        return _queues_for_url(store)
    from ..storage.memory import MemoryStore
    from ..storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteQueues(store.path, busy_timeout=store.busy_timeout)
    if isinstance(store, MemoryStore):
        return MemoryQueues()
    azure = sys.modules.get("durable_fx.storage.azure")
    if azure is not None and isinstance(store, azure.AzureStore):
        from ._azure import AzureQueues

        return AzureQueues(store.settings)
    raise TypeError(
        f"no queues go with a {type(store).__name__}; durable_fx has queues for the memory, "
        "SQLite and Azure stores"
    )


def _queues_for_url(url: str) -> QueueBackend:
    from ..storage import _is_azure

    if url == "memory://":
        return MemoryQueues()
    if url.startswith("sqlite://"):
        from ..storage.sqlite import parse_sqlite_url

        path, params = parse_sqlite_url(url)  # the store's parameters, checked the same way
        return SqliteQueues(path, busy_timeout=float(params.get("busy_timeout", 5.0)))
    if _is_azure(url):
        from ..storage.azure import settings_from_url
        from ._azure import AzureQueues

        return AzureQueues(settings_from_url(url))
    raise ValueError("unsupported store URL: use memory://, sqlite:///path.db or an Azure one")
