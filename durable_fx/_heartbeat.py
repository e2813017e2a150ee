"""Heartbeats: how a long activity says it is alive, and what progress it made.

An activity calls ``ActivityContext.heartbeat(details)`` from its own thread
(or task); the worker running it reads the time of the last beat to time out
an attempt that stopped beating, and saves the details with the lease it
renews, so a redelivery after a crash and the next attempt after a failure
can resume from them (Temporal's heartbeat details).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ._serialization import encode

__all__ = ["MAX_DETAILS_CHARS", "Heartbeats"]

MAX_DETAILS_CHARS = 16 * 1024
"""Heartbeat details travel in queue messages and table properties: keep them small."""


class Heartbeats:
    """The beats of one activity run: the time of the last and its details (JSON)."""

    def __init__(self, details: str | None = None, timeout: float | None = None) -> None:
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._details = details
        self._saved = details
        self.timeout = timeout
        """Seconds the run may go without a beat (``None``: no limit)."""

    def beat(self, details: Any = None) -> None:
        """A beat now; ``details`` (JSON-able) replace the last ones unless ``None``."""
        encoded = None if details is None else encode(details)
        if encoded is not None and len(encoded) > MAX_DETAILS_CHARS:
            raise ValueError(
                f"heartbeat details are {len(encoded)} characters of JSON, more than "
                f"{MAX_DETAILS_CHARS}: keep progress small (an offset, a cursor, a count)"
            )
        with self._lock:
            self._last = time.monotonic()
            if encoded is not None:
                self._details = encoded

    @property
    def details(self) -> str | None:
        """The latest details (the ones the run started with until it beats with some)."""
        with self._lock:
            return self._details

    def overdue(self) -> float:
        """Seconds until the run misses its beat (0 or less: it has); ``inf`` without a limit."""
        if self.timeout is None:
            return float("inf")
        with self._lock:
            return self._last + self.timeout - time.monotonic()

    def unsaved(self) -> str | None:
        """Details newer than the last ones saved (marking them saved), else ``None``."""
        with self._lock:
            if self._details == self._saved:
                return None
            self._saved = self._details
            return self._details
