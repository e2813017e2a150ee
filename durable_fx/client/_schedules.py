"""Durable schedules from a client: create one, then steer it through its handle.

Every change is an operation sent to the schedule's entity (``_schedules``),
so it takes effect once a worker runs it, in the order sent; ``describe``
reads what the entity has applied. A schedule exists from the moment its
``create`` is applied.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._entity import EntityId, EntityMetadata, EntityRowState
from .._ids import validate_instance_id
from .._registry import name_of
from .._schedule_spec import CatchUp, Overlap, ScheduleSpec
from .._schedules import (
    RUNNER_SUFFIX,
    SCHEDULE_ENTITY,
    ScheduleDefinition,
    ScheduleKind,
    ScheduleRun,
    ScheduleState,
    occurrence_id,
    schedule_entity,
)
from .._serialization import encode
from ..storage._records import InstanceQuery

if TYPE_CHECKING:
    from ._async import AsyncDurableClient

__all__ = [
    "AsyncScheduleHandle",
    "ScheduleDescription",
    "ScheduleHandle",
    "create",
    "describe_state",
    "description_json",
    "list_descriptions",
    "schedule_definition",
]

_UPCOMING = 5
_WIDEST = datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
"""A time whose run id is as long as any (it has microseconds)."""

KEEP: Any = object()
"""``update``'s default for ``input``: keep the current one (``None`` is an input too)."""


@dataclass(frozen=True, slots=True)
class ScheduleDescription:
    """A schedule as its entity holds it: what it runs, when, and what ran."""

    schedule_id: str
    orchestration: str
    input: str | None
    """The orchestration's input as JSON text."""
    spec: ScheduleSpec
    overlap: Overlap
    catch_up_window: timedelta
    paused: bool
    next_runs: list[datetime]
    """The next occurrences (up to five), the first one's tick already on its way."""
    recent_runs: list[ScheduleRun]
    """The latest occurrences, oldest first: their instance ids and how they ended."""
    running: list[str]
    """Instance ids of runs not finished yet."""
    created_at: datetime
    catch_up: CatchUp = "window"
    """What an occurrence later than ``catch_up_window`` does (``CatchUp``)."""
    kind: ScheduleKind = "orchestration"
    """``timer_trigger``: a timer-triggered function's schedule (``durable-fx serve``)."""


def description_json(description: ScheduleDescription) -> dict[str, Any]:
    """A schedule's description as JSON (the CLI's ``--json`` and the HTTP API)."""
    spec = description.spec
    return {
        "id": description.schedule_id,
        "orchestration": description.orchestration,
        "input": None if description.input is None else json.loads(description.input),
        "cron": spec.cron,
        "every_seconds": spec.every.total_seconds() if spec.every else None,
        "start_at": spec.start_at.isoformat() if spec.start_at else None,
        "end_at": spec.end_at.isoformat() if spec.end_at else None,
        "jitter_seconds": spec.jitter.total_seconds(),
        "overlap": description.overlap,
        "catch_up_window_seconds": description.catch_up_window.total_seconds(),
        "catch_up": description.catch_up,
        "kind": description.kind,
        "paused": description.paused,
        "next_runs": [moment.isoformat() for moment in description.next_runs],
        "recent_runs": [
            {
                "scheduled_at": run.scheduled_at.isoformat(),
                "instance_id": run.instance_id,
                "outcome": run.outcome,
                "detail": run.detail,
                "past_due": run.past_due,
            }
            for run in description.recent_runs
        ],
        "running": list(description.running),
        "created_at": description.created_at.isoformat(),
    }


def schedule_definition(
    schedule_id: str,
    orchestration: Callable[..., Any] | str,
    input: Any,
    *,
    cron: str | None,
    every: timedelta | None,
    start_at: datetime | None,
    end_at: datetime | None,
    jitter: timedelta,
    overlap: Overlap,
    catch_up_window: timedelta,
) -> ScheduleDefinition:
    """A checked definition; ``ValueError`` naming the field that is wrong."""
    schedule_entity(schedule_id)  # the id's own rules: an entity key's
    # Its runs' ids must be valid too (the longest: a manual run's runner), or the
    # schedule would fail at its first occurrence.
    longest = occurrence_id(schedule_id, _WIDEST, manual=True, check=False) + RUNNER_SUFFIX
    try:
        validate_instance_id(longest)
    except ValueError as error:
        raise ValueError(
            f"schedule id {schedule_id[:80]!r} is too long for its runs' ids: {error}"
        ) from None
    if catch_up_window < timedelta(0):
        raise ValueError(f"catch_up_window may not be negative, got {catch_up_window}")
    spec = ScheduleSpec(cron=cron, every=every, start_at=start_at, end_at=end_at, jitter=jitter)
    return ScheduleDefinition(
        schedule_id=schedule_id,
        orchestration=name_of(orchestration),
        input=encode(input),
        spec=spec,
        overlap=overlap,
        catch_up_window=catch_up_window,
    )


def describe_state(state: ScheduleState) -> ScheduleDescription:
    """What ``describe`` returns for a schedule entity's state."""
    definition = state.definition
    upcoming: list[datetime] = []
    moment = state.next_at
    while moment is not None and len(upcoming) < _UPCOMING:
        upcoming.append(moment)
        moment = definition.spec.next_after(moment, anchor=state.created_at)
    return ScheduleDescription(
        schedule_id=definition.schedule_id,
        orchestration=definition.orchestration,
        input=definition.input,
        spec=definition.spec,
        overlap=definition.overlap,
        catch_up_window=definition.catch_up_window,
        paused=state.paused,
        next_runs=upcoming,
        recent_runs=list(state.runs),
        running=list(state.running),
        created_at=state.created_at,
        catch_up=definition.catch_up,
        kind=definition.kind,
    )


class AsyncScheduleHandle:
    """One schedule, by id: pause, resume, update, trigger, delete, describe it."""

    def __init__(self, client: AsyncDurableClient, schedule_id: str) -> None:
        self._client = client
        self._entity: EntityId = schedule_entity(schedule_id)

    @property
    def schedule_id(self) -> str:
        return self._entity.key

    async def describe(self) -> ScheduleDescription | None:
        """The schedule as last applied; ``None`` if it does not exist (or not yet)."""
        found: EntityMetadata[ScheduleState] | None
        found = await self._client.get_entity(self._entity, ScheduleState)
        return None if found is None or found.state is None else describe_state(found.state)

    async def pause(self) -> None:
        """Stop starting runs (a run going on goes on) until ``resume``."""
        await self._send("pause")

    async def resume(self) -> None:
        """Start runs again, from the next occurrence after now (none are caught up)."""
        await self._send("resume")

    async def trigger_now(self) -> None:
        """Run the orchestration once now, outside the schedule (the overlap policy applies)."""
        await self._send("trigger_now")

    async def delete(self) -> None:
        """Remove the schedule: no further run starts (runs going on go on)."""
        await self._send("delete")

    async def update(
        self,
        *,
        input: Any = KEEP,
        cron: str | None = None,
        every: timedelta | None = None,
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        jitter: timedelta | None = None,
        overlap: Overlap | None = None,
        catch_up_window: timedelta | None = None,
    ) -> None:
        """Change what the schedule runs or when; what is not given stays.

        ``cron`` or ``every`` replaces the rule (give one). The next
        occurrence is computed from now with the new rule. ``ValueError`` if
        the schedule does not exist or a value is invalid.
        """
        current = await self.describe()
        if current is None:
            raise ValueError(f"schedule {self.schedule_id!r} does not exist")
        spec = current.spec
        rule = {"cron": cron, "every": every} if cron is not None or every is not None else {}
        changes = {"start_at": start_at, "end_at": end_at, "jitter": jitter}
        kept = {**spec.model_dump(), **rule, **{k: v for k, v in changes.items() if v is not None}}
        definition = ScheduleDefinition(
            schedule_id=self.schedule_id,
            orchestration=current.orchestration,
            input=current.input if input is KEEP else encode(input),
            spec=ScheduleSpec(**kept),
            overlap=current.overlap if overlap is None else overlap,
            catch_up_window=(
                current.catch_up_window if catch_up_window is None else catch_up_window
            ),
            catch_up=current.catch_up,
            kind=current.kind,
        )
        await self._send("update", definition)

    async def _send(self, operation: str, input: Any = None) -> None:
        await self._client.signal_entity(
            self._entity, operation, input, request_id=f"{operation}-{uuid.uuid4().hex}"
        )


class ScheduleHandle:
    """One schedule, through a ``DurableClient`` (blocking); see ``AsyncScheduleHandle``."""

    def __init__(
        self, handle: AsyncScheduleHandle, call: Callable[[Coroutine[Any, Any, Any]], Any]
    ) -> None:
        self._handle = handle
        self._call = call

    @property
    def schedule_id(self) -> str:
        return self._handle.schedule_id

    def describe(self) -> ScheduleDescription | None:
        """See ``AsyncScheduleHandle.describe``."""
        described: ScheduleDescription | None = self._call(self._handle.describe())
        return described

    def pause(self) -> None:
        """See ``AsyncScheduleHandle.pause``."""
        self._call(self._handle.pause())

    def resume(self) -> None:
        """See ``AsyncScheduleHandle.resume``."""
        self._call(self._handle.resume())

    def trigger_now(self) -> None:
        """See ``AsyncScheduleHandle.trigger_now``."""
        self._call(self._handle.trigger_now())

    def delete(self) -> None:
        """See ``AsyncScheduleHandle.delete``."""
        self._call(self._handle.delete())

    def update(self, **changes: Any) -> None:
        """See ``AsyncScheduleHandle.update``."""
        self._call(self._handle.update(**changes))


async def create(client: AsyncDurableClient, definition: ScheduleDefinition) -> AsyncScheduleHandle:
    """Send ``definition``'s create; ``ValueError`` if a schedule with its id exists."""
    entity = schedule_entity(definition.schedule_id)
    existing: EntityMetadata[Any] | None = await client.get_entity(entity)
    if existing is not None:
        raise ValueError(f"schedule {definition.schedule_id!r} already exists")
    await client.signal_entity(entity, "create", definition)
    return AsyncScheduleHandle(client, definition.schedule_id)


async def list_descriptions(
    client: AsyncDurableClient,
    *,
    id_prefix: str = "",
    orchestration: str | None = None,
    paused: bool | None = None,
) -> list[ScheduleDescription]:
    """The schedules whose id starts with ``id_prefix`` (and that match the rest), by id."""
    found: list[ScheduleDescription] = []
    continuation: str | None = None
    store = client.store
    while True:
        query = InstanceQuery(
            instance_id_prefix=f"@{SCHEDULE_ENTITY}@{id_prefix}",
            entities=True,
            page_size=500,
            continuation=continuation,
        )
        page = await store.query_instances(query)
        for record in page.items:
            state = EntityRowState.of_row(record.input).state
            if state is None:
                continue
            description = describe_state(ScheduleState.model_validate_json(state))
            if orchestration is not None and description.orchestration != orchestration:
                continue
            if paused is not None and description.paused != paused:
                continue
            found.append(description)
        if page.continuation is None:
            return sorted(found, key=lambda d: d.schedule_id)
        continuation = page.continuation
