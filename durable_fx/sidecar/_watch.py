"""Waiting for an instance to start or finish without hammering the store.

Commits made by this sidecar wake the waiters of that instance at once;
changes made by other processes on the same store are found by polling,
backing off to ``max_poll`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..storage._protocol import Store
from ..storage._records import InstanceRecord

__all__ = ["InstanceWatch"]

_FIRST_POLL = 0.01


class InstanceWatch:
    """Waits for conditions on instance rows; ``changed()`` wakes the waiters of one."""

    def __init__(self, store: Store, *, max_poll: float = 1.0) -> None:
        self._store = store
        self._max_poll = max_poll
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def changed(self, instance_id: str) -> None:
        """Wake everyone waiting on ``instance_id`` (its row may have changed)."""
        for event in self._waiters.get(instance_id, ()):
            event.set()

    async def wait(
        self,
        instance_id: str,
        condition: Callable[[InstanceRecord], bool],
        timeout: float | None,
    ) -> InstanceRecord | None:
        """The row once ``condition`` holds, ``None`` if there is no such instance.

        Raises ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        woken = asyncio.Event()
        self._waiters.setdefault(instance_id, set()).add(woken)
        try:
            delay = _FIRST_POLL
            while True:
                woken.clear()
                record = await self._store.get_instance(instance_id)
                if record is None or condition(record):
                    return record
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"instance {instance_id!r} is still {record.status.value}")
                pause = delay if remaining is None else min(delay, remaining)
                if await _woken_within(woken, pause):
                    delay = _FIRST_POLL
                else:
                    delay = min(delay * 2, self._max_poll)
        finally:
            waiters = self._waiters.get(instance_id)
            if waiters is not None:
                waiters.discard(woken)
                if not waiters:
                    del self._waiters[instance_id]


async def _woken_within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True
