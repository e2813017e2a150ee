"""A store, a worker and clients on a clock that skips the waiting.

``TestEnvironment`` runs an app's orchestrations against a ``MemoryStore`` on
a ``ManualClock``. With time skipping on, while a test waits for an instance
to finish, the clock jumps to the next timer whenever nothing can run: no
message or work item is ready and no episode or activity is in flight. A
24-hour receipt timeout then passes in milliseconds, and the history shows 24
hours. Activities run for real, so time never jumps inside one. Outside a wait
time stands still, so a test can start an instance, look at it and raise
events without racing the clock (as in Temporal's time-skipping environment,
which skips only while a test waits for a result; trio's
``MockClock(autojump_threshold=0)`` is the same idea for a whole event loop).

Idleness is read from the store's side, as a time-skipping server would: the
store counts the work it handed out and not yet got back, and knows when its
next message or work item falls due.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from .._entity import EntityDefinition
from .._registry import (
    ActivityDefinition,
    HasRegistry,
    OrchestratorDefinition,
    Registry,
    _activity_definition,
    registry_of,
)
from .._registry import name_of as _name_of
from .._state import OrchestrationState
from ..client import AsyncDurableClient, DurableClient
from ..storage import Accept
from ..storage._records import (
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    LockBatch,
    OrchestrationWorkItem,
)
from ..storage.memory import MemoryStore
from ..worker import Worker
from ..worker._background import BackgroundThread, StopSignal
from ._clock import ManualClock

__all__ = ["TestEnvironment"]

log = logging.getLogger("durable_fx.testing")

T = TypeVar("T")

_IDLE_CHECK = 0.001
"""Real seconds between two looks at whether the environment is idle."""

_CLIENT_POLL = 0.01
"""Longest real wait between two looks of a client waiting for an instance."""


class _CountingStore(MemoryStore):
    """A ``MemoryStore`` that knows how much of its work is out with the worker."""

    def __init__(self, clock: ManualClock, max_dequeue_count: int) -> None:
        super().__init__(clock=clock, max_dequeue_count=max_dequeue_count)
        self._out: set[str] = set()  # lock tokens handed out and not yet returned

    @property
    def work_out(self) -> int:
        """Episodes and activities locked and not yet committed, completed or given back."""
        return len(self._out)

    def poke(self) -> None:
        """Wake whoever waits for work (the clock moved: something may be due)."""
        with self._lock:
            self._wake()

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        batch = await super().lock_orchestrations(
            owner=owner, limit=limit, lease=lease, accept=accept
        )
        self._out.update(item.lock_token for item in batch.items)
        return batch

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        try:
            return await super().commit_episode(item, commit)
        finally:
            self._out.discard(item.lock_token)

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        try:
            await super().abandon_orchestration(item, reason=reason, retry_after=retry_after)
        finally:
            self._out.discard(item.lock_token)

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        batch = await super().lock_activities(owner=owner, limit=limit, lease=lease)
        self._out.update(item.lock_token for item in batch.items)
        return batch

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        try:
            await super().complete_activities(results)
        finally:
            self._out.difference_update(result.item.lock_token for result in results)

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        try:
            await super().abandon_activity(item, reason=reason, retry_after=retry_after)
        finally:
            self._out.discard(item.lock_token)


class _OverridingRegistry(Registry):
    """The app's registry as the worker sees it: some activities replaced by fakes."""

    def __init__(self, base: Registry) -> None:
        super().__init__()
        self._base = base
        self._fakes: dict[str, ActivityDefinition] = {}

    def replace(self, name: str, fake: Callable[..., Any]) -> None:
        real = self._base.get_activity(name)
        shape = _activity_definition(name, fake)
        # The real activity's codecs: the fake gets its input as the real one would.
        self._fakes[name] = dataclasses.replace(
            real, fn=fake, parameters=shape.parameters, is_async=shape.is_async
        )

    def restore(self, name: str) -> None:
        self._fakes.pop(name, None)

    def rebase(self, base: Registry) -> None:
        """The code of another deploy; the fakes stay."""
        self._base = base

    def get_orchestrator(self, name: str) -> OrchestratorDefinition:
        return self._base.get_orchestrator(name)

    def find_orchestrator(self, name: str) -> OrchestratorDefinition | None:
        return self._base.find_orchestrator(name)

    def get_activity(self, name: str) -> ActivityDefinition:
        return self._fakes.get(name) or self._base.get_activity(name)

    def find_activity(self, name: str) -> ActivityDefinition | None:
        return self._fakes.get(name) or self._base.find_activity(name)

    def find_entity(self, name: str) -> EntityDefinition | None:
        return self._base.find_entity(name)

    @property
    def orchestrator_names(self) -> list[str]:
        return self._base.orchestrator_names

    @property
    def activity_names(self) -> list[str]:
        return self._base.activity_names

    @property
    def entity_names(self) -> list[str]:
        return self._base.entity_names


class _TimeSkipper:
    """Moves the clock to the next due time whenever the environment is idle and asked to.

    Runs on the worker's loop, where the store hands work out and takes it
    back, so an idle check never falls between a lock and its count.
    """

    def __init__(self, clock: ManualClock, store: _CountingStore) -> None:
        self._clock = clock
        self._store = store
        self._lock = threading.Lock()
        self._waiters = 0
        self._paused = 0
        self._asked: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def skipping(self) -> Iterator[None]:
        """Skip time while the block runs (a client waits); safe from any thread."""
        with self._lock:
            self._waiters += 1
            loop, asked = self._loop, self._asked
        if loop is not None and asked is not None:
            with contextlib.suppress(RuntimeError):  # the environment stopped meanwhile
                loop.call_soon_threadsafe(asked.set)
        try:
            yield
        finally:
            with self._lock:
                self._waiters -= 1

    def idle(self) -> bool:
        """Nothing is out with the worker and nothing can be locked now."""
        if self._store.work_out:
            return False
        due = self._store.next_due()
        return due is None or due > self._clock.now()

    def jump_to(self, moment: datetime) -> None:
        """Move the clock to ``moment`` and wake the worker to look for what fell due."""
        self._clock.advance_to(moment)
        self._store.poke()

    async def settle(self) -> None:
        """Return once the environment is idle at the current time."""
        # Polled: idleness is a fact about the store and the worker's tasks
        # together, which no single event reports.
        while True:
            if self.idle():
                return
            await asyncio.sleep(_IDLE_CHECK)

    async def pass_time(self, duration: timedelta) -> None:
        """Move time on by ``duration``, through each due time on the way, and settle."""
        self._paused += 1  # a waiting client must not jump past the target meanwhile
        try:
            target = self._clock.now() + duration
            while True:
                await self.settle()
                due = self._store.next_due()
                if due is None or due > target:
                    break
                self.jump_to(due)
            self.jump_to(target)
            await self.settle()
        finally:
            self._paused -= 1

    async def run(self) -> None:
        """Until cancelled: while someone waits, jump to the next due time whenever idle."""
        asked = asyncio.Event()
        with self._lock:
            self._loop, self._asked = asyncio.get_running_loop(), asked
        try:
            while True:
                with self._lock:
                    wanted = self._waiters > 0
                if not wanted:
                    await asked.wait()
                    asked.clear()
                    continue
                await asyncio.sleep(_IDLE_CHECK)
                if self._paused or not self.idle():
                    continue
                due = self._store.next_due()
                if due is not None:
                    self.jump_to(due)
        finally:
            with self._lock:
                self._loop = self._asked = None


class _SkippingClient(AsyncDurableClient):
    """The environment's async client: time skips while it waits for an instance."""

    def __init__(self, store: MemoryStore, clock: ManualClock, skipper: _TimeSkipper) -> None:
        super().__init__(store, clock=clock)
        self._skipper = skipper

    async def wait(
        self, instance_id: str, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """See ``AsyncDurableClient.wait``; time skips meanwhile (``timeout`` is real seconds)."""
        with self._skipper.skipping():
            return await super().wait(
                instance_id, timeout=timeout, poll_interval=min(poll_interval, _CLIENT_POLL)
            )


class _SkippingSyncClient(DurableClient):
    """The environment's blocking client: time skips while it waits for an instance."""

    def __init__(self, store: MemoryStore, clock: ManualClock, skipper: _TimeSkipper) -> None:
        super().__init__(store, clock=clock)
        self._skipper = skipper

    def wait(
        self, instance_id: str, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """See ``AsyncDurableClient.wait``; time skips meanwhile (``timeout`` is real seconds)."""
        with self._skipper.skipping():
            return super().wait(
                instance_id, timeout=timeout, poll_interval=min(poll_interval, _CLIENT_POLL)
            )


class TestEnvironment:
    """An app's orchestrations on a memory store, a worker and a clock that skips waiting.

    Use it as a context manager, ``with`` in a plain test or ``async with`` in
    a coroutine; the worker runs on a thread of its own either way::

        with TestEnvironment(app) as env:
            env.override(send_email, fake_send)
            instance_id = env.sync_client.start(email_delivery, job)
            state = env.sync_client.wait(instance_id)  # a 24 h timeout: milliseconds

    While a client of the environment waits for an instance (``wait``), the
    clock jumps to the next timer whenever nothing can run. Elsewhere time
    stands still; ``sleep`` moves it on by hand (the only way when
    ``time_skipping=False``). Activities run for real.

    Args:
        app: A ``Registry``, or an app that has one (``DurableApp``).
        time_skipping: Jump to the next timer while a client waits and nothing can run.
        start: The clock's first time (timezone-aware); ``ManualClock.DEFAULT_START`` by default.
        max_dequeue_count: Deliveries after which the store poisons a message.
    """

    __test__ = False  # a test kit, not a test class: pytest must not collect it

    def __init__(
        self,
        app: Registry | HasRegistry,
        *,
        time_skipping: bool = True,
        start: datetime | None = None,
        max_dequeue_count: int = 5,
    ) -> None:
        self._clock = ManualClock(start)
        self._store = _CountingStore(self._clock, max_dequeue_count)
        self._registry = _OverridingRegistry(registry_of(app))
        self._skipper = _TimeSkipper(self._clock, self._store)
        self._time_skipping = time_skipping
        self._worker = self._new_worker()
        self._client = _SkippingClient(self._store, self._clock, self._skipper)
        self._sync_client: _SkippingSyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = StopSignal("test environment")
        self._thread = self._new_thread()

    def _new_worker(self) -> Worker:
        return Worker(self._registry, self._store, clock=self._clock, shutdown_grace=2.0)

    def _new_thread(self) -> BackgroundThread:
        return BackgroundThread(
            self._stop, name="durable-fx-test-environment", what="test environment", log=log
        )

    # -- what a test uses ---------------------------------------------------------------

    @property
    def client(self) -> AsyncDurableClient:
        """An async client of the environment's store (time skips while it ``wait``s)."""
        return self._client

    @property
    def sync_client(self) -> DurableClient:
        """A blocking client of the environment's store (time skips while it ``wait``s)."""
        if self._sync_client is None:
            self._sync_client = _SkippingSyncClient(self._store, self._clock, self._skipper)
        return self._sync_client

    @property
    def store(self) -> MemoryStore:
        """The memory store the worker and the clients share."""
        return self._store

    @property
    def clock(self) -> ManualClock:
        """The clock the store, the worker and the clients read."""
        return self._clock

    @property
    def time_skipping(self) -> bool:
        """Whether time jumps to the next timer while a client waits."""
        return self._time_skipping

    def now(self) -> datetime:
        """The environment's current time."""
        return self._clock.now()

    def override(self, activity: Callable[..., Any] | str, fake: Callable[..., Any]) -> None:
        """Run ``fake`` wherever an orchestration calls ``activity`` (the function or its name).

        The fake receives the input decoded as the real activity would (and an
        ``ActivityContext`` if it declares a parameter of that type); it may be
        sync or async. The app's own registry is left untouched.
        """
        self._registry.replace(_name_of(activity), fake)

    def restore(self, activity: Callable[..., Any] | str) -> None:
        """Run the real ``activity`` again."""
        self._registry.restore(_name_of(activity))

    def deploy(self, app: Registry | HasRegistry) -> None:
        """Run ``app``'s code from now on, as a deploy does, on the same store and clock.

        The worker restarts: the orchestrations it kept in memory are gone, so
        every instance replays its history on the new code at its next step
        (a change that breaks that replay fails the instance, as it would in
        production). Activity overrides stay.
        """
        running = self._loop is not None
        self._thread.stop()
        self._registry.rebase(registry_of(app))
        self._worker = self._new_worker()
        self._stop = StopSignal("test environment")
        self._thread = self._new_thread()
        if running:
            self._thread.start(self._serve)

    async def sleep(self, duration: timedelta) -> None:
        """Move time on by ``duration``, running what falls due on the way, then settle.

        Returns once nothing is left to run at the new time, so a test can look
        at the instances right after. ``timedelta(0)`` only waits for that.
        """
        await asyncio.wrap_future(self._submit(self._skipper.pass_time(duration)))

    def sleep_sync(self, duration: timedelta) -> None:
        """``sleep`` for code without an event loop: blocks until it is done."""
        self._submit(self._skipper.pass_time(duration)).result()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (on a thread of its own); return once it runs."""
        self._thread.start(self._serve)

    def stop(self) -> None:
        """Stop the worker and close the clients."""
        self._thread.stop()
        if self._sync_client is not None:
            self._sync_client.close()
            self._sync_client = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    async def _serve(self) -> None:
        stopping = self._stop.arm()
        self._loop = asyncio.get_running_loop()
        async with self._worker:
            skipper = asyncio.create_task(self._skipper.run() if self._time_skipping else _idle())
            self._thread.ready()
            try:
                await stopping.wait()
            finally:
                skipper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await skipper
                self._loop = None

    def _submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        loop = self._loop
        if loop is None:
            work.close()
            raise RuntimeError("the test environment is not running: use it in a with block")
        return asyncio.run_coroutine_threadsafe(work, loop)

    def __repr__(self) -> str:
        skipping = "skipping" if self._time_skipping else "manual"
        return f"TestEnvironment({self._clock.now().isoformat()}, {skipping})"


async def _idle() -> None:
    await asyncio.Event().wait()
