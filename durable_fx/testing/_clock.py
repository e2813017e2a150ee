"""A clock that tests move by hand."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock"]


class ManualClock:
    """A ``Clock`` whose time only moves when the test calls ``advance``.

    Leases, delays and timers then expire exactly when the test says so, with
    no real waiting and no flakiness.

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
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()})"
