"""Hand calls from other threads to an event loop, waking it once per burst.

The sidecar takes completions on gRPC's threads; each hands its work to the
loop here. A burst of them schedules one wake-up, not one per call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Handoff"]


class Handoff:
    """Runs callbacks handed over from any thread on the loop that called ``start()``.

    Args:
        log: Where a callback's error is reported (one error must not strand
            the callbacks handed over with it).
        failed: The message logged with such an error.
    """

    def __init__(self, log: logging.Logger, failed: str) -> None:
        self._log = log
        self._failed = failed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoffs: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Hand calls to the running loop from now on (call on that loop)."""
        self._loop = asyncio.get_running_loop()

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop soon (from any thread)."""
        assert self._loop is not None, "start() the dispatcher first"
        with self._lock:
            self._handoffs.append((callback, args))
            if len(self._handoffs) > 1:
                return  # a wake-up is on its way already
        self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            handoffs, self._handoffs = self._handoffs, []
        for callback, args in handoffs:
            try:
                callback(*args)
            except Exception:
                self._log.exception(self._failed)
