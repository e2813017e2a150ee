"""Metrics: counts and durations of runs, through OpenTelemetry's metrics API.

Like the spans, they go nowhere until an SDK is configured. Names follow the
OpenTelemetry conventions: dotted, units in UCUM (``s``, ``{orchestration}``),
durations as histograms in seconds. The instruments are made once, from the
API's proxy meter, which hands their data to whichever provider is set later
(OpenTelemetry's own pattern for libraries).
"""

from __future__ import annotations

from opentelemetry import metrics

__all__ = [
    "record_activity",
    "record_cache",
    "record_ended",
    "record_episode",
    "record_event_delay",
    "record_started",
]

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
