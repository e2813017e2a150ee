"""The replay engine: runs an orchestrator generator against its history.

Pure: no I/O, no clock, no randomness. Given the past events it rebuilds the
orchestrator's state (``replay``); given new events it advances it and returns
the new actions (``apply``). An executor lives on between episodes in the
worker's cache, so a warm instance only ever processes its new events; a cold
one replays once.

Pairing rule: every action the code creates takes the next sequence number;
the history event recorded for it (``TaskScheduled``, ``TimerCreated``,
``SubOrchestrationInstanceCreated``, ``EventSent``) carries the same number
as ``event_id``. A history event whose number the code did not produce, or
produced as another kind or name, is non-determinism.
"""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import NonDeterminismError, SerializationError
from .._history import (
    EntityLockGranted,
    EntityLockRequested,
    EntityOperationCalled,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityOperationSignaled,
    EntityUnlockSent,
    EventRaised,
    EventSent,
    ExecutionCompleted,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestratorStarted,
    PatchApplied,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from .._registry import OrchestratorDefinition, Registry
from .._serialization import encode
from .actions import (
    Action,
    CallEntity,
    CompleteOrchestration,
    CreateSubOrchestration,
    CreateTimer,
    LockEntities,
    RecordPatch,
    ScheduleTask,
    SendEvent,
    SignalEntity,
    UnlockEntity,
)
from .admission import admits
from .context import Observation, OrchestrationContext
from .tasks import Task

__all__ = ["EpisodeOutput", "OrchestrationExecutor", "failure_from_exception"]

_SCHEDULING_EVENTS: dict[type[Any], type[Any]] = {
    TaskScheduled: ScheduleTask,
    TimerCreated: CreateTimer,
    SubOrchestrationInstanceCreated: CreateSubOrchestration,
    EventSent: SendEvent,
    PatchApplied: RecordPatch,
    EntityOperationCalled: CallEntity,
    EntityOperationSignaled: SignalEntity,
    EntityLockRequested: LockEntities,
    EntityUnlockSent: UnlockEntity,
}
_USER_CODE_ERRORS = (Exception, SystemExit)
"""What orchestrator code may raise to fail its instance (sys.exit() must not stop a worker)."""


@dataclass(slots=True)
class EpisodeOutput:
    """What one ``apply`` produced."""

    accepted: list[HistoryEvent]
    """The new events that belong in history (duplicates and stale results left out)."""
    actions: list[Action]
    """Newly created actions, in the order the code created them."""
    completion: CompleteOrchestration | None
    """Set once the orchestration finished in this or an earlier episode."""
    custom_status: str | None
    suspended: bool
    completed_now: bool = False
    """True if the completion happened in this episode."""
    cancelled_timers: list[int] = field(default_factory=list)
    """Timers (created in this or an earlier episode) that can no longer matter."""
    terminate_on_close: list[str] = field(default_factory=list)
    """Running children to terminate because the execution ended (``ParentClosePolicy``)."""
    observations: list[Observation] = field(default_factory=list)
    """Timers that fired and waits that ended in this episode (for tracing)."""


class OrchestrationExecutor:
    """Replays and advances one execution of one orchestrator."""

    def __init__(
        self,
        definition: OrchestratorDefinition,
        started: ExecutionStarted,
        *,
        registry: Registry | None = None,
    ) -> None:
        self._definition = definition
        self._ctx = OrchestrationContext(
            instance_id=started.instance_id,
            execution_id=started.execution_id,
            name=definition.name,
            registry=registry,
            started_at=started.timestamp,
            version=started.version,
        )
        self._generator: Generator[Any, Any, Any] | None = None
        self._blocked_on: Task[Any] | None = None
        self._started = False
        self._suspended = False
        self._suspended_buffer: list[HistoryEvent] = []
        self._reported_completion = False
        self._superseded: frozenset[str] = frozenset()

    @property
    def context(self) -> OrchestrationContext:
        """The context the orchestrator sees (read-only use outside the engine)."""
        return self._ctx

    @property
    def failures_raised(self) -> frozenset[int]:
        """Ids of the tasks whose failure reached the code (no retry was left).

        A rewind drops exactly these results: the attempts a retry policy
        already followed with a timer stay in history, so ids stay aligned.
        """
        return frozenset(self._ctx._failures_raised)

    @property
    def running_children(self) -> list[str]:
        """Instance ids of sub-orchestrations started and not yet finished."""
        return list(self._ctx._children.values())

    @property
    def superseded(self) -> frozenset[str]:
        """Executions rewinds replaced: its children and entities may still answer them."""
        return self._superseded

    @property
    def completion(self) -> CompleteOrchestration | None:
        """How the orchestration ended, once it has."""
        return self._ctx._completion

    def replay(self, past: Sequence[HistoryEvent]) -> None:
        """Rebuild state from history that is already stored."""
        self._ctx._is_replaying = True
        # is_patched() asks before the code reaches its marker: know them all up front.
        self._ctx._patches_in_history = frozenset(
            e.name for e in past if isinstance(e, PatchApplied)
        )
        replaced = [
            e.previous_execution_id
            for e in past
            if isinstance(e, ExecutionRewound) and e.previous_execution_id
        ]
        self._superseded = frozenset(replaced)
        if replaced:  # a rewound run makes the values the run its first rewind replaced made
            self._ctx._lineage_id = replaced[0]
        ended = False
        try:
            for event in past:
                ended = ended or isinstance(event, ExecutionCompleted)
                self._apply_event(event)
            # Actions the old episodes recorded were matched above; any left are
            # code the old run did not reach, which apply() reports as new.
        finally:
            self._ctx._is_replaying = False
        self._ctx._cancelled_timers = []  # the episodes that recorded it cancelled those
        self._ctx._observations = []
        # A history without its ExecutionCompleted (a rewound one) whose code
        # now completes has not reported that completion yet: apply() does.
        self._reported_completion = self._ctx._completion is not None and ended

    def apply(self, new_events: Iterable[HistoryEvent]) -> EpisodeOutput:
        """Apply new events, run the code as far as it goes, and return what it did."""
        self._ctx._is_replaying = False
        accepted: list[HistoryEvent] = []
        for event in new_events:
            if self._admit(event):
                accepted.append(event)
                self._apply_event(event)
        actions = list(self._ctx._pending_actions.values())
        self._ctx._pending_actions.clear()
        cancelled = self._ctx._cancelled_timers
        self._ctx._cancelled_timers = []
        observations, self._ctx._observations = self._ctx._observations, []
        completion = self._ctx._completion
        completed_now = completion is not None and not self._reported_completion
        self._reported_completion = completion is not None
        return EpisodeOutput(
            accepted=accepted,
            actions=actions,
            completion=completion,
            custom_status=self._ctx._custom_status,
            suspended=self._suspended,
            completed_now=completed_now,
            cancelled_timers=cancelled,
            terminate_on_close=self._terminate_on_close() if completed_now else [],
            observations=observations,
        )

    def _terminate_on_close(self) -> list[str]:
        ctx = self._ctx
        return [child for task, child in ctx._children.items() if task in ctx._terminate_on_close]

    # -- admission: what goes into history ------------------------------------------

    def _admit(self, event: HistoryEvent) -> bool:
        """False for events that must not reach history: duplicates and late results."""
        if isinstance(event, EntityLockGranted | EntityOperationCompleted | EntityOperationFailed):
            task_id = self._entity_task(event)
            return self._ctx._completion is None and task_id in self._ctx._result_handlers
        return admits(
            event,
            started=self._started,
            completed=self._ctx._completion is not None,
            open_ids=self._ctx._result_handlers,
        )

    # -- event dispatch --------------------------------------------------------------

    def _apply_event(self, event: HistoryEvent) -> None:
        if self._suspended and not isinstance(
            event, ExecutionResumed | ExecutionTerminated | OrchestratorStarted
        ):
            self._suspended_buffer.append(event)
            return
        match event:
            case OrchestratorStarted():
                self._ctx._now = event.timestamp
            case ExecutionStarted():
                self._start(event)
            case (
                TaskScheduled()
                | TimerCreated()
                | SubOrchestrationInstanceCreated()
                | EventSent()
                | PatchApplied()
                | EntityOperationCalled()
                | EntityOperationSignaled()
                | EntityLockRequested()
                | EntityUnlockSent()
            ):
                self._match_scheduled(event)
            case EntityLockGranted():
                if (task_id := self._entity_task(event)) is not None:
                    self._resolve(task_id, event)
            case EntityOperationCompleted() | EntityOperationFailed():
                if (task_id := self._entity_task(event)) is not None:
                    self._resolve(task_id, _as_task_result(event, task_id))
            case (
                TaskCompleted()
                | TaskFailed()
                | SubOrchestrationInstanceCompleted()
                | (SubOrchestrationInstanceFailed())
            ):
                self._resolve(event.task_scheduled_id, event)
            case TimerFired():
                self._resolve(event.timer_id, event)
            case EventRaised():
                self._ctx._receive_event(
                    event.name, event.input, event.trace_context, event.timestamp
                )
            case ExecutionSuspended():
                self._suspended = True
            case ExecutionResumed():
                self._resume_from_suspension()
            case ExecutionTerminated():
                self._ctx._complete(CompleteOrchestration("TERMINATED", event.input))
                self._close_generator()
            case _:
                return
        self._advance()

    def _entity_task(
        self, event: EntityLockGranted | EntityOperationCompleted | EntityOperationFailed
    ) -> int | None:
        """The task an entity's answer is for: it names the request, not the task id."""
        if isinstance(event, EntityLockGranted):
            return self._ctx._lock_requests.get(event.critical_section_id)
        return self._ctx._entity_calls.get(event.request_id)

    def _start(self, event: ExecutionStarted) -> None:
        if self._started:
            return
        self._started = True
        self._ctx._now = max(self._ctx._now, event.timestamp)
        try:
            self._ctx._input = self._definition.input_codec.decode(event.input)
        except SerializationError as error:
            self._fail(error)
            return
        try:
            returned = self._call_orchestrator()
        except _USER_CODE_ERRORS as error:
            self._fail(error)
            return
        if inspect.isgenerator(returned):
            self._generator = returned
            self._step(None, None)
        else:
            self._succeed(returned)

    def _call_orchestrator(self) -> Any:
        fn = self._definition.fn
        takes_input = len(inspect.signature(fn).parameters) >= 2
        return fn(self._ctx, self._ctx._input) if takes_input else fn(self._ctx)

    def _match_scheduled(self, event: HistoryEvent) -> None:
        assert isinstance(
            event,
            TaskScheduled
            | TimerCreated
            | SubOrchestrationInstanceCreated
            | EventSent
            | PatchApplied
            | EntityOperationCalled
            | EntityOperationSignaled
            | EntityLockRequested
            | EntityUnlockSent,
        )
        action = self._ctx._pending_actions.pop(event.event_id, None)
        expected_type = _SCHEDULING_EVENTS[type(event)]
        recorded = _describe_event(event)
        if action is None:
            raise NonDeterminismError(
                self._ctx.instance_id, event.event_id, recorded, "no action at that step"
            )
        same_name = _same_target(action, event)
        if not isinstance(action, expected_type) or not same_name:
            raise NonDeterminismError(
                self._ctx.instance_id, event.event_id, recorded, action.describe()
            )

    def _resolve(self, task_id: int, event: HistoryEvent) -> None:
        handler = self._ctx._result_handlers.pop(task_id, None)
        if handler is None:
            return
        self._ctx._children.pop(task_id, None)
        try:
            handler(event)
        except NonDeterminismError:
            raise
        except _USER_CODE_ERRORS as error:
            # User code that runs outside the generator (a RetryPolicy.handle
            # predicate) failed: that fails the orchestration, as an exception
            # in the orchestrator would, instead of failing every episode.
            self._fail(error)

    def _resume_from_suspension(self) -> None:
        self._suspended = False
        buffered, self._suspended_buffer = self._suspended_buffer, []
        for event in buffered:
            self._apply_event(event)

    # -- driving the generator -----------------------------------------------------------

    def _advance(self) -> None:
        """Resume the generator for as long as what it waits on is complete."""
        while (
            self._generator is not None
            and self._ctx._completion is None
            and self._blocked_on is not None
            and self._blocked_on.is_complete
        ):
            task, self._blocked_on = self._blocked_on, None
            if task.is_failed:
                self._step(None, task.error)
            else:
                self._step(task.get_result(), None)

    def _step(self, value: Any, error: BaseException | None) -> None:
        assert self._generator is not None
        try:
            yielded = self._generator.throw(error) if error else self._generator.send(value)
        except StopIteration as stop:
            self._succeed(stop.value)
            return
        except NonDeterminismError:
            raise
        except _USER_CODE_ERRORS as failure:
            self._fail(failure)
            return
        if not isinstance(yielded, Task):
            self._fail(
                TypeError(
                    f"orchestrator {self._definition.name!r} yielded {type(yielded).__name__}; "
                    "yield tasks from ctx.call_activity, ctx.create_timer, ctx.wait_for_event, "
                    "ctx.call_sub_orchestrator, when_all or when_any"
                )
            )
            return
        self._blocked_on = yielded

    def _succeed(self, value: Any) -> None:
        if self._ctx._completion is not None:
            return
        try:
            result = encode(value)
        except SerializationError as error:
            self._fail(error)
            return
        self._ctx._complete(CompleteOrchestration("COMPLETED", result))
        self._generator = None

    def _fail(self, error: BaseException) -> None:
        self._ctx._complete(CompleteOrchestration("FAILED", failure=failure_from_exception(error)))
        self._close_generator()

    def _close_generator(self) -> None:
        generator, self._generator = self._generator, None
        if generator is None:
            return
        # close() runs the code's finally blocks. The orchestration has ended, so
        # work they schedule is dropped, and one that yields again or raises
        # (RuntimeError: generator ignored GeneratorExit) must not stop it ending.
        pending = dict(self._ctx._pending_actions)
        with contextlib.suppress(*_USER_CODE_ERRORS):
            generator.close()
        self._ctx._pending_actions = pending


def failure_from_exception(error: BaseException) -> FailureDetails:
    """Describe an exception as text that survives storage."""
    try:
        message = str(error)
    except Exception:  # a broken __str__ must not make the failure itself unreportable
        message = f"<{type(error).__name__}: str() failed>"
    return FailureDetails(
        error_type=type(error).__name__,
        message=message,
        stack_trace="".join(traceback.format_exception(error)),
    )


def _same_target(action: Action, event: HistoryEvent) -> bool:
    """Whether a recorded event names what the action does (its activity, child, operation)."""
    if isinstance(action, ScheduleTask | CreateSubOrchestration | RecordPatch):
        return action.name == getattr(event, "name", None)
    if isinstance(action, LockEntities):
        return list(action.lock_set) == getattr(event, "lock_set", None)
    if isinstance(action, UnlockEntity):
        return action.entity_instance_id == getattr(event, "target_instance_id", None)
    if isinstance(action, CallEntity | SignalEntity):
        return (action.entity_instance_id, action.operation) == (
            getattr(event, "target_instance_id", None),
            getattr(event, "operation", None),
        )
    return True


def _as_task_result(
    event: EntityOperationCompleted | EntityOperationFailed, task_id: int
) -> TaskCompleted | TaskFailed:
    """An entity's answer as the result of the task that awaits it."""
    if isinstance(event, EntityOperationFailed):
        return TaskFailed(
            timestamp=event.timestamp, task_scheduled_id=task_id, failure=event.failure
        )
    return TaskCompleted(timestamp=event.timestamp, task_scheduled_id=task_id, result=event.output)


def _describe_event(event: HistoryEvent) -> str:
    match event:
        case EntityOperationCalled() | EntityOperationSignaled():
            return f"{event.kind}({event.target_instance_id!r}, {event.operation!r})"
        case TaskScheduled():
            return f"TaskScheduled({event.name!r})"
        case SubOrchestrationInstanceCreated():
            return f"SubOrchestrationInstanceCreated({event.name!r})"
        case TimerCreated():
            return f"TimerCreated({event.fire_at.isoformat()})"
        case EventSent():
            return f"EventSent({event.instance_id!r}, {event.name!r})"
        case PatchApplied():
            return f"PatchApplied({event.name!r})"
        case _:
            return event.kind
