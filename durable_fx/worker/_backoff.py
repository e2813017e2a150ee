"""How long an idle fetch loop waits before it looks for work again.

The worker's and the sidecar's fetch loops poll the store the same way: after
a batch with items they look again at once; after an empty one they wait,
twice as long each time up to a ceiling, but never past the moment the store
says the next item falls due. What cuts a wait short (a local wake-up) is
each loop's own business. ``durable-fx serve``'s queue listeners back off the
same way from a longer first wait, and randomize each wait as the Functions
host does.
"""

from __future__ import annotations

from datetime import datetime

from .._clock import Clock

__all__ = ["MIN_POLL", "Backoff"]

MIN_POLL = 0.005
"""Seconds of the first wait after work was found."""


class Backoff:
    """The next idle wait of one fetch loop.

    Args:
        clock: What "now" is when a due time shortens the wait.
        ceiling: The longest wait, in seconds.
        floor: The first wait, and the first again after work was found, in seconds.
    """

    __slots__ = ("_ceiling", "_clock", "_delay", "_floor")

    def __init__(self, clock: Clock, ceiling: float, *, floor: float = MIN_POLL) -> None:
        self._clock = clock
        self._ceiling = ceiling
        self._floor = floor
        self._delay = floor

    def found_work(self) -> None:
        """A batch had items: the next wait is short again."""
        self._delay = self._floor

    def failed(self) -> None:
        """Fetching failed: wait the longest before trying again."""
        self._delay = self._ceiling

    def wait_for(self, next_due: datetime | None) -> float:
        """Seconds to wait now: the current delay, or less if an item falls due sooner."""
        if next_due is None:
            return self._delay
        due_in = (next_due - self._clock.now()).total_seconds()
        return max(0.0, min(self._delay, due_in))

    def idled(self) -> None:
        """A wait passed without work: the next one is twice as long (up to the ceiling)."""
        self._delay = min(self._delay * 2, self._ceiling)
