"""Metrics: counts and durations of runs, through OpenTelemetry's metrics API.

Like the spans, they go nowhere until an SDK is configured. Names follow the
OpenTelemetry conventions: dotted, units in UCUM (``s``, ``{orchestration}``),
durations as histograms in seconds. The instruments are made once, from the
API's proxy meter, which hands their data to whichever provider is set later
(OpenTelemetry's own pattern for libraries).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

__all__ = [
    "record_activity",
    "record_cache",
    "record_ended",
    "record_episode",
    "record_event_delay",
    "record_poisoned",
    "record_started",
    "watch_backlog",
]

log = logging.getLogger("durable_fx.metrics")

_meter = metrics.get_meter("durable_fx")

_started = _meter.create_counter(
    "durable_fx.orchestrations.started",
    unit="{orchestration}",
    description="Orchestrations started",
)
_ended = _meter.create_counter(
    "durable_fx.orchestrations.ended",
    unit="{orchestration}",
    description="Executions that ended, by status",
)
_episodes = _meter.create_histogram(
    "durable_fx.episode.duration", unit="s", description="Time to run and commit one episode"
)
_lookups = _meter.create_counter(
    "durable_fx.executor.lookups",
    unit="{episode}",
    description="Episodes that found their state cached (hit) or replayed it (miss)",
)
_activities = _meter.create_histogram(
    "durable_fx.activity.duration", unit="s", description="Time an activity attempt ran"
)
_event_delays = _meter.create_histogram(
    "durable_fx.event.delay",
    unit="s",
    description="Time from an event's arrival to the orchestration acting on it",
)
_poisoned = _meter.create_counter(
    "durable_fx.messages.poisoned",
    unit="{message}",
    description="Messages taken out of circulation (poisoned), by queue",
)


def record_started(name: str) -> None:
    """An orchestration was started (``client.start``)."""
    _started.add(1, {"durabletask.task.name": name})


def record_ended(name: str, status: str) -> None:
    """An execution ended: COMPLETED, FAILED, TERMINATED or CONTINUED_AS_NEW."""
    _ended.add(1, {"durabletask.task.name": name, "durabletask.task.status": status})


def record_episode(name: str, seconds: float) -> None:
    """An episode of ``name`` ran and was committed in ``seconds``."""
    _episodes.record(seconds, {"durabletask.task.name": name})


def record_cache(hit: bool) -> None:
    """An episode found its executor cached (``hit``) or replayed the history."""
    _lookups.add(1, {"durable_fx.cache": "hit" if hit else "miss"})


def record_activity(name: str, seconds: float, outcome: str) -> None:
    """An activity attempt ran for ``seconds`` with ``outcome`` (Succeeded or Failed)."""
    _activities.record(seconds, {"durabletask.task.name": name, "durabletask.task.result": outcome})


def record_event_delay(name: str, event: str, seconds: float) -> None:
    """An event raised ``seconds`` ago was acted on by the orchestration waiting for it."""
    attributes = {"durabletask.task.name": name, "durabletask.event.name": event}
    _event_delays.record(max(0.0, seconds), attributes)


def record_poisoned(queue: str, count: int = 1) -> None:
    """``count`` messages of ``queue`` were poisoned."""
    _poisoned.add(count, {"messaging.destination.name": queue})


class Backlog(Protocol):
    """One queue's waiting work (``durable_fx.storage.QueueBacklog``)."""

    @property
    def queue(self) -> str: ...

    @property
    def due(self) -> int: ...

    @property
    def oldest_age(self) -> timedelta | None: ...


ReadBacklog = Callable[[], Coroutine[Any, Any, Sequence[Backlog]]]


class _Watch:
    """A store whose backlog is read, on its own event loop, when metrics are collected."""

    _FRESH_FOR = 1.0  # both gauges of one collection share a reading

    def __init__(self, read: ReadBacklog, loop: asyncio.AbstractEventLoop, store: str) -> None:
        self._read = read
        self._loop = loop
        self.store = store
        self._reading: Sequence[Backlog] = ()
        self._read_at = float("-inf")

    def reading(self) -> Sequence[Backlog]:
        if time.monotonic() - self._read_at < self._FRESH_FOR:
            return self._reading
        loop = self._loop
        # Collected from the loop's own thread (or after it stopped): waiting would deadlock.
        if not loop.is_running() or _running_loop() is loop:
            return ()
        future = asyncio.run_coroutine_threadsafe(self._read(), loop)
        try:
            self._reading = future.result(timeout=10)
        except Exception as error:  # storage down or slow: no point rather than a stale one
            future.cancel()
            log.warning("could not read the %s backlog for metrics: %r", self.store, error)
            return ()
        self._read_at = time.monotonic()
        return self._reading


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # called from a thread with no loop (the SDK's reader)
        return None


# Instruments are process-wide (OpenTelemetry's model), and so are the stores they observe.
_watches: dict[int, _Watch] = {}
_watches_lock = threading.Lock()


def watch_backlog(
    read: ReadBacklog, loop: asyncio.AbstractEventLoop, store: str
) -> Callable[[], None]:
    """Report ``read()``'s queues in the backlog gauges until the returned function is called.

    Nothing is read unless an SDK collects the gauges: without one, no cost.
    """
    watch = _Watch(read, loop, store)
    with _watches_lock:
        _watches[id(watch)] = watch

    def unwatch() -> None:
        with _watches_lock:
            _watches.pop(id(watch), None)

    return unwatch


Observe = Callable[[CallbackOptions], Iterator[Observation]]


def _observations(value: Callable[[Backlog], float]) -> Observe:
    def observe(options: CallbackOptions) -> Iterator[Observation]:
        with _watches_lock:
            watches = list(_watches.values())
        for watch in watches:
            for backlog in watch.reading():
                attributes = {
                    "messaging.destination.name": backlog.queue,
                    "durable_fx.store": watch.store,
                }
                yield Observation(value(backlog), attributes)

    return observe


def _age(backlog: Backlog) -> float:
    return backlog.oldest_age.total_seconds() if backlog.oldest_age is not None else 0.0


_meter.create_observable_gauge(
    "durable_fx.queue.backlog",
    callbacks=[_observations(lambda backlog: backlog.due)],
    unit="{message}",
    description="Messages waiting in a store's queue that could be taken now",
)
_meter.create_observable_gauge(
    "durable_fx.queue.oldest_age",
    callbacks=[_observations(_age)],
    unit="s",
    description="How long the oldest waiting message of a store's queue has waited (0: none)",
)
