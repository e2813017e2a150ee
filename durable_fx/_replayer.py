"""Replay a saved history against today's code, with no store and no worker.

Run it in CI over histories captured from production (``durable-fx history
ID --json`` or ``client.get(id, history=True)``) to learn before deploying
whether a code change breaks instances that are still running.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from ._errors import InvalidOperationError
from ._history import ExecutionStarted, FailureDetails, HistoryEvent
from ._registry import HasRegistry, Registry, registry_of
from ._replay.executor import OrchestrationExecutor
from ._serialization import decode
from ._state import OrchestrationStatus

__all__ = ["ReplayResult", "Replayer", "history_from_json", "history_to_json"]

_HISTORY = TypeAdapter(list[HistoryEvent])


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Where the code stands after replaying a history.

    ``status`` is RUNNING when the code is still waiting for more events;
    ``pending`` names what it would schedule next that the history does not
    record yet (for a history cut mid-episode).
    """

    status: OrchestrationStatus
    output: Any
    failure: FailureDetails | None
    pending: list[str]


class Replayer:
    """Replays histories against the orchestrators of an app.

    ``replay`` raises ``NonDeterminismError`` when the code takes another path
    than the history records.
    """

    def __init__(self, app: Registry | HasRegistry) -> None:
        self._registry = registry_of(app)

    def replay(self, history: Sequence[HistoryEvent] | str) -> ReplayResult:
        """Replay one execution's history and report the outcome.

        ``history`` is the events, or their JSON as ``history_from_json`` reads
        it (``history_to_json`` output, or what ``durable-fx history ID --json``
        prints).
        """
        events = history_from_json(history) if isinstance(history, str) else list(history)
        started = next((e for e in events if isinstance(e, ExecutionStarted)), None)
        if started is None:
            raise InvalidOperationError("the history has no ExecutionStarted event to replay from")
        definition = self._registry.get_orchestrator(started.name)
        executor = OrchestrationExecutor(definition, started, registry=self._registry)
        executor.replay(events)
        leftover = executor.apply([])
        completion = executor.completion
        if completion is None:
            status = OrchestrationStatus.RUNNING
            return ReplayResult(status, None, None, [a.describe() for a in leftover.actions])
        return ReplayResult(
            OrchestrationStatus(completion.status),
            decode(completion.result),
            completion.failure,
            [a.describe() for a in leftover.actions],
        )


def history_to_json(history: Sequence[HistoryEvent]) -> str:
    """JSON text of a history, for golden files."""
    return _HISTORY.dump_json(list(history), indent=2).decode()


def history_from_json(text: str) -> list[HistoryEvent]:
    """A history read back from JSON: ``history_to_json`` output, or ``durable-fx history --json``.

    The CLI's document carries the whole history under ``"history"`` (its
    ``"events"`` rows leave out the episode markers unless ``--episodes`` was
    given, and replay needs them for ``ctx.current_utc_datetime``).
    """
    document = json.loads(text)
    if isinstance(document, list):
        return _HISTORY.validate_python(document)
    if isinstance(document, dict) and isinstance(document.get("history"), list):
        return _HISTORY.validate_python(document["history"])
    rows = document.get("events") if isinstance(document, dict) else None
    if isinstance(rows, list) and all(isinstance(row, dict) and "event" in row for row in rows):
        return _HISTORY.validate_python([row["event"] for row in rows])
    raise ValueError(
        "not a history: expected a JSON list of events (history_to_json) or the document "
        "`durable-fx history ID --json` prints"
    )
