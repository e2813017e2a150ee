"""The worker: pulls episodes and activities from a store and runs them.

Two fetch loops (orchestrations, activities) lock work in batches up to their
free concurrency, run each item as an asyncio task, and sleep with back-off
when there is nothing to do. A local enqueue wakes them at once; work from
other processes is found by the next poll. Activity results are written in
batches, one store call per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Self, TypeVar

from .._clock import Clock, SystemClock
from .._entity import is_entity_instance_id
from .._metrics import watch_backlog
from .._registry import HasRegistry, Registry, registry_of
from .._versioning import OnVersionMismatch, VersionPolicy
from ..storage import open_store
from ..storage._protocol import Accept, ReportsBacklog, Store
from ..storage._records import ActivityResult, ActivityWorkItem, LockBatch, OrchestrationWorkItem
from ._activity_runner import ActivityRunner
from ._background import BackgroundThread, StartStopContext, StopSignal
from ._backoff import Backoff
from ._entity_runner import EntityRunner
from ._orchestration_runner import ExecutorCache, OrchestrationRunner
from ._result_batches import ResultBatcher

__all__ = ["Worker"]

log = logging.getLogger("durable_fx.worker")

T = TypeVar("T")

_RETRY_AFTER_ERROR = timedelta(seconds=1)


class Worker(StartStopContext):
    """Runs the orchestrators and activities of ``app`` against ``store``.

    Use it as a context manager (``with Worker(app, store):`` runs it on a
    background thread; ``async with`` runs it on the current loop), or call
    ``start()``/``stop()``, or ``await run()``.

    Args:
        app: A ``Registry`` (or an app that has one) defining the code to run.
        store: A ``Store`` or a store URL (default: ``default_store_url()``).
        clock: What time it is and how idle waits sleep (tests pass a
            ``durable_fx.testing.ManualClock``); the system clock by default.
        max_concurrent_episodes: Orchestration episodes in flight at once.
        max_concurrent_activities: Activities in flight at once.
        activity_threads: Threads for synchronous activities.
        lease: How long locked work stays ours before others may take it.
        max_poll_interval: Longest sleep between polls when idle, in seconds.
        cache_size: Live orchestrations kept in memory between episodes.
        shutdown_grace: Seconds ``stop()`` waits for in-flight work before releasing it.
        versioning: The orchestration versions this worker runs; it fails the
            others with ``VersionMismatchError``, or leaves them pending for a
            worker that runs them (``on_mismatch``); all run without one.
    """

    def __init__(
        self,
        app: Registry | HasRegistry,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
        max_concurrent_episodes: int = 32,
        max_concurrent_activities: int = 64,
        activity_threads: int = 16,
        lease: timedelta = timedelta(seconds=60),
        max_poll_interval: float = 1.0,
        cache_size: int = 10_000,
        shutdown_grace: float = 10.0,
        versioning: VersionPolicy | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._store = store if isinstance(store, Store) else open_store(store, clock=self._clock)
        self._owns_store = not isinstance(store, Store)
        self._registry = registry_of(app)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._max_episodes = max_concurrent_episodes
        self._max_activities = max_concurrent_activities
        self._lease = lease
        self._max_poll = max_poll_interval
        self._grace = shutdown_grace
        self._threads = ThreadPoolExecutor(
            activity_threads, thread_name_prefix="durable-fx-activity"
        )
        self._cache = ExecutorCache(cache_size)
        self._orchestrations = OrchestrationRunner(
            self._registry, self._store, self._clock, self._cache, versioning
        )
        # Leaving other versions pending is the store's job: it does not hand them out.
        self._accept: Accept | None = None
        if versioning is not None and versioning.on_mismatch is OnVersionMismatch.LEAVE:
            self._accept = lambda _name, version: versioning.accepts(version)
        self._activities = ActivityRunner(self._registry, self._clock, self._threads)
        self._entities = EntityRunner(self._registry, self._store, self._clock)
        self._episodes: set[asyncio.Task[None]] = set()
        self._activity_tasks: set[asyncio.Task[None]] = set()
        self._results = ResultBatcher(self._store, self._results_settled, log)
        self._activities_held = 0
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._run_task: asyncio.Task[None] | None = None
        # A stop asked for before the loop exists must not be lost (a signal
        # handler or another thread can call request_stop() at any moment).
        self._stop_signal = StopSignal("worker")
        self._background = BackgroundThread(
            self._stop_signal, name="durable-fx-worker", what="worker", log=log
        )

    @property
    def store(self) -> Store:
        """The store this worker runs against."""
        return self._store

    @property
    def registry(self) -> Registry:
        """The orchestrators and activities this worker runs."""
        return self._registry

    # -- async lifecycle --------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``stop()`` (or cancellation), then shut down gracefully."""
        self._prepare()
        await self._serve()

    def _prepare(self) -> None:
        self._stopping = self._stop_signal.arm()
        self._wake = asyncio.Event()
        # Made here, not in __init__: its event binds to the loop it is first awaited on.
        self._results = ResultBatcher(self._store, self._results_settled, log)

    async def _serve(self) -> None:
        assert self._stopping is not None
        loops = [
            asyncio.create_task(self._fetch_loop(self._fetch_episodes), name="durable-fx-episodes"),
            asyncio.create_task(
                self._fetch_loop(self._fetch_activities), name="durable-fx-activities"
            ),
            asyncio.create_task(
                self._results.run(until=self._results_done, poll=self._max_poll),
                name="durable-fx-results",
            ),
        ]
        store = self._store
        unwatch = (
            watch_backlog(store.backlog, asyncio.get_running_loop(), type(store).__name__)
            if isinstance(store, ReportsBacklog)
            else None
        )
        self._background.ready()
        try:
            await self._stopping.wait()
        finally:
            if unwatch is not None:
                unwatch()
            self._stopping.set()
            await self._shutdown(loops)

    def request_stop(self) -> None:
        """Ask the worker to stop (now, or as soon as it starts); safe from any thread."""
        self._stop_signal.request()

    async def __aenter__(self) -> Self:
        self._prepare()
        self._run_task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.request_stop()
        if self._run_task is not None:
            await self._run_task

    # -- sync lifecycle (background thread) ------------------------------------------------

    def start(self) -> None:
        """Run the worker on a background thread until ``stop()``."""
        self._background.start(self.run)

    def stop(self) -> None:
        """Stop the background thread: finish in-flight work (or release it), then return."""
        self._background.stop()

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_loop(self, fetch: Callable[[], Awaitable[LockBatch[Any] | None]]) -> None:
        """Fetch until stopping; back off exponentially while there is nothing to do."""
        assert self._stopping is not None
        backoff = Backoff(self._clock, self._max_poll)
        while not self._stopping.is_set():
            try:
                batch = await fetch()
            except Exception:
                log.exception("fetching work failed; retrying")
                batch = LockBatch(items=[])
                backoff.failed()
            if batch is None:  # no free slot: wait for one to free up
                await self._sleep(self._max_poll, use_store=False)
            elif batch.items:
                backoff.found_work()
            else:
                # Doubled after a wake-up too: most of ours are freed slots, not new work.
                await self._sleep(backoff.wait_for(batch.next_due), use_store=True)
                backoff.idled()

    async def _sleep(self, timeout: float, *, use_store: bool) -> None:
        """Sleep ``timeout`` seconds of the clock's time, until a local wake-up, or stop.

        The clock does the sleeping, so a test clock that skips time wakes the
        worker when a timer falls due, not after the real seconds.
        """
        assert self._stopping is not None and self._wake is not None
        waits: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(self._wake.wait()),
            asyncio.ensure_future(self._clock.sleep(timeout)),
        ]
        if use_store:
            waits.append(asyncio.ensure_future(self._store.wait_for_work(timeout)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        self._wake.clear()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _fetch_episodes(self) -> LockBatch[OrchestrationWorkItem] | None:
        free = self._max_episodes - len(self._episodes)
        if free <= 0:
            return None
        batch = await self._store.lock_orchestrations(
            owner=self._owner, limit=free, lease=self._lease, accept=self._accept
        )
        for item in batch.items:
            self._spawn(self._episodes, self._run_episode(item))
        return batch

    async def _fetch_activities(self) -> LockBatch[ActivityWorkItem] | None:
        free = self._max_activities - self._activities_held
        if free <= 0:
            return None
        batch = await self._store.lock_activities(owner=self._owner, limit=free, lease=self._lease)
        for item in batch.items:
            self._activities_held += 1
            self._spawn(self._activity_tasks, self._run_activity(item))
        return batch

    def _spawn(self, tasks: set[asyncio.Task[None]], work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            tasks.discard(finished)
            self._poke()

        task.add_done_callback(done)

    # -- running work -----------------------------------------------------------------------

    async def _run_episode(self, item: OrchestrationWorkItem) -> None:
        try:
            if is_entity_instance_id(item.instance.instance_id):
                await self._entities.run(item)
            else:
                await self._orchestrations.run(item)
        except asyncio.CancelledError:
            await self._release_episode(item, "the worker stopped", timedelta(0))
            raise
        except Exception as error:
            log.exception("episode for %s failed; it will be retried", item.instance.instance_id)
            await self._release_episode(
                item, f"{type(error).__name__}: {error}", _RETRY_AFTER_ERROR
            )

    async def _release_episode(
        self, item: OrchestrationWorkItem, reason: str, after: timedelta
    ) -> None:
        with contextlib.suppress(Exception):
            await self._store.abandon_orchestration(item, reason=reason, retry_after=after)

    async def _run_activity(self, item: ActivityWorkItem) -> None:
        try:
            result = await self._activities.run(
                item,
                lambda heartbeat: self._store.renew_activity_lease(
                    item, self._lease, heartbeat=heartbeat
                ),
                every=self._lease.total_seconds() / 3,
            )
        except asyncio.CancelledError:
            self._activities_held -= 1
            with contextlib.suppress(Exception):
                await self._store.abandon_activity(
                    item, reason="the worker stopped", retry_after=timedelta(0)
                )
            raise
        except Exception as error:
            self._activities_held -= 1
            log.exception("activity %s could not be run", item.invocation.name)
            with contextlib.suppress(Exception):
                await self._store.abandon_activity(
                    item, reason=f"{type(error).__name__}: {error}", retry_after=_RETRY_AFTER_ERROR
                )
            return
        self._results.add(result)

    # -- writing results ----------------------------------------------------------------------

    def _results_done(self) -> bool:
        """Stopping, and no result is left to write or still to come."""
        assert self._stopping is not None
        return self._stopping.is_set() and not self._results.pending and not self._activity_tasks

    def _results_settled(self, batch: list[ActivityResult], written: bool) -> None:
        # Written or given back, these items are no longer ours: room for more.
        self._activities_held -= len(batch)
        self._poke()

    # -- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        fetchers, flusher = loops[:2], loops[2]
        for task in fetchers:
            task.cancel()
        await asyncio.gather(*fetchers, return_exceptions=True)
        in_flight = self._episodes | self._activity_tasks
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=self._grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._results.wake()
        await asyncio.gather(flusher, return_exceptions=True)
        await self._results.flush()
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._owns_store:
            await self._store.close()
