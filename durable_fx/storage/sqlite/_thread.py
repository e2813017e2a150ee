"""The store thread: one connection, and the calls queued for it committed together.

The async side queues ``Call``s from any event loop or thread; the thread
takes everything queued (a batch), runs its reads, then all its writes in one
transaction (group commit: one WAL commit, so one fsync under
``synchronous=FULL``, per batch rather than per call), and hands each outcome
back to its caller's loop with one wake-up per loop.

Reads go first and writes are not split by them: every call of a batch was
queued while the others were still pending, so none of them can depend on
another's outcome, and any order is one the callers could have seen. A group
in which one call fails after writing is rolled back and run again in one
transaction with each call in a SAVEPOINT, so only the failing call sees the
error and the others still share one commit.

A group of worker-only writes (locking work, renewing a lease, recording
activity results) commits without the sync: no client was told of them, and
losing one to a power cut only runs its work again (activities are
at-least-once), while the next synced commit syncs them too, since the WAL is
written in order. A group with any other write (a start, an event, an
episode) is synced before any of its callers hears of it.

The thread opens the file itself: opening can wait for another process's
lock, which must not block an event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, suppress
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

    def open(self) -> None: ...

    def run_alone(self, call: Callable[[], T]) -> T: ...

    def run_group(
        self, calls: Sequence[Callable[[], Any]], *, isolated: bool = False
    ) -> list[tuple[bool, Any]]: ...

    def take_work_arrived(self) -> bool: ...

    def unsynced(self) -> AbstractContextManager[None]: ...

    def close(self) -> None: ...


E = TypeVar("E", bound=Transactor)


@dataclass(slots=True)
class Call:
    """A call queued for the store thread, and where its outcome goes."""

    run: Callable[[], Any]
    write: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    synced: bool = True
    """Whether the write's commit must reach the disk before the caller hears of it."""


class StoreThread(Generic[E]):
    """The thread that owns the connection and runs queued calls.

    It holds no reference to the ``SqliteStore``, so a store dropped without
    ``close()`` can still be collected (a finalizer then stops the thread).

    ``opened`` settles once the thread's first attempt to open the file ends
    (with what opening raised, if it failed; the engine then tries again on
    the next call); ``stopped`` once the file is closed and the thread is done.
    """

    def __init__(self, engine: E, on_work: Callable[[], None]) -> None:
        self.queue: queue.SimpleQueue[Call | None] = queue.SimpleQueue()
        self.opened: Future[None] = Future()
        self.stopped: Future[None] = Future()
        self._on_work = on_work
        # A daemon: a store nobody closed must not keep the process alive, and
        # WAL makes stopping it at any instant safe for the file.
        self._thread = threading.Thread(
            target=self._serve, args=(engine,), name="durable_fx-sqlite", daemon=True
        )
        self._thread.start()

    def _serve(self, engine: E) -> None:
        try:
            engine.open()
        except Exception as error:
            self.opened.set_exception(error)
        else:
            self.opened.set_result(None)
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    self._run(engine, batch)
                except Exception as error:  # a bug here must not strand the callers
                    _settle([(call, False, error) for call in batch])
        finally:
            engine.close()
            self._refuse_late_calls()
            self.stopped.set_result(None)

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
        """Run a batch: its reads, then all its writes as one transaction."""
        outcomes = [(call, *_attempt(call.run)) for call in batch if not call.write]
        writes = [call for call in batch if call.write]
        if writes and not any(call.synced for call in writes):
            outcomes += self._run_unsynced(engine, writes)
        else:
            outcomes += self._run_writes(engine, writes)
        if engine.take_work_arrived():
            self._on_work()
        _settle(outcomes)

    @classmethod
    def _run_unsynced(cls, engine: Transactor, writes: list[Call]) -> list[tuple[Call, bool, Any]]:
        try:
            with engine.unsynced():
                return cls._run_writes(engine, writes)
        except Exception as error:  # the file could not be opened, or the level not restored
            return [(call, False, error) for call in writes]

    @staticmethod
    def _run_writes(engine: Transactor, writes: list[Call]) -> list[tuple[Call, bool, Any]]:
        if len(writes) <= 1:
            return [(call, *_attempt(partial(engine.run_alone, call.run))) for call in writes]
        runs = [call.run for call in writes]
        try:
            results = _group(engine, runs)
        except Exception as error:  # the transaction itself failed (locked file, full disk)
            return [(call, False, error) for call in writes]
        return [(call, *result) for call, result in zip(writes, results, strict=True)]


def _group(engine: Transactor, runs: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    try:
        return engine.run_group(runs)
    except GroupBroken:
        pass  # outside the handler below, so callers' errors do not chain to GroupBroken
    # One call failed after writing: again, each call in a savepoint.
    return engine.run_group(runs, isolated=True)


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
