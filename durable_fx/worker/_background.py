"""Running an async service on a background thread, and stopping it from any thread.

The ``Worker`` and the ``SidecarServer`` run this way: ``start()`` runs the
service's ``run()`` on a daemon thread with an event loop of its own, and
returns once the service is ready, or re-raises the error that kept it from
getting there; ``stop()`` asks it to stop and waits for the thread; ``with``
is ``start()`` ... ``stop()``. A ``StopSignal`` carries the stop request to the
service's loop, whichever thread asks and whenever: before that loop exists
too, which is how ``async with`` and ``await run()`` are stopped as well.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Protocol, TypeVar

__all__ = ["BackgroundThread", "StartStopContext", "StopSignal"]


class StopSignal:
    """A stop asked for from any thread, at any moment, delivered to the service's loop."""

    __slots__ = ("_requested", "_target", "_what")

    def __init__(self, what: str = "service") -> None:
        self._what = what
        self._requested = threading.Event()
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def arm(self) -> asyncio.Event:
        """On the service's loop as it starts: the event a request sets, set already if one came.

        Raises ``RuntimeError`` the second time: a service that ran has closed
        what it owned (its store, its threads) and cannot run again.
        """
        if self._target is not None:
            raise RuntimeError(
                f"this {self._what} has run already and cannot run again: create a new one"
            )
        stopping = asyncio.Event()
        self._target = (asyncio.get_running_loop(), stopping)
        # After the target is published: a request made meanwhile is seen here or sets it there.
        if self._requested.is_set():
            stopping.set()
        return stopping

    def request(self) -> None:
        """Set the armed event (now, or as soon as one is armed); safe from any thread."""
        self._requested.set()
        target = self._target
        if target is not None and not target[0].is_closed():
            loop, stopping = target
            loop.call_soon_threadsafe(stopping.set)


class BackgroundThread:
    """Runs a service's ``run()`` on a daemon thread until ``stop()``.

    Args:
        stop: The service's stop signal: ``stop()`` requests it.
        name: The thread's name.
        what: What the service is called in messages ("worker", "sidecar").
        log: Where an error that ``start()`` does not raise is reported.
    """

    __slots__ = ("_error", "_log", "_name", "_ready", "_stop", "_thread", "_what")

    def __init__(self, stop: StopSignal, *, name: str, what: str, log: logging.Logger) -> None:
        self._stop = stop
        self._name = name
        self._what = what
        self._log = log
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def ready(self) -> None:
        """The service serves: ``start()`` may return (called on the service's loop)."""
        self._ready.set()

    def start(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run()`` on a new thread; return once it is ready, or raise why it is not."""
        if self._thread is not None:
            raise RuntimeError(f"this {self._what} is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._main, args=(run,), name=self._name, daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self) -> None:
        """Request the stop and wait for the thread; nothing to do if it is not started."""
        if self._thread is None:
            return
        self._stop.request()
        self._thread.join()
        self._thread = None

    def _main(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            asyncio.run(run())
        except BaseException as error:  # surfaced to start() if it happens before ready
            self._error = error
            if self._ready.is_set():
                self._log.exception("%s stopped with an error", self._what)
        finally:
            self._ready.set()


class _StartsAndStops(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_StartsAndStops)


class StartStopContext:
    """Mixin: ``with service:`` calls its ``start()``, and its ``stop()`` on the way out."""

    __slots__ = ()

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self: _StartsAndStops,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
