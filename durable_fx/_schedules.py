"""Durable schedules: an entity per schedule that starts an orchestration at each occurrence.

A schedule is the entity ``@dfx-schedule@<schedule id>``; its state is the
definition and what has run. It sets its next occurrence as a delayed signal
to itself (``tick``), so a waiting schedule costs a stored message and
nothing else: no polling, and under Functions no instance. At a tick it
starts ``durable_fx.scheduled_run``, which runs the schedule's orchestration
as a sub-orchestration under the occurrence's own instance id
(``<schedule id>-<UTC time>``) and signals the outcome back (``finished``):
that is how the overlap policy knows a run is still going, and how
``describe`` knows how runs ended. The entity's batch commits the start with
the new state, so a crash never starts an occurrence twice.

Ticks carry the occurrence they are for and the schedule's generation; an
update, pause, resume or delete moves the generation on, so a tick that was
already on its way does nothing.

A schedule of kind ``timer_trigger`` (``durable-fx serve``'s timer triggers)
calls the activity ``durable_fx.timer_trigger`` instead of an orchestration,
with what the function's ``func.TimerRequest`` reports (``TimerCall``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._entity import DurableEntity, EntityId
from ._errors import TaskFailedError
from ._ids import validate_instance_id
from ._schedule_spec import CatchUp, Overlap, ScheduleSpec

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = [
    "RUNNER",
    "RUNNER_SUFFIX",
    "SCHEDULE_ENTITY",
    "TIMER_ACTIVITY",
    "RunOutcome",
    "ScheduleDefinition",
    "ScheduleKind",
    "ScheduleRun",
    "ScheduleState",
    "TimerCall",
    "occurrence_id",
    "register_builtins",
    "schedule_entity",
]

SCHEDULE_ENTITY = "dfx-schedule"
RUNNER = "durable_fx.scheduled_run"
RUNNER_SUFFIX = ".schedule"
"""A run's runner is its instance id with this suffix."""
TIMER_ACTIVITY = "durable_fx.timer_trigger"
"""What a ``timer_trigger`` schedule's runs call (``durable-fx serve`` registers it)."""
_KEPT_RUNS = 20

RunOutcome = Literal["running", "completed", "failed", "skipped", "missed"]
ScheduleKind = Literal["orchestration", "timer_trigger"]


class ScheduleDefinition(BaseModel):
    """What a schedule runs and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schedule_id: str
    orchestration: str
    input: str | None = None
    """The orchestration's input as JSON text."""
    spec: ScheduleSpec
    overlap: Overlap = "skip"
    catch_up_window: timedelta = timedelta(minutes=1)
    """How late an occurrence may still start (after downtime); older ones are missed."""
    catch_up: CatchUp = "window"
    """What an occurrence later than ``catch_up_window`` does (``CatchUp``)."""
    kind: ScheduleKind = "orchestration"
    """``timer_trigger``: ``orchestration`` names a timer-triggered function, which
    runs through the activity ``durable_fx.timer_trigger`` (``input``: its binding)."""


class ScheduleRun(BaseModel):
    """One occurrence: when it was due, its instance, and how it ended (so far)."""

    model_config = ConfigDict(frozen=True)

    scheduled_at: datetime
    instance_id: str | None = None
    outcome: RunOutcome = "running"
    detail: str | None = None
    past_due: bool = False
    """It ran later than the catch-up window (``catch_up="once"``: after downtime)."""


class ScheduleState(BaseModel):
    """The schedule entity's state."""

    definition: ScheduleDefinition
    created_at: datetime
    paused: bool = False
    generation: int = 0
    next_at: datetime | None = None
    """The occurrence the pending tick is for; ``None``: none is coming (paused or ended)."""
    running: list[str] = Field(default_factory=list)
    buffered: datetime | None = None
    """An occurrence waiting for the running one to end (``buffer_one``)."""
    runs: list[ScheduleRun] = Field(default_factory=list)
    """The latest occurrences, oldest first (at most 20)."""


class _Tick(BaseModel):
    at: datetime
    generation: int


class _Finished(BaseModel):
    instance_id: str
    outcome: Literal["completed", "failed"]
    detail: str | None = None


class TimerCall(BaseModel):
    """A timer trigger's run: the function, and what its ``func.TimerRequest`` reports."""

    function: str
    binding: str | None
    """The schedule's input: the binding's settings as JSON text."""
    scheduled_at: datetime
    past_due: bool
    last: datetime | None
    """The previous run's occurrence (``None``: the first run)."""
    last_updated: datetime
    """When the status last changed: the previous run's occurrence, or the creation."""


class _RunRequest(BaseModel):
    schedule_id: str
    orchestration: str
    input: str | None
    instance_id: str
    timer: TimerCall | None = None


def schedule_entity(schedule_id: str) -> EntityId:
    """The entity that holds schedule ``schedule_id``."""
    return EntityId(SCHEDULE_ENTITY, schedule_id)


def occurrence_id(
    schedule_id: str, at: datetime, *, manual: bool = False, check: bool = True
) -> str:
    """The instance id of the run of ``schedule_id`` due at ``at`` (the same on every try)."""
    stamp = at.strftime("%Y%m%dT%H%M%S") + (f".{at.microsecond:06d}" if at.microsecond else "")
    instance_id = f"{schedule_id}-{'manual-' if manual else ''}{stamp}Z"
    return validate_instance_id(instance_id) if check else instance_id


class Schedule(DurableEntity):
    """The operations of a schedule entity (the client sends them; ticks it sends itself)."""

    def create(self, definition: ScheduleDefinition) -> None:
        if self.get_state() is not None:
            return  # created already: a second create changes nothing
        # Whole seconds: an ``every`` schedule counts from here, and its runs' ids show it.
        now = self.context.now().replace(microsecond=0)
        state = ScheduleState(definition=definition, created_at=now)
        self._arm(state, after=now)

    def update(self, definition: ScheduleDefinition) -> None:
        state = self._state()
        state.definition = definition
        state.generation += 1
        if not state.paused:
            self._arm(state, after=self.context.now())
        else:
            self._save(state)

    def pause(self) -> None:
        state = self._state()
        state.paused, state.next_at = True, None
        state.generation += 1
        self._save(state)

    def resume(self) -> None:
        state = self._state()
        if not state.paused:
            return
        state.paused = False
        state.generation += 1
        self._arm(state, after=self.context.now())

    def trigger_now(self) -> None:
        """Run once now, outside the schedule (the overlap policy still applies)."""
        state = self._state()
        now = self.context.now()
        self._occur(state, now, occurrence_id(state.definition.schedule_id, now, manual=True))
        self._save(state)

    def delete(self) -> None:
        self.delete_state()  # a tick on its way finds no state and does nothing

    def tick(self, tick: _Tick) -> None:
        if self.get_state() is None:
            return
        state = self._state()
        if state.paused or tick.generation != state.generation or tick.at != state.next_at:
            return  # superseded by an update, pause or resume
        definition = state.definition
        now = self.context.now()
        window = definition.catch_up_window
        late = now - tick.at > window
        if late and definition.catch_up != "once":
            _remember(state, ScheduleRun(scheduled_at=tick.at, outcome="missed"))
            self._arm(state, after=now - window if definition.catch_up == "window" else now)
            return
        occurrence = occurrence_id(definition.schedule_id, tick.at)
        self._occur(state, tick.at, occurrence, past_due=late)
        # A past-due run stands for every occurrence missed: go on from now, as the host does.
        self._arm(state, after=now if late else tick.at)

    def finished(self, finished: _Finished) -> None:
        if self.get_state() is None:
            return
        state = self._state()
        if finished.instance_id in state.running:
            state.running.remove(finished.instance_id)
        state.runs = [
            run.model_copy(update={"outcome": finished.outcome, "detail": finished.detail})
            if run.instance_id == finished.instance_id
            else run
            for run in state.runs
        ]
        if state.buffered is not None and not state.running:
            at, state.buffered = state.buffered, None
            self._start(state, at, occurrence_id(state.definition.schedule_id, at))
        self._save(state)

    # -- helpers (not operations: private names are not callable) -----------------

    def _state(self) -> ScheduleState:
        state = self.get_state(ScheduleState)
        if state is None:
            raise LookupError(f"schedule {self.context.entity_id.key!r} does not exist")
        return state  # type: ignore[no-any-return]

    def _save(self, state: ScheduleState) -> None:
        self.set_state(state)

    def _arm(self, state: ScheduleState, *, after: datetime) -> None:
        """Set the next occurrence after ``after`` and send its tick (with jitter)."""
        spec = state.definition.spec
        state.next_at = spec.next_after(after, anchor=state.created_at)
        if state.next_at is not None:
            jitter = spec.jitter.total_seconds() * random.random()
            deliver = state.next_at + timedelta(seconds=jitter)
            tick = _Tick(at=state.next_at, generation=state.generation)
            self.signal_entity(self.context.entity_id, "tick", tick, at=deliver)
        self._save(state)

    def _occur(
        self, state: ScheduleState, at: datetime, instance_id: str, *, past_due: bool = False
    ) -> None:
        """An occurrence is due: start it, or skip or buffer it while a run goes on."""
        overlap = state.definition.overlap
        if state.running and overlap == "skip":
            detail = f"{state.running[0]} was still running"
            _remember(state, ScheduleRun(scheduled_at=at, outcome="skipped", detail=detail))
        elif state.running and overlap == "buffer_one":
            state.buffered = at
        else:
            self._start(state, at, instance_id, past_due=past_due)

    def _start(
        self, state: ScheduleState, at: datetime, instance_id: str, *, past_due: bool = False
    ) -> None:
        definition = state.definition
        request = _RunRequest(
            schedule_id=definition.schedule_id,
            orchestration=definition.orchestration,
            input=definition.input,
            instance_id=instance_id,
            timer=_timer_call(state, at, past_due) if definition.kind == "timer_trigger" else None,
        )
        self.start_orchestration(RUNNER, request, instance_id=instance_id + RUNNER_SUFFIX)
        state.running.append(instance_id)
        run = ScheduleRun(scheduled_at=at, instance_id=instance_id, past_due=past_due)
        _remember(state, run)


def _remember(state: ScheduleState, run: ScheduleRun) -> None:
    state.runs = [*state.runs, run][-_KEPT_RUNS:]


def _timer_call(state: ScheduleState, at: datetime, past_due: bool) -> TimerCall:
    """The facts the host's schedule monitor would hold before this run (``Last``/``Next``)."""
    started = [run for run in state.runs if run.instance_id is not None]
    last = started[-1].scheduled_at if started else None
    return TimerCall(
        function=state.definition.orchestration,
        binding=state.definition.input,
        scheduled_at=at,
        past_due=past_due,
        last=last,
        last_updated=last or state.created_at,
    )


def scheduled_run(ctx: Any, request: _RunRequest) -> Generator[Any, Any, str]:
    """Run one occurrence as a sub-orchestration and tell the schedule how it ended."""
    payload = None if request.input is None else json.loads(request.input)
    outcome: Literal["completed", "failed"] = "completed"
    detail = None
    try:
        if request.timer is not None:
            yield ctx.call_activity(TIMER_ACTIVITY, request.timer)
        else:
            yield ctx.call_sub_orchestrator(
                request.orchestration, payload, instance_id=request.instance_id
            )
    except TaskFailedError as failure:
        outcome, detail = "failed", f"{failure.error_type}: {failure.message}"[:500]
    finished = _Finished(instance_id=request.instance_id, outcome=outcome, detail=detail)
    ctx.signal_entity(schedule_entity(request.schedule_id), "finished", finished)
    return outcome


def register_builtins(registry: Registry) -> None:
    """Register what every worker runs for schedules: the entity and the runner."""
    registry.entity(name=SCHEDULE_ENTITY)(Schedule)
    registry.orchestrator(name=RUNNER)(scheduled_run)
