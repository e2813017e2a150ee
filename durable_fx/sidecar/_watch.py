"""Waiting for an instance to start or finish without hammering the store.

Commits made by this sidecar hand the waiters of that instance its new row
at once (no read); changes made by other processes on the same store are
found by polling, backing off to ``max_poll`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from ..storage._protocol import Store
from ..storage._records import InstanceRecord

__all__ = ["InstanceWatch"]

_FIRST_POLL = 0.01


@dataclass(eq=False, slots=True)
class _Waiter:
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    record: InstanceRecord | None = None
    """The row a local commit left, if that is what woke the waiter."""


class InstanceWatch:
    """Waits for conditions on instance rows; ``changed()`` wakes the waiters of one."""

    def __init__(self, store: Store, *, max_poll: float = 1.0) -> None:
        self._store = store
        self._max_poll = max_poll
        self._waiters: dict[str, set[_Waiter]] = {}

    def changed(self, instance_id: str, record: InstanceRecord | None = None) -> None:
        """Wake everyone waiting on ``instance_id``; ``record`` is its new row, if known."""
        for waiter in self._waiters.get(instance_id, ()):
            waiter.record = record
            waiter.woken.set()

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
        waiter = _Waiter()
        self._waiters.setdefault(instance_id, set()).add(waiter)
        try:
            record = await self._store.get_instance(instance_id)
            delay = _FIRST_POLL
            while record is not None and not condition(record):
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"instance {instance_id!r} is still {record.status.value}")
                pause = delay if remaining is None else min(delay, remaining)
                record = await self._next(instance_id, waiter, pause)
                delay = _FIRST_POLL if waiter.record is not None else min(delay * 2, self._max_poll)
            return record
        finally:
            waiters = self._waiters.get(instance_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[instance_id]

    async def _next(self, instance_id: str, waiter: _Waiter, pause: float) -> InstanceRecord | None:
        """The row after a wake-up (as handed over) or after ``pause`` seconds (read)."""
        waiter.record = None
        waiter.woken.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.woken.wait(), pause)
        if waiter.record is not None:
            return waiter.record
        return await self._store.get_instance(instance_id)
