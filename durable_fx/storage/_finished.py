"""In-process notice that an instance finished, per store object.

A worker that commits an episode ending an instance (COMPLETED, FAILED,
TERMINATED) calls ``finished_on(store).finished(record)`` with the row it
committed; a client waiting on that instance with the same store object gets
that row at once (no read) instead of at its next poll. Waiters keep polling
with back-off all the same, because another process (a worker on the same
SQLite file, a Functions host on Azure) ends instances without telling them.
Waiters and workers may run on different event loops and threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from ._records import InstanceRecord

__all__ = ["FinishedInstances", "finished_on"]


class _Waiter:
    __slots__ = ("event", "loop", "record")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        self.record: InstanceRecord | None = None

    def _deliver(self, record: InstanceRecord) -> None:
        self.record = record
        self.event.set()

    async def wait(self, timeout: float) -> InstanceRecord | None:
        """The row of the instance's end if it came within ``timeout`` seconds, else None."""
        if not self.event.is_set():
            try:
                await asyncio.wait_for(self.event.wait(), timeout)
            except TimeoutError:
                return None
        self.event.clear()
        record, self.record = self.record, None
        return record


class FinishedInstances:
    """The waiters of one store object's instances, by instance id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[_Waiter]] = {}

    def finished(self, record: InstanceRecord) -> None:
        """Hand ``record`` (a row just committed) to whoever waits on its instance."""
        with self._lock:
            waiters = list(self._waiters.get(record.instance_id, ()))
        for waiter in waiters:
            # RuntimeError: its loop closed, so it is not waiting any more.
            with contextlib.suppress(RuntimeError):
                waiter.loop.call_soon_threadsafe(waiter._deliver, record)

    @contextmanager
    def watch(self, instance_id: str) -> Iterator[_Waiter]:
        """A waiter for ``instance_id`` while the block runs (enter it before reading)."""
        waiter = _Waiter()
        with self._lock:
            self._waiters.setdefault(instance_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(instance_id)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[instance_id]


_BY_STORE: weakref.WeakKeyDictionary[object, FinishedInstances] = weakref.WeakKeyDictionary()
_BY_STORE_LOCK = threading.Lock()


def finished_on(store: object) -> FinishedInstances:
    """The notices of ``store`` (one per store object, for as long as it lives)."""
    with _BY_STORE_LOCK:
        try:
            found = _BY_STORE.get(store)
            if found is None:
                found = _BY_STORE[store] = FinishedInstances()
        except TypeError:  # a store without weak references: its waiters poll
            found = FinishedInstances()
        return found
