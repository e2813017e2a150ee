"""The Azure store: history in Azure Tables, work in Storage Queues, big payloads in Blobs.

``open_store`` hands connection strings (``AccountName=...``,
``UseDevelopmentStorage=true``) and ``azure://<account>`` URLs here; this
package is imported only then, so a SQLite-only process never loads the Azure
SDK. Modules: ``_settings`` (connection strings, identity, hub names),
``_codec`` (row layout, payload blobs), ``_queues``, ``_ops`` (transaction
operations), ``_session`` (the session data model), ``_poller`` (when to poll),
``_hub`` (the table and queue gateway), ``_timers`` (the timer index),
``_sessions`` (the instances this store owns), ``_activities`` (over
``_results``, activity results into inboxes), ``_starts``,
``_wakeups`` and ``_commit`` (episodes), ``_orchestrations`` (their facade),
``_reads``, ``_poison`` (the poison list), ``_adoption`` (the Functions host's
poisoned messages in that list), ``_delivered`` (host-delivered work),
``_store`` (the ``AzureStore`` facade), ``_batch`` (entity-group
transactions), ``_resources`` (clients), ``_policies`` (request counting, fault
injection) and ``_transient`` (retries).

The modules form layers, each importing only the ones below it: ``_hub``
(over ``_ops``, ``_session``, ``_poller``, ``_codec``, ``_queues``...), then
``_timers``, ``_sessions``, ``_activities`` and ``_starts``; above them
``_wakeups``, ``_commit``, ``_reads`` and ``_poison``; then ``_delivered`` and
``_orchestrations``; ``_store`` on top. Each part is handed the parts below it
that it uses, never its caller.
"""

from __future__ import annotations

from typing import Any

from ..._clock import Clock
from ._policies import FaultInjector, RequestCounter
from ._resources import PartitionCountError
from ._settings import (
    DEFAULT_HUB,
    DEFAULT_PARTITIONS,
    HUB_ENV,
    PARTITIONS_ENV,
    AzureSettings,
    HubNames,
    settings_from_url,
    sync_credential,
)
from ._store import AzureStore
from ._transient import is_transient

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_PARTITIONS",
    "HUB_ENV",
    "PARTITIONS_ENV",
    "AzureSettings",
    "AzureStore",
    "FaultInjector",
    "HubNames",
    "PartitionCountError",
    "RequestCounter",
    "is_transient",
    "open_azure_store",
    "settings_from_url",
    "sync_credential",
]


def open_azure_store(
    url: str,
    *,
    hub: str | None = None,
    partitions: int | None = None,
    clock: Clock | None = None,
    **options: Any,
) -> AzureStore:
    """An ``AzureStore`` for a connection string or ``azure://`` URL."""
    settings = settings_from_url(url, hub=hub, partitions=partitions)
    return AzureStore(settings, clock=clock, **options)
