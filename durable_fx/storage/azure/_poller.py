"""When to poll the queues: a back-off while they are empty, at once when kicked or due.

All of it lives on the store loop; nothing here sends a request.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["ControlPolls", "PollRound", "Poller"]


class Poller:
    """When to poll a queue: back off while empty, poll at once when kicked or when due."""

    def __init__(self, interval: tuple[float, float]) -> None:
        self._min, self._max = interval
        self._interval = self._min
        self._next = 0.0
        self._kicked = False
        self._expected: list[float] = []

    def due(self) -> bool:
        """Whether a remote poll should happen now."""
        now = time.monotonic()
        while self._expected and self._expected[0] <= now:
            heapq.heappop(self._expected)
            self._kicked = True
        return self._kicked or now >= self._next

    @property
    def kicked(self) -> bool:
        return self._kicked

    def polled(self, found: bool) -> None:
        """Record a poll: reset the back-off if it found something, else double it."""
        self._kicked = False
        self._interval = self._min if found else min(max(self._interval * 2, 0.05), self._max)
        if self._max <= 0:
            self._interval = 0.0
        self._next = time.monotonic() + self._interval

    def kick(self) -> None:
        """Poll at the next chance (this process just sent something to the queue)."""
        self._kicked = True

    def expect(self, delay: timedelta) -> None:
        """Poll when a message hidden for ``delay`` becomes visible."""
        heapq.heappush(self._expected, time.monotonic() + max(0.0, delay.total_seconds()))

    def next_expected(self) -> float | None:
        """Seconds until the next expected message, if any."""
        if not self._expected:
            return None
        return max(0.0, self._expected[0] - time.monotonic())


@dataclass(frozen=True, slots=True)
class PollRound:
    """The control queues to poll now, and whether the back-off chose them."""

    queues: tuple[str, ...]
    timed: bool
    """True if the shared back-off fell due (else only kicked or expected queues)."""


class ControlPolls:
    """When to poll which control queue: one back-off for all of them.

    A timed poll (the back-off fell due) takes every queue, so a message another
    process sends waits at most the longest interval, whatever the partition
    count; an idle worker pays one request per queue per interval (5 per 80 s with
    4 partitions and a legacy queue). A queue this process sent to is polled
    alone, at once (``kick``) or when its message falls due (``expect``).
    """

    def __init__(self, queues: Sequence[str], interval: tuple[float, float]) -> None:
        self.queues = tuple(queues)
        self._backoff = Poller(interval)
        self._kicked: set[str] = set()
        self._expected: list[tuple[float, str]] = []

    def due(self) -> PollRound:
        """The queues to poll now (none: no poll)."""
        now = time.monotonic()
        while self._expected and self._expected[0][0] <= now:
            self._kicked.add(heapq.heappop(self._expected)[1])
        if self._backoff.due():
            return PollRound(self.queues, timed=True)
        return PollRound(tuple(q for q in self.queues if q in self._kicked), timed=False)

    def polled(self, round_: PollRound, found: bool) -> None:
        """Record a round: a timed one resets the back-off if it found messages, else doubles it."""
        self._kicked.difference_update(round_.queues)
        if round_.timed:
            self._backoff.polled(found)

    @property
    def kicked(self) -> bool:
        """Whether some queue is to be polled at once."""
        return bool(self._kicked)

    def kick(self, queue: str) -> None:
        """Poll ``queue`` at the next chance (this process just sent something to it)."""
        self._kicked.add(queue)

    def expect(self, queue: str, delay: timedelta) -> None:
        """Poll ``queue`` when a message hidden for ``delay`` becomes visible."""
        due = time.monotonic() + max(0.0, delay.total_seconds())
        heapq.heappush(self._expected, (due, queue))

    def next_expected(self) -> float | None:
        """Seconds until the next expected message, if any."""
        if not self._expected:
            return None
        return max(0.0, self._expected[0][0] - time.monotonic())
