"""The store thread: one connection, calls run in order, queued writes committed together.

The async side queues ``Call``s from any event loop or thread; the thread
takes everything queued, runs each run of consecutive writes in one
transaction (group commit: one WAL commit per batch, not per call), and hands
each outcome back to its caller's loop with one wake-up per loop. A group that
fails in an unexpected way is rolled back and retried call by call, so only
the failing call sees the error.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Call", "GroupBroken", "StoreThread", "Waiters"]

T = TypeVar("T")

_MAX_GROUP = 64
"""Most calls one group transaction holds the file's write lock for."""


class GroupBroken(Exception):
    """One call of a group transaction failed so that the whole group was rolled back."""


class Transactor(Protocol):
    """What the thread needs of the engine it drives."""

    def run_alone(self, call: Callable[[], T]) -> T: ...

    def run_group(self, calls: Sequence[Callable[[], Any]]) -> list[tuple[bool, Any]]: ...

    def take_work_arrived(self) -> bool: ...

    def close(self) -> None: ...


E = TypeVar("E", bound=Transactor)


@dataclass(slots=True)
class Call:
    """A call queued for the store thread, and where its outcome goes."""

    run: Callable[[], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class StoreThread(Generic[E]):
    """The thread that owns the connection and runs queued calls in order.

    It holds no reference to the ``SqliteStore``, so a store dropped without
    ``close()`` can still be collected (a finalizer then stops the thread).
    """

    def __init__(self, open_engine: Callable[[], E], on_work: Callable[[], None]) -> None:
        self.queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self._on_work = on_work
        started: Future[E] = Future()
        # A daemon: a store nobody closed must not keep the process alive, and
        # WAL makes stopping it at any instant safe for the file.
        self._thread = threading.Thread(
            target=self._serve, args=(open_engine, started), name="durable_fx-sqlite", daemon=True
        )
        self._thread.start()
        self.engine = started.result()  # raises what opening the file raised

    def join(self) -> None:
        """Wait until the thread has stopped (after a ``None`` was queued)."""
        self._thread.join()

    def _serve(self, open_engine: Callable[[], E], started: Future[E]) -> None:
        try:
            engine = open_engine()
        except BaseException as error:
            started.set_exception(error)
            return
        started.set_result(engine)
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    self._run(engine, batch)
                except Exception as error:  # a bug here must not strand the callers
                    _settle([(call, False, error) for call in batch])
        finally:
            engine.close()
            self._refuse_late_calls()

    def _refuse_late_calls(self) -> None:
        """Fail calls that raced ``close()`` into the queue, so none waits forever."""
        late: list[tuple[Call, bool, Any]] = []
        while True:
            try:
                call = self.queue.get_nowait()
            except queue.Empty:
                break
            if call is not None:
                late.append((call, False, RuntimeError("the SQLite store is closed")))
        _settle(late)

    def _next_batch(self) -> list[Call] | None:
        """The calls queued now (at least one, waiting for it); ``None`` once told to stop."""
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < _MAX_GROUP:
            try:
                call = self.queue.get_nowait()
            except queue.Empty:
                break
            if call is None:
                self.queue.put(None)  # stop after this batch
                break
            batch.append(call)
        return batch

    def _run(self, engine: Transactor, batch: list[Call]) -> None:
        """Run a batch in order, each run of consecutive writes as one transaction."""
        outcomes: list[tuple[Call, bool, Any]] = []
        writes: list[Call] = []
        for call in batch:
            if call.write:
                writes.append(call)
                continue
            outcomes += self._run_writes(engine, writes)
            writes = []
            outcomes.append((call, *_attempt(call.run)))
        outcomes += self._run_writes(engine, writes)
        if engine.take_work_arrived():
            self._on_work()
        _settle(outcomes)

    @staticmethod
    def _run_writes(engine: Transactor, writes: list[Call]) -> list[tuple[Call, bool, Any]]:
        if len(writes) > 1:
            try:
                results = engine.run_group([call.run for call in writes])
            except GroupBroken:
                pass  # one call broke the group: run each alone so only that one fails
            except Exception as error:
                return [(call, False, error) for call in writes]
            else:
                return [(call, *result) for call, result in zip(writes, results, strict=True)]
        return [(call, *_attempt(partial(engine.run_alone, call.run))) for call in writes]


def _attempt(run: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, run()
    except Exception as error:
        return False, error


def _settle(outcomes: list[tuple[Call, bool, Any]]) -> None:
    """Hand outcomes to their event loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Call, bool, Any]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        # RuntimeError: the caller's loop is closed, so nobody is waiting any more.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(outcomes: list[tuple[Call, bool, Any]]) -> None:
    for call, ok, value in outcomes:
        if call.future.done():
            continue  # the caller was cancelled
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)


class Waiters:
    """``wait_for_work`` callers across loops and threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @contextmanager
    def waiting(self) -> Iterator[asyncio.Event]:
        """Register the current task's loop for ``wake()`` while the block runs."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._events.add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                self._events.discard(waiter)

    def wake(self) -> None:
        """Wake every waiter; safe from any thread."""
        with self._lock:
            waiters = list(self._events)
        for loop, event in waiters:
            with suppress(RuntimeError):  # that waiter's loop has closed
                loop.call_soon_threadsafe(event.set)
