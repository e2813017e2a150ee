"""A clock that tests move by hand, and that wakes its sleepers when moved."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock"]

_Sleeper = tuple[datetime, int, asyncio.AbstractEventLoop, asyncio.Future[None]]


class ManualClock:
    """A ``Clock`` whose time only moves when the test calls ``advance``.

    Leases, delays and timers then expire exactly when the test says so, with
    no real waiting and no flakiness. ``await clock.sleep(s)`` returns once the
    clock has been moved ``s`` seconds on, however long that takes in real
    time; sleepers on any thread's event loop are woken. Safe to share
    between threads.

    Args:
        start: The initial time, timezone-aware; 2024-01-01 00:00 UTC by default.
    """

    DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

    def __init__(self, start: datetime | None = None) -> None:
        start = start or self.DEFAULT_START
        if start.utcoffset() is None:
            raise ValueError(f"ManualClock needs a timezone-aware start, got {start!r}")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        self._sleepers: list[_Sleeper] = []  # a heap, earliest deadline first
        self._order = itertools.count()

    def now(self) -> datetime:
        """The current (manual) time, timezone-aware UTC."""
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move time forward by ``delta`` (a timedelta or seconds) and return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError(f"time only moves forward; cannot advance by {step}")
        with self._lock:
            self._now += step
            woken = self._due_sleepers()
        _wake(woken)
        return self._now

    def advance_to(self, moment: datetime) -> datetime:
        """Move time forward to ``moment`` (no change if it is not later) and return the time."""
        if moment.utcoffset() is None:
            raise ValueError(f"advance_to needs a timezone-aware time, got {moment!r}")
        with self._lock:
            self._now = max(self._now, moment.astimezone(UTC))
            woken = self._due_sleepers()
        _wake(woken)
        return self._now

    def next_wake(self) -> datetime | None:
        """The earliest time a sleeper waits for, if any sleeps."""
        with self._lock:
            return self._sleepers[0][0] if self._sleepers else None

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been moved ``seconds`` on from now."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        with self._lock:
            deadline = self._now + timedelta(seconds=max(0.0, seconds))
            if deadline <= self._now:
                return
            heapq.heappush(self._sleepers, (deadline, next(self._order), loop, woken))
        try:
            await woken
        except BaseException:  # cancelled: forget the sleeper
            with self._lock:
                self._sleepers = [s for s in self._sleepers if s[3] is not woken]
                heapq.heapify(self._sleepers)
            raise

    def _due_sleepers(self) -> list[_Sleeper]:
        due: list[_Sleeper] = []
        while self._sleepers and self._sleepers[0][0] <= self._now:
            due.append(heapq.heappop(self._sleepers))
        return due

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"


def _wake(sleepers: list[_Sleeper]) -> None:
    for _, _, loop, woken in sleepers:
        # A sleeper's loop may have closed since it went to sleep: nothing to wake then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, woken)


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)
