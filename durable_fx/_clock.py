"""Time, injected: the runtime and the stores ask a Clock, never the OS directly.

A clock gives the current time and sleeps: the worker's idle waits between
polls go through ``sleep``, so a test clock (``durable_fx.testing.ManualClock``)
decides both what time it is and when a sleeper wakes. That is what lets
``durable_fx.testing.TestEnvironment`` run a 24-hour timer in milliseconds.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Source of the current UTC time, and of sleeping on that time."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` of this clock's time have passed."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of real time (``asyncio.sleep``)."""
        await asyncio.sleep(seconds)
