"""Activity results written in batches: one store call per batch, not one per result.

While one batch is being written, the results completed meanwhile queue up
for the next. A batch the store refuses is given back: each of its work items
is abandoned, so its activity runs again; a result is repeated at worst,
never lost. The built-in worker and the sidecar both write results this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import timedelta

from ..storage._protocol import Store
from ..storage._records import ActivityResult

__all__ = ["ResultBatcher"]

_RETRY_AFTER_ERROR = timedelta(seconds=1)

Settled = Callable[[list[ActivityResult], bool], None]
"""Told of each batch: written (``True``), or given back to run again (``False``)."""


def _never() -> bool:
    return False


class ResultBatcher:
    """Queues activity results and writes them in batches (use on one event loop).

    Args:
        store: Where the results go (``complete_activities``).
        settled: Called once per batch, written or not, before the next one is written.
        log: Where a failed write is reported (the caller's logger, so its name stays).
    """

    def __init__(self, store: Store, settled: Settled, log: logging.Logger) -> None:
        self._store = store
        self._settled = settled
        self._log = log
        self._pending: list[ActivityResult] = []
        self._ready = asyncio.Event()

    @property
    def pending(self) -> int:
        """How many results wait for the next batch."""
        return len(self._pending)

    def add(self, result: ActivityResult) -> None:
        """Queue a result for the next batch."""
        self._pending.append(result)
        self._ready.set()

    def wake(self) -> None:
        """Make ``run`` look now, with or without results (to notice it should stop)."""
        self._ready.set()

    async def run(self, *, until: Callable[[], bool] = _never, poll: float | None = None) -> None:
        """Write batches as results come, until ``until()`` holds or the task is cancelled.

        Args:
            until: Checked before each wait; ``True`` ends the loop.
            poll: Longest wait in seconds before ``until`` is checked again (``None``: no limit).
        """
        while not until():
            if poll is None:
                await self._ready.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), timeout=poll)
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued; on failure release the work items so the activities run again."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        written = False
        try:
            await self._store.complete_activities(batch)
            written = True
        except Exception:
            self._log.exception(
                "writing %d activity results failed; they will run again", len(batch)
            )
            await self._give_back(batch)
        finally:
            self._settled(batch, written)

    async def _give_back(self, batch: list[ActivityResult]) -> None:
        for result in batch:
            # Best effort: an item not abandoned runs again when its lease ends.
            with contextlib.suppress(Exception):
                await self._store.abandon_activity(
                    result.item,
                    reason="could not record the result",
                    retry_after=_RETRY_AFTER_ERROR,
                )
