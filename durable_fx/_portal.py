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
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.loop.run_forever()
        # Stopped: wind down what is left the way asyncio.run does, so that no task
        # is dropped mid-request with its connection open (a socket left to the
        # garbage collector, which warns "unclosed transport").
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        # One more turn: transports closed just now drop their sockets in a callback.
        self.loop.run_until_complete(asyncio.sleep(0))

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
