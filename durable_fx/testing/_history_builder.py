"""Histories written by hand, for golden replay tests of the ``Replayer``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Self

from .._history import (
    EventRaised,
    EventSent,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestratorStarted,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from .._history import TimerPurpose as _TimerPurpose
from .._replay.executor import failure_from_exception
from .._replayer import history_to_json
from .._serialization import encode
from ._clock import ManualClock

__all__ = ["HistoryBuilder"]

TimerPurpose = _TimerPurpose


class HistoryBuilder:
    """Builds one execution's history the way the runtime records it.

    Each ``episode`` opens a replay step at a later time (the time
    ``ctx.current_utc_datetime`` shows from then on); the other methods
    append what happened in it. Ids are the sequence numbers of the
    orchestrator's actions, in the order it takes them (activities, timers,
    sub-orchestrations and sent events share one count from 0). Inputs,
    results and event data are Python values, stored as JSON::

        history = (
            HistoryBuilder("greeter", input="Ada")
            .scheduled(0, "greet", "Ada")
            .episode()
            .completed(0, "hello Ada")
        )
        assert Replayer(app).replay(history.events).output == "hello Ada"

    Args:
        name: The orchestrator's registered name.
        input: The orchestration's input.
        instance_id: The instance id ``ExecutionStarted`` records.
        execution_id: The execution id it records.
        start: When the first episode runs (timezone-aware); ``DEFAULT_START`` by default.
    """

    DEFAULT_START = ManualClock.DEFAULT_START
    """The ``TestEnvironment``'s first time too, so their histories line up."""

    def __init__(
        self,
        name: str,
        input: Any = None,
        *,
        instance_id: str = "instance-1",
        execution_id: str = "execution-1",
        start: datetime | None = None,
    ) -> None:
        self.now = start or self.DEFAULT_START
        if self.now.utcoffset() is None:
            raise ValueError(f"HistoryBuilder needs a timezone-aware start, got {self.now!r}")
        self._timers: dict[int, datetime] = {}
        self._events: list[HistoryEvent] = [
            OrchestratorStarted(timestamp=self.now),
            ExecutionStarted(
                timestamp=self.now,
                name=name,
                instance_id=instance_id,
                execution_id=execution_id,
                input=encode(input),
            ),
        ]

    @property
    def events(self) -> list[HistoryEvent]:
        """The history so far (a copy), oldest first: what ``Replayer.replay`` takes."""
        return list(self._events)

    def to_json(self) -> str:
        """The history as JSON text, as ``history_to_json`` writes it (for golden files)."""
        return history_to_json(self._events)

    def episode(self, after: timedelta | float = 1.0) -> Self:
        """Open the next replay episode ``after`` (a timedelta or seconds) the previous one."""
        step = after if isinstance(after, timedelta) else timedelta(seconds=after)
        if step < timedelta(0):
            raise ValueError(f"an episode cannot run before the previous one ({step})")
        self.now += step
        return self.then(OrchestratorStarted(timestamp=self.now))

    def scheduled(self, task_id: int, name: str, input: Any = None, *, attempt: int = 1) -> Self:
        """The orchestrator called activity ``name`` as action ``task_id``."""
        return self.then(
            TaskScheduled(
                event_id=task_id,
                timestamp=self.now,
                name=name,
                input=encode(input),
                attempt=attempt,
            )
        )

    def completed(self, task_id: int, result: Any = None) -> Self:
        """Activity ``task_id`` returned ``result``."""
        return self.then(
            TaskCompleted(timestamp=self.now, task_scheduled_id=task_id, result=encode(result))
        )

    def failed(self, task_id: int, error: BaseException | FailureDetails) -> Self:
        """Activity ``task_id`` raised ``error`` (``error_type`` is its class name)."""
        return self.then(
            TaskFailed(timestamp=self.now, task_scheduled_id=task_id, failure=_failure(error))
        )

    def timer(
        self, timer_id: int, fire_at: datetime | timedelta, purpose: TimerPurpose = "timer"
    ) -> Self:
        """The orchestrator created timer ``timer_id`` (``fire_at``: a time, or a delay from now).

        ``purpose`` is ``"retry"`` for a retry policy's wait,
        ``"event-timeout"`` for ``wait_for_event(..., timeout=...)`` and
        ``"activity-timeout"`` for ``call_activity(..., timeout=...)``.
        """
        at = self.now + fire_at if isinstance(fire_at, timedelta) else fire_at
        self._timers[timer_id] = at
        return self.then(
            TimerCreated(event_id=timer_id, timestamp=self.now, fire_at=at, purpose=purpose)
        )

    def fired(self, timer_id: int) -> Self:
        """Timer ``timer_id`` fired (at the time it was created for)."""
        try:
            at = self._timers[timer_id]
        except KeyError:
            raise ValueError(f"no timer {timer_id} was created in this history") from None
        return self.then(TimerFired(timestamp=at, timer_id=timer_id, fire_at=at))

    def event(self, name: str, data: Any = None) -> Self:
        """External event ``name`` arrived with ``data``."""
        return self.then(EventRaised(timestamp=self.now, name=name, input=encode(data)))

    def sent(self, event_id: int, instance_id: str, name: str, data: Any = None) -> Self:
        """The orchestrator sent event ``name`` to ``instance_id`` as action ``event_id``."""
        return self.then(
            EventSent(
                event_id=event_id,
                timestamp=self.now,
                instance_id=instance_id,
                name=name,
                input=encode(data),
            )
        )

    def sub_orchestration(
        self, task_id: int, name: str, instance_id: str, input: Any = None
    ) -> Self:
        """The orchestrator started sub-orchestration ``name`` as action ``task_id``."""
        return self.then(
            SubOrchestrationInstanceCreated(
                event_id=task_id,
                timestamp=self.now,
                name=name,
                instance_id=instance_id,
                input=encode(input),
            )
        )

    def sub_completed(self, task_id: int, result: Any = None) -> Self:
        """Sub-orchestration ``task_id`` returned ``result``."""
        return self.then(
            SubOrchestrationInstanceCompleted(
                timestamp=self.now, task_scheduled_id=task_id, result=encode(result)
            )
        )

    def sub_failed(self, task_id: int, error: BaseException | FailureDetails) -> Self:
        """Sub-orchestration ``task_id`` failed with ``error``."""
        return self.then(
            SubOrchestrationInstanceFailed(
                timestamp=self.now, task_scheduled_id=task_id, failure=_failure(error)
            )
        )

    def suspended(self, reason: Any = None) -> Self:
        """The instance was suspended."""
        return self.then(ExecutionSuspended(timestamp=self.now, input=encode(reason)))

    def resumed(self, reason: Any = None) -> Self:
        """The instance was resumed."""
        return self.then(ExecutionResumed(timestamp=self.now, input=encode(reason)))

    def terminated(self, reason: Any = None) -> Self:
        """The instance was terminated."""
        return self.then(ExecutionTerminated(timestamp=self.now, input=encode(reason)))

    def finished(
        self, result: Any = None, *, failure: BaseException | FailureDetails | None = None
    ) -> Self:
        """The orchestration returned ``result``, or failed with ``failure``."""
        if failure is not None:
            ended = ExecutionCompleted(
                timestamp=self.now, status="FAILED", failure=_failure(failure)
            )
        else:
            ended = ExecutionCompleted(
                timestamp=self.now, status="COMPLETED", result=encode(result)
            )
        return self.then(ended)

    def then(self, *events: HistoryEvent) -> Self:
        """Append events as they are (see ``durable_fx.history`` for their types)."""
        self._events.extend(events)
        return self


def _failure(error: BaseException | FailureDetails) -> FailureDetails:
    return error if isinstance(error, FailureDetails) else failure_from_exception(error)
