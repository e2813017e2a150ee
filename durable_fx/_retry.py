"""Retry policies for activities and sub-orchestrations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ._errors import TaskFailedError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry a failed task.

    The wait before attempt ``n + 1`` is ``first_interval * backoff ** (n - 1)``,
    capped at ``max_interval``. Waits are durable timers, so they survive
    restarts and show in the history. ``handle`` decides per failure whether a
    retry is worth it (return False for permanent errors); it runs during
    replay, so it must be deterministic.

    Args:
        first_interval: Wait before the second attempt.
        backoff: Factor applied to the wait after each failed attempt.
        max_attempts: Attempts in all, the first included.
        max_interval: Upper bound for any single wait.
        timeout: Give up once this long has passed since the first attempt started.
        handle: Predicate on the failure; False stops retrying.
    """

    first_interval: timedelta
    backoff: float = 1.0
    max_attempts: int = 3
    max_interval: timedelta | None = None
    timeout: timedelta | None = None
    handle: Callable[[TaskFailedError], bool] | None = None

    def __post_init__(self) -> None:
        if self.first_interval <= timedelta(0):
            raise ValueError("RetryPolicy.first_interval must be positive")
        if self.backoff < 1.0:
            raise ValueError("RetryPolicy.backoff must be at least 1.0")
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")

    def delay_after(self, attempt: int) -> timedelta:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.first_interval * (self.backoff ** (attempt - 1))
        if self.max_interval is not None:
            delay = min(delay, self.max_interval)
        return delay

    def next_delay(
        self, attempt: int, error: TaskFailedError, elapsed: timedelta
    ) -> timedelta | None:
        """The wait before the next attempt, or ``None`` to give up."""
        if attempt >= self.max_attempts:
            return None
        if self.handle is not None and not self.handle(error):
            return None
        delay = self.delay_after(attempt)
        if self.timeout is not None and elapsed + delay > self.timeout:
            return None
        return delay
