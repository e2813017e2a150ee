"""What a ``DurableApp``'s functions share while they run: store, clients, runners.

Everything opens on first use, inside an invocation: indexing (and a cold
start that only serves HTTP) never touches storage, and an idle app makes no
requests. The control-queue function runs the episodes of the instance its
message names through the same ``OrchestrationRunner`` a ``Worker`` uses; the
work-item function runs one activity through the same ``ActivityRunner``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from .._clock import Clock, SystemClock
from .._entity import is_entity_instance_id
from .._registry import Registry
from ..client._async import AsyncDurableClient
from ..client._sync import DurableClient
from ..queues import QueueBackend, encode_body, open_queues, poison_queue_of
from ..storage import Store, open_store
from ..storage._delivered import DeliveredMessage, DeliveredWork
from ..worker._activity_runner import ActivityRunner
from ..worker._entity_runner import EntityRunner
from ..worker._orchestration_runner import ExecutorCache, OrchestrationRunner
from ._host_json import HostConfig
from ._ledger import EventLedger, open_ledger
from ._settings import FunctionsSettings

__all__ = ["AppRuntime", "MessageRejected"]

log = logging.getLogger("durable_fx.functions")

_MAX_EPISODES_PER_WAKE_UP = 100
"""Episodes one control message may run; the rest get a fresh wake-up (fairness)."""
_RETRY_EPISODE_AFTER = timedelta(seconds=1)


class MessageRejected(Exception):
    """A queue message cannot be handled and could not be poisoned here: the host retries it."""


class AppRuntime:
    """The store, clients, runners and side tables of one app, opened lazily.

    Args:
        registry: The app's orchestrators and activities.
        settings: Names and limits (``FunctionsSettings``).
        store: A ``Store`` or URL to use instead of the settings' store.
        clock: Time source for episodes and activity results.
    """

    def __init__(
        self,
        registry: Registry,
        settings: FunctionsSettings,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._store: Store | None = store if isinstance(store, Store) else None
        self._store_url = store if isinstance(store, str) else None
        self._owns_store = False
        self._client: AsyncDurableClient | None = None
        self._sync_client: DurableClient | None = None
        self._queues: QueueBackend | None = None
        self._queues_given = False
        self._owns_queues = False
        self._ledger: EventLedger | None = None
        self._host_config: HostConfig | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._orchestrations: OrchestrationRunner | None = None
        self._entities: EntityRunner | None = None
        self._activities: ActivityRunner | None = None

    # -- configuration (before first use) -------------------------------------------

    def use_store(self, store: Store | str) -> None:
        """Run against ``store`` (a ``Store`` or URL); only before the store was opened."""
        with self._lock:
            if self._store is not None and self._store is not store:
                raise RuntimeError("the app's store is open already; call use_store() earlier")
            self._store = store if isinstance(store, Store) else None
            self._store_url = store if isinstance(store, str) else None

    def use_queues(self, queues: QueueBackend | None) -> None:
        """The queues malformed messages are poisoned to (``durable-fx serve`` gives its own)."""
        with self._lock:
            self._queues, self._queues_given, self._owns_queues = queues, True, False

    def use_host_config(self, config: HostConfig) -> None:
        """Use ``config`` instead of reading host.json."""
        self._host_config = config

    # -- shared objects -------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The app's store, opened on first use."""
        with self._lock:
            if self._store is None:
                url = self._store_url or self.settings.resolved_store_url()
                # The host poisons a queue message after host.json's maxDequeueCount
                # deliveries; the store poisons its own messages after as many.
                self._store = open_store(
                    url,
                    clock=self._clock,
                    hub=self.settings.hub,
                    partitions=self.settings.partitions,
                    max_dequeue_count=self.host_config.queues.max_dequeue_count,
                )
                self._owns_store = True
            return self._store

    @property
    def client(self) -> AsyncDurableClient:
        """An ``AsyncDurableClient`` on the app's store."""
        with self._lock:
            if self._client is None:
                self._client = AsyncDurableClient(
                    self.store, clock=self._clock, default_version=self.settings.default_version
                )
            return self._client

    def sync_client(self) -> DurableClient:
        """A ``DurableClient`` on the app's store (for synchronous functions)."""
        with self._lock:
            if self._sync_client is None:
                self._sync_client = DurableClient(
                    self.store, clock=self._clock, default_version=self.settings.default_version
                )
            return self._sync_client

    @property
    def host_config(self) -> HostConfig:
        """host.json as the app sees it."""
        if self._host_config is None:
            self._host_config = HostConfig.load()
        return self._host_config

    @property
    def ledger(self) -> EventLedger:
        """The provider event ids event sources raised already."""
        with self._lock:
            if self._ledger is None:
                self._ledger = open_ledger(self.store, self.settings.hub)
            return self._ledger

    def queues(self) -> QueueBackend | None:
        """The queues for poisoning: ``serve``'s, else the Azure store's account, else none."""
        with self._lock:
            if not self._queues_given:
                store = self.store
                self._queues = open_queues(store) if isinstance(store, DeliveredWork) else None
                self._queues_given = True
                self._owns_queues = self._queues is not None
            return self._queues

    @property
    def orchestrations(self) -> OrchestrationRunner:
        """Runs episodes (with a cache of live executors kept between invocations)."""
        with self._lock:
            if self._orchestrations is None:
                self._orchestrations = OrchestrationRunner(
                    self.registry, self.store, self._clock, ExecutorCache(1_000)
                )
            return self._orchestrations

    @property
    def entities(self) -> EntityRunner:
        """Runs entity batches (entities keep no history: nothing to cache)."""
        with self._lock:
            if self._entities is None:
                self._entities = EntityRunner(self.registry, self.store, self._clock)
            return self._entities

    @property
    def activities(self) -> ActivityRunner:
        """Runs activities; synchronous ones on the app's own threads."""
        with self._lock:
            if self._activities is None:
                self._threads = ThreadPoolExecutor(16, thread_name_prefix="durable-fx-activity")
                self._activities = ActivityRunner(self.registry, self._clock, self._threads)
            return self._activities

    # -- the durable queue triggers ---------------------------------------------------

    def _delivered(self) -> DeliveredWork:
        store = self.store
        if not isinstance(store, DeliveredWork):
            raise MessageRejected(
                f"the {type(store).__name__} cannot take messages from a queue trigger; under "
                "Azure Functions the store must be the Azure store (AzureWebJobsStorage), "
                "or run the app with `durable-fx serve`"
            )
        return store

    async def run_wake_up(self, message: DeliveredMessage) -> int:
        """Run the ready episodes of the instance a control message names; returns how many.

        If storage fails on the way, a delayed copy of the message is handed on
        and the invocation succeeds: a storage outage never poisons a wake-up.
        """
        store = self._delivered()
        if message.dequeue_count >= self.host_config.queues.max_dequeue_count:
            # The host's last delivery: if this invocation died too (a crashed instance),
            # the host would poison the wake-up unread. A fresh copy carries it on; a
            # message that really crashes every episode is poisoned by its inbox count.
            await store.hand_on(message)
            return 0
        try:
            return await self._run_wake_up(store, message)
        except Exception as error:
            if not store.storage_fault(error):
                raise
            log.warning("storage failed in a control invocation; handing it on", exc_info=True)
            await store.hand_on(message)
            return 0

    async def _run_wake_up(self, store: DeliveredWork, message: DeliveredMessage) -> int:
        lease = self.settings.lease
        instance_id = await store.accept_wake_up(message, lease=lease)
        if instance_id is None:
            return 0
        episodes = 0
        try:
            while episodes < _MAX_EPISODES_PER_WAKE_UP:
                item = await store.lock_delivered(instance_id, owner=self.owner, lease=lease)
                if item is None:
                    break
                episodes += 1
                try:
                    if is_entity_instance_id(instance_id):
                        await self.entities.run(item)
                    else:
                        await self.orchestrations.run(item)
                except Exception as error:
                    if store.storage_fault(error):
                        raise  # handed on: storage faults must not count as failed episodes
                    log.exception("episode for %s failed; it will be retried", instance_id)
                    await self.store.abandon_orchestration(
                        item,
                        reason=f"{type(error).__name__}: {error}",
                        retry_after=_RETRY_EPISODE_AFTER,
                    )
                    break
        finally:
            await store.release_delivered(instance_id)
        return episodes

    async def run_work_item(self, message: DeliveredMessage) -> bool:
        """Run the activity a work-item message carries; False if it was not to run.

        If storage fails on the way, a delayed copy of the message is handed on
        (it runs the activity again unless its result is recorded by then).
        """
        store = self._delivered()
        try:
            return await self._run_work_item(store, message)
        except Exception as error:
            if not store.storage_fault(error):
                raise
            log.warning("storage failed in a work-item invocation; handing it on", exc_info=True)
            await store.hand_on(message)
            return False

    async def _run_work_item(self, store: DeliveredWork, message: DeliveredMessage) -> bool:
        item = await store.accept_work_item(message, owner=self.owner, lease=self.settings.lease)
        if item is None:
            return False
        try:
            lease = self.settings.lease
            result = await self.activities.run(
                item,
                lambda heartbeat: self.store.renew_activity_lease(item, lease, heartbeat=heartbeat),
                every=lease.total_seconds() / 2,
            )
            await self.store.complete_activities([result])
        except BaseException:
            await store.forget_work_item(item)
            raise
        return True

    # -- poison -------------------------------------------------------------------------

    async def poison(
        self, queue: str, body: bytes, reason: str, *, connection: str | None = None
    ) -> None:
        """Put a message this app cannot use in ``<queue>-poison``, with the reason.

        The poison copy is ``{"reason": ..., "message": <original body>}``.
        Without queues to write to (or, under the host, for a queue of another
        connection than the store's), ``MessageRejected`` hands the message back
        to the host, which retries it and poisons it after maxDequeueCount.
        """
        backend = self.queues()
        target = poison_queue_of(queue)
        # serve gives its queues (every queue lives with the store there); under the
        # host, only the store's account is known: another account's queue is the host's.
        foreign = connection not in (None, self.settings.connection) and self._owns_queues
        if backend is None or target is None or foreign:
            raise MessageRejected(reason)
        envelope = json.dumps({"reason": reason, "message": body.decode("utf-8", "replace")})
        encoding = self.host_config.queues.message_encoding
        await backend.send(target, encode_body(envelope, encoding))
        log.warning("poisoned a message of %s: %s", queue, reason)

    # -- closing --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close what this runtime opened (the store only if it opened it)."""
        with self._lock:
            sync_client, self._sync_client = self._sync_client, None
            ledger, self._ledger = self._ledger, None
            queues = self._queues if self._owns_queues else None
            threads, self._threads = self._threads, None
            store = self._store if self._owns_store else None
        if sync_client is not None:
            await asyncio.to_thread(sync_client.close)
        if ledger is not None:
            await ledger.close()
        if queues is not None:
            await queues.close()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        if store is not None:
            await store.close()
