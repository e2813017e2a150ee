"""A portal: an event loop on a daemon thread that runs coroutines for other threads.

The blocking ``DurableClient`` calls the async client through one, and the
Azure store runs its SDK clients on one, so that the store works from any
event loop and any thread (its clients belong to the portal's loop). Stop it
with ``close()`` from a thread, or ``await aclose()`` from another loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """An event loop running on a daemon thread named ``name`` until closed."""

    __slots__ = ("_thread", "loop")

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coroutine`` on the portal's loop; its future, for any thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the portal's loop and block until its result."""
        return self.submit(coroutine).result()

    def close(self) -> None:
        """Stop the loop, join the thread and close the loop (blocks)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    async def aclose(self) -> None:
        """``close()`` for a caller on another event loop: the join does not block it."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self._thread.join)
        self.loop.close()
