"""The async client: start, inspect and steer orchestration instances.

``AsyncDurableClient`` does the work; ``DurableClient`` (``_sync``) is a
thin synchronous facade that runs it on a private event-loop thread, so both
share one implementation. Over 500 lines for a reason: a fifth of it is the
typed overloads of ``start``, ``run`` and ``handle`` (one per orchestrator
shape), which must sit on the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar, overload

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict

from .._clock import Clock, SystemClock
from .._entity import (
    EntityId,
    EntityMetadata,
    EntityRowState,
    decode_state,
    is_entity_instance_id,
)
from .._errors import InstanceExistsError, InstanceNotFoundError, InvalidOperationError
from .._history import (
    EntityOperationSignaled,
    EntityUnlockSent,
    EventRaised,
    ExecutionResumed,
    ExecutionRewound,
    ExecutionStarted,
    ExecutionSuspended,
    ExecutionTerminated,
    HistoryEvent,
)
from .._ids import validate_instance_id
from .._metrics import record_started
from .._registry import name_of, validate_event_name
from .._replay.context import OrchestrationContext
from .._reuse import FINISHED, IdReuse, IdReusePolicy, replaceable_statuses
from .._schedule_spec import Overlap
from .._serialization import decode, encode
from .._state import OrchestrationState, OrchestrationStatus
from .._tracing import current_trace_context, span_in, trace_context_of
from ..storage import open_store
from ..storage._finished import finished_on
from ..storage._protocol import CountsInstances, Store
from ..storage._records import (
    InstanceQuery,
    InstanceRecord,
    OrchestrationMessage,
    PoisonedMessage,
    entity_started,
)
from ._handle import AsyncInstanceHandle, result_codec
from ._schedules import (
    AsyncScheduleHandle,
    ScheduleDescription,
    list_descriptions,
    schedule_definition,
)
from ._schedules import create as send_create

__all__ = ["AsyncDurableClient", "EntityPage", "PoisonIds", "QueryResult", "StatusFilter"]

T = TypeVar("T")
R = TypeVar("R")
In = TypeVar("In")
_Ctx = OrchestrationContext
StatusFilter = OrchestrationStatus | str | Iterable[OrchestrationStatus | str] | None
PoisonIds = str | Iterable[str]
"""One poison id, or several."""


class QueryResult(BaseModel):
    """One page of instances; pass ``continuation`` to ``query`` for the next page."""

    model_config = ConfigDict(frozen=True)

    items: list[OrchestrationState]
    continuation: str | None = None


@dataclass(frozen=True, slots=True)
class EntityStorageCleanup:
    """What ``clean_entity_storage`` did."""

    empty_entities_removed: int = 0
    orphaned_locks_released: int = 0


@dataclass(frozen=True, slots=True)
class EntityPage:
    """One page of entities (with state); pass ``continuation`` to ``query_entities`` for more."""

    items: list[EntityMetadata[Any]]
    continuation: str | None = None


class AsyncDurableClient:
    """Starts and manages orchestration instances in one store (async API).

    Args:
        store: A ``Store`` or a store URL (default: ``default_store_url()``).
        clock: Source of timestamps (tests inject a manual one).
        default_version: The version ``start`` gives an orchestration when
            the call names none (a ``DurableApp`` passes its own).
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
        default_version: str | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._default_version = default_version
        self._owns_store = not isinstance(store, Store)
        self._store = store if isinstance(store, Store) else open_store(store, clock=self._clock)

    @property
    def store(self) -> Store:
        """The store this client talks to."""
        return self._store

    # The overloads check the input against the orchestrator's parameter.
    @overload
    async def start(
        self,
        orchestrator: Callable[[_Ctx, In], object],
        input: In,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    async def start(
        self,
        orchestrator: Callable[[_Ctx, None], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    async def start(
        self,
        orchestrator: Callable[[_Ctx], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    async def start(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...

    async def start(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str:
        """Start an orchestration and return its instance id.

        Raises ``InstanceExistsError`` if ``instance_id`` names an instance
        that exists, finished or not, unless ``reuse`` says to replace an
        instance in its status (``IdReusePolicy.REPLACE_FINISHED``, or the
        finished statuses to replace): the replaced instance's history is
        dropped. The check and the start are one atomic step in the store.
        With ``start_at`` the instance stays PENDING until then. ``version``
        is the orchestration's version (the client's ``default_version`` if
        not given): it shows in the instance's state and in ``ctx.version``,
        and a ``Worker`` with a ``VersionPolicy`` runs only the versions it
        matches.
        """
        return await self._start(orchestrator, input, instance_id, start_at, reuse, version)

    async def _start(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any,
        instance_id: str | None,
        start_at: datetime | None,
        reuse: IdReuse,
        version: str | None = None,
    ) -> str:
        replaceable = replaceable_statuses(reuse)
        if instance_id is None:
            instance_id = uuid.uuid4().hex
        validate_instance_id(instance_id)
        if is_entity_instance_id(instance_id):
            raise ValueError(f"instance ids that start with '@' are entities' ({instance_id!r})")
        if start_at is not None and start_at.tzinfo is None:
            raise ValueError("start_at must be timezone-aware (use UTC)")
        name = name_of(orchestrator)
        version = version if version is not None else self._default_version
        attributes = {"durabletask.type": "orchestration", "durabletask.task.name": name}
        attributes["durabletask.task.instance_id"] = instance_id
        with span_in(
            f"create_orchestration:{name}", None, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            started = ExecutionStarted(
                timestamp=self._clock.now(),
                name=name,
                instance_id=instance_id,
                execution_id=uuid.uuid4().hex,
                input=encode(input),
                scheduled_start=start_at,
                version=version,
                trace_context=trace_context_of(span),
            )
            message = OrchestrationMessage(instance_id, started, started.execution_id, start_at)
            await self._store.create_instance(message, replaceable=replaceable)
        record_started(name)
        return instance_id

    @overload
    def handle(
        self, orchestrator: Callable[..., Generator[Any, Any, R]], instance_id: str
    ) -> AsyncInstanceHandle[R]: ...
    @overload
    def handle(
        self, orchestrator: str, instance_id: str, *, result_type: type[R]
    ) -> AsyncInstanceHandle[R]: ...
    @overload
    def handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str
    ) -> AsyncInstanceHandle[Any]: ...

    def handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str, *, result_type: Any = None
    ) -> AsyncInstanceHandle[Any]:
        """A handle on instance ``instance_id`` of ``orchestrator``, typed by its result.

        ``handle.result()`` is the orchestrator's ``R`` (``def f(ctx, x) ->
        Orchestrator[R]``), rebuilt from JSON as its declared type; with a name,
        give ``result_type`` for that. Makes no request.
        """
        return self._handle(orchestrator, instance_id, result_type)

    def _handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str, result_type: Any
    ) -> AsyncInstanceHandle[Any]:
        validate_instance_id(instance_id)
        return AsyncInstanceHandle(self, instance_id, result_codec(orchestrator, result_type))

    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx, In], Generator[Any, Any, R]],
        input: In,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx, None], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx, In], object],
        input: In,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx, None], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    async def run(
        self,
        orchestrator: Callable[[_Ctx], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    async def run(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
        result_type: type[R],
    ) -> R: ...
    @overload
    async def run(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...

    async def run(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """Start an orchestration, wait for it and return its result (as ``handle().result()``).

        Raises ``OrchestrationFailedError`` if it fails or is terminated, and
        ``TimeoutError`` after ``timeout`` seconds (``None``: no limit; the
        instance keeps running).
        """
        return await self._run(orchestrator, input, instance_id, reuse, timeout, result_type)

    async def _run(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any,
        instance_id: str | None,
        reuse: IdReuse,
        timeout: float | None,
        result_type: Any,
    ) -> Any:
        started = await self._start(orchestrator, input, instance_id, None, reuse)
        return await self._handle(orchestrator, started, result_type).result(timeout=timeout)

    async def get(self, instance_id: str, *, history: bool = False) -> OrchestrationState | None:
        """The instance's current state (with its history if asked), or ``None``."""
        record = await self._store.get_instance(instance_id)
        if record is None:
            return None
        events = await self._store.load_history(instance_id) if history else None
        return _state_of(record, events)

    async def wait(
        self, instance_id: str, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """Wait until the instance is COMPLETED, FAILED or TERMINATED and return its state.

        A worker in this process on the same store object tells the wait when it
        ends the instance; otherwise (another process) the wait polls, from 5 ms
        doubling up to ``poll_interval``. Raises ``TimeoutError`` after
        ``timeout`` seconds (``None``: no limit).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay = 0.005
        # Watch before the first read: a notice between the read and the pause is kept.
        with finished_on(self._store).watch(instance_id) as notice:
            while True:
                state = await self.get(instance_id)
                if state is None:
                    raise InstanceNotFoundError(instance_id)
                if state.status.is_terminal:
                    return state
                if deadline is not None and loop.time() >= deadline:
                    raise TimeoutError(
                        f"instance {instance_id!r} is still {state.status.value} "
                        f"after {timeout:g} s"
                    )
                remaining = poll_interval if deadline is None else max(0.0, deadline - loop.time())
                ended = await notice.wait(min(delay, poll_interval, remaining))
                # A worker tells after its commit: a rewind or a new run with this id
                # read since then makes that notice stale (read again, then).
                if ended is not None and ended.updated_at >= state.updated_at:
                    return _state_of(ended, None)
                delay *= 2

    async def raise_event(
        self, instance_id: str, name: str, data: Any = None, *, event_id: str | None = None
    ) -> bool:
        """Deliver event ``name`` to an instance; False if ``event_id`` was raised before.

        ``event_id`` makes the call idempotent for the life of the instance:
        the store remembers it with the event, so raising again with the same
        id, even after the first was handled or the instance finished, delivers
        nothing and returns False. Raises ``InstanceNotFoundError`` for an
        unknown instance and ``InvalidOperationError`` (delivering nothing) for
        a new event to a COMPLETED, FAILED or TERMINATED one. A name that is
        empty, over 256 characters or holds control or format characters is a
        ``ValueError``, as in the management API.
        """
        try:
            validate_event_name(name)
        except ValueError as error:
            raise ValueError(f"invalid event name {name[:80]!r}: {error}") from None
        return await self._raise_event_json(instance_id, name, encode(data), event_id=event_id)

    async def _raise_event_json(
        self, instance_id: str, name: str, payload: str | None, *, event_id: str | None = None
    ) -> bool:
        """``raise_event`` with the data already JSON text (the gRPC sidecar passes it through)."""
        validate_instance_id(instance_id)
        event = EventRaised(
            timestamp=self._clock.now(),
            name=name,
            input=payload,
            trace_context=current_trace_context(),
        )
        key = f"event:{event_id}" if event_id else ""
        # The store checks the status in the same step as the insert: a read
        # here first would leave a window where the instance finishes and the
        # accepted event is never delivered.
        return await self._store.enqueue(OrchestrationMessage(instance_id, event, key=key))

    # -- entities ---------------------------------------------------------------------------

    async def signal_entity(
        self,
        entity: EntityId,
        operation: str,
        input: Any = None,
        *,
        at: datetime | None = None,
        request_id: str | None = None,
    ) -> bool:
        """Send ``operation`` (with ``input``) to ``entity``; False if ``request_id`` was used.

        The entity runs it once, after the operations sent to it before. It
        exists from its first operation on: there is nothing to create. With
        ``at`` (timezone-aware) it runs then, not before; the store keeps it
        until then. ``request_id`` makes the call idempotent for the life of
        the entity: sending it again delivers nothing and returns False.
        """
        _require_aware(at=at)
        return await self._signal_entity_json(
            entity, operation, encode(input), at=at, request_id=request_id
        )

    async def _signal_entity_json(
        self,
        entity: EntityId,
        operation: str,
        payload: str | None,
        *,
        at: datetime | None = None,
        request_id: str | None = None,
    ) -> bool:
        """``signal_entity`` with the input already JSON text (the sidecar passes it through)."""
        try:
            validate_event_name(operation)
        except ValueError as error:
            raise ValueError(f"invalid operation name {operation[:80]!r}: {error}") from None
        event = EntityOperationSignaled(
            timestamp=self._clock.now(),
            request_id=request_id or uuid.uuid4().hex,
            operation=operation,
            input=payload,
            scheduled_time=at,
            target_instance_id=entity.instance_id,
        )
        message = OrchestrationMessage(entity.instance_id, event, visible_at=at)
        try:
            return await self._store.enqueue(message)
        except InstanceNotFoundError:
            await self._create_entity(entity)
            return await self._store.enqueue(message)

    async def _create_entity(self, entity: EntityId) -> None:
        """The entity's instance, for its first operation (created at most once)."""
        started = entity_started(entity.instance_id, self._clock.now())
        message = OrchestrationMessage(entity.instance_id, started, started.execution_id)
        # Another caller's first operation may have created it meanwhile.
        with contextlib.suppress(InstanceExistsError):
            await self._store.create_instance(message)

    async def get_entity(
        self, entity: EntityId, state_type: type[T] | Any = Any
    ) -> EntityMetadata[T] | None:
        """``entity`` with its state decoded as ``state_type``; ``None`` if it has no state.

        An entity has state once an operation set it, and none again after one
        deleted it (as in Durable Functions, an entity without state does not exist).
        """
        record = await self._store.get_instance(entity.instance_id)
        if record is None:
            return None
        state = EntityRowState.of_row(record.input).state
        if state is None:
            return None
        return EntityMetadata(entity, record.updated_at, decode_state(state, state_type), state)

    async def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str = "",
        state_type: Any = Any,
        page_size: int = 100,
        continuation: str | None = None,
    ) -> EntityPage:
        """One page of entities that have state, newest first: all, or ``name``'s.

        ``key_prefix`` (with ``name``) keeps the keys that start with it. A
        page may hold fewer than ``page_size`` entities (those without state
        are left out) and still have a ``continuation``.
        """
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        if key_prefix and name is None:
            raise ValueError("key_prefix needs the entity's name")
        prefix = "@" if name is None else f"@{name.lower()}@{key_prefix}"
        query = InstanceQuery(
            instance_id_prefix=prefix,
            entities=True,
            page_size=page_size,
            continuation=continuation,
        )
        page = await self._store.query_instances(query)
        items = []
        for record in page.items:
            state = EntityRowState.of_row(record.input).state
            if state is not None:
                entity = EntityId.parse(record.instance_id)
                decoded = decode_state(state, state_type)
                items.append(EntityMetadata(entity, record.updated_at, decoded, state))
        return EntityPage(items, page.continuation)

    # -- schedules ---------------------------------------------------------------------

    async def create_schedule(
        self,
        schedule_id: str,
        orchestration: Callable[..., Any] | str,
        input: Any = None,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        start_at: datetime | None = None,
        end_at: datetime | None = None,
        jitter: timedelta = timedelta(0),
        overlap: Overlap = "skip",
        catch_up_window: timedelta = timedelta(minutes=1),
    ) -> AsyncScheduleHandle:
        """Run ``orchestration`` with ``input`` at every occurrence of ``cron`` or ``every``.

        ``cron`` is read as the Functions host reads a timer trigger: six
        fields, seconds first (``"0 */5 * * * *"``), or the classic five; UTC.
        ``every`` counts from ``start_at`` (default: when the schedule is
        created). Each occurrence starts the orchestration under the instance
        id ``<schedule_id>-<UTC time>`` (``demo-20261207T060500Z``), once,
        whatever crashes. ``overlap`` says what an occurrence does while the
        previous run still runs: ``"skip"`` it, ``"buffer_one"`` (run it when
        that one ends; at most one waits) or ``"allow_all"``. An occurrence
        found more than ``catch_up_window`` late (the app was down) is
        recorded as missed. ``jitter`` delays each run by up to that much.

        The schedule exists once a worker has applied its creation.
        ``ValueError`` names what is wrong, or says the schedule exists.
        """
        definition = schedule_definition(
            schedule_id,
            orchestration,
            input,
            cron=cron,
            every=every,
            start_at=start_at,
            end_at=end_at,
            jitter=jitter,
            overlap=overlap,
            catch_up_window=catch_up_window,
        )
        return await send_create(self, definition)

    def get_schedule_handle(self, schedule_id: str) -> AsyncScheduleHandle:
        """The handle of schedule ``schedule_id`` (whether or not it exists)."""
        return AsyncScheduleHandle(self, schedule_id)

    async def list_schedules(
        self,
        *,
        id_prefix: str = "",
        orchestration: Callable[..., Any] | str | None = None,
        paused: bool | None = None,
    ) -> list[ScheduleDescription]:
        """The schedules, by id; with filters, those that match all of them.

        ``id_prefix``: ids that start so; ``orchestration``: those that run
        it; ``paused``: those paused (``True``) or not (``False``).
        """
        name = None if orchestration is None else name_of(orchestration)
        return await list_descriptions(self, id_prefix=id_prefix, orchestration=name, paused=paused)

    async def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> EntityStorageCleanup:
        """Remove empty entities and release locks whose holder has ended (reads every entity).

        An empty entity has no state (never set, or deleted), holds no lock
        and has nothing waiting: it is invisible to reads, but its row stays
        until removed here. A request that reaches it meanwhile keeps it (the
        store removes it only if nothing arrived since it was read).

        An orchestration that ends releases its locks itself. Releasing is
        the fallback for a lock request that was still on its way through the
        lock set when its orchestration ended, and took an entity after the
        unlock: the entity gets the unlock its holder would have sent (once,
        however often this runs), through its inbox like any other request.
        """
        removed = released = 0
        continuation: str | None = None
        while True:
            query = InstanceQuery(entities=True, page_size=500, continuation=continuation)
            page = await self._store.query_instances(query)
            for record in page.items:
                row = EntityRowState.of_row(record.input)
                if row.critical_section is not None:
                    if release_orphaned_locks and await self._ended(row.locked_by):
                        released += await self._unlock_for(record.instance_id, row)
                elif remove_empty_entities and row.state is None and not row.queue:
                    purge = self._store.purge_idle_instance(record.instance_id, record.version)
                    removed += await purge
            if page.continuation is None:
                return EntityStorageCleanup(removed, released)
            continuation = page.continuation

    async def _ended(self, holder: str | None) -> bool:
        found = await self._store.get_instance(holder) if holder else None
        return found is None or found.status.is_terminal

    async def _unlock_for(self, entity_id: str, row: EntityRowState) -> int:
        assert row.critical_section is not None
        unlock = EntityUnlockSent(
            timestamp=self._clock.now(),
            critical_section_id=row.critical_section,
            parent_instance_id=row.locked_by,
            target_instance_id=entity_id,
        )
        try:
            return int(await self._store.enqueue(OrchestrationMessage(entity_id, unlock)))
        except InstanceNotFoundError:
            return 0  # purged meanwhile: nothing holds it any more

    async def terminate(
        self, instance_id: str, reason: Any = None, *, recursive: bool = True
    ) -> None:
        """Stop an instance (and, by default, the sub-orchestrations it is waiting on).

        Terminating a finished instance does nothing.
        """
        await self._terminate_json(instance_id, encode(reason), recursive=recursive)

    async def _terminate_json(
        self, instance_id: str, reason: str | None, *, recursive: bool = True
    ) -> None:
        """``terminate`` with the reason already JSON text."""
        record = await self._require(instance_id, "terminate", terminal_ok=True)
        if record.status.is_terminal:
            return
        event = ExecutionTerminated(timestamp=self._clock.now(), input=reason, recurse=recursive)
        await self._store.enqueue(OrchestrationMessage(instance_id, event))

    async def suspend(self, instance_id: str, reason: Any = None) -> None:
        """Pause an instance: it keeps receiving events but runs no code until resumed."""
        await self._suspend_json(instance_id, encode(reason))

    async def _suspend_json(self, instance_id: str, reason: str | None) -> None:
        """``suspend`` with the reason already text."""
        await self._require(instance_id, "suspend", terminal_ok=False)
        event = ExecutionSuspended(timestamp=self._clock.now(), input=reason)
        await self._store.enqueue(OrchestrationMessage(instance_id, event))

    async def resume(self, instance_id: str, reason: Any = None) -> None:
        """Resume a suspended instance."""
        await self._resume_json(instance_id, encode(reason))

    async def _resume_json(self, instance_id: str, reason: str | None) -> None:
        """``resume`` with the reason already text."""
        await self._require(instance_id, "resume", terminal_ok=False)
        event = ExecutionResumed(timestamp=self._clock.now(), input=reason)
        await self._store.enqueue(OrchestrationMessage(instance_id, event))

    async def rewind(self, instance_id: str, reason: str | None = None) -> None:
        """Run a failed instance on from where it failed, keeping its successful results.

        The failed activities and sub-orchestrations it was waiting on run
        again (a failed sub-orchestration is rewound in turn) and the code
        continues from there: after fixing the cause, a rewind finishes the
        job instead of starting it over. Results that arrived after the
        instance failed were dropped with it, so those activities run again
        too. The store sets the instance RUNNING as it takes the request, so a
        ``wait`` right after sees the rewound run's outcome. ``InvalidOperationError``
        unless the instance is FAILED (the store checks, atomically with the
        write: of two rewinds at once, one wins), ``InstanceNotFoundError`` if
        there is none.
        """
        validate_instance_id(instance_id)
        event = ExecutionRewound(timestamp=self._clock.now(), reason=reason)
        await self._store.enqueue(OrchestrationMessage(instance_id, event))

    async def restart(self, instance_id: str, *, new_instance_id: bool = False) -> str:
        """Start a finished instance again with its input; returns the (new) instance id."""
        record = await self._require(instance_id, "restart", terminal_ok=True)
        if not new_instance_id and not record.status.is_terminal:
            raise InvalidOperationError(
                f"instance {instance_id!r} is {record.status.value}; only a finished instance can "
                "be restarted under its own id (terminate it first, or pass new_instance_id=True)"
            )
        target = uuid.uuid4().hex if new_instance_id else instance_id
        return await self._start_raw(
            record.name,
            record.input,
            target,
            replaceable=FINISHED,
            version=record.orchestration_version,
        )

    async def purge(
        self,
        instance_id: str | None = None,
        *,
        status: StatusFilter = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> int:
        """Delete finished instances with their history; returns how many.

        Either one instance by id, or every finished instance matching the
        filter. Running instances are never purged: terminate them first.
        """
        if instance_id is not None:
            record = await self._require(instance_id, "purge", terminal_ok=True)
            if not record.status.is_terminal:
                status = record.status.value
                raise InvalidOperationError(
                    f"instance {instance_id!r} is {status}; terminate it before purging"
                )
            return int(await self._store.purge_instance(instance_id))
        _require_aware(created_from=created_from, created_to=created_to)
        # Only finished instances are purged: a filter naming no finished status matches
        # nothing (an empty status set would mean "any status" to the store).
        statuses = frozenset((_statuses(status) or _TERMINAL) & _TERMINAL)
        if not statuses:
            return 0
        query = InstanceQuery(
            statuses=statuses,
            created_from=created_from,
            created_to=created_to,
            page_size=500,
        )
        purged = 0
        while True:
            page = await self._store.query_instances(query)
            for record in page.items:
                purged += int(await self._store.purge_instance(record.instance_id))
            if page.continuation is None:
                return purged
            query = InstanceQuery(
                statuses=query.statuses,
                created_from=created_from,
                created_to=created_to,
                page_size=500,
                continuation=page.continuation,
            )

    async def query(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation: str | None = None,
    ) -> QueryResult:
        """One page of instances matching the filter, newest first."""
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        _require_aware(created_from=created_from, created_to=created_to)
        page = await self._store.query_instances(
            InstanceQuery(
                statuses=frozenset(_statuses(status)),
                name=name,
                created_from=created_from,
                created_to=created_to,
                instance_id_prefix=instance_id_prefix,
                page_size=page_size,
                continuation=continuation,
            )
        )
        return QueryResult(
            items=[_state_of(r, None) for r in page.items], continuation=page.continuation
        )

    async def count_by_status(self) -> dict[OrchestrationStatus, int] | None:
        """How many instances have each status (statuses with none left out).

        ``None`` if the store cannot count without reading every instance: the
        Azure store (Table storage has no count); page through ``query`` there.
        """
        if not isinstance(self._store, CountsInstances):
            return None
        counts = await self._store.count_instances()
        return {status: n for status, n in counts.items() if n}

    async def poisoned(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """Messages taken out of circulation after failing too often, oldest first.

        Each names its ``poison_id``, ``queue`` (``orchestrations`` or
        ``activities``), instance, ``reason``, ``dequeue_count`` and the
        original ``body``. Pass ``instance_id`` for one instance's only.
        """
        return await self._store.poisoned_messages(instance_id=instance_id)

    async def requeue_poisoned(self, poison_ids: PoisonIds) -> int:
        """Put poisoned messages back to run again (fix the cause first); returns how many.

        Each goes back as it was, visible now, with its delivery count reset,
        so its instance makes progress again. Unknown ids are ignored; a
        message whose instance was purged stays poisoned.
        """
        return await self._store.requeue_poisoned(_poison_ids(poison_ids))

    async def delete_poisoned(self, poison_ids: PoisonIds) -> int:
        """Drop poisoned messages for good; returns how many. Unknown ids are ignored."""
        return await self._store.delete_poisoned(_poison_ids(poison_ids))

    async def close(self) -> None:
        """Close the store if this client opened it."""
        if self._owns_store:
            await self._store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _require(self, instance_id: str, action: str, *, terminal_ok: bool) -> InstanceRecord:
        validate_instance_id(instance_id)
        record = await self._store.get_instance(instance_id)
        if record is None:
            raise InstanceNotFoundError(instance_id)
        if record.status.is_terminal and not terminal_ok:
            raise InvalidOperationError(
                f"cannot {action} instance {instance_id!r}: it is {record.status.value}"
            )
        return record

    async def _start_raw(
        self,
        name: str,
        payload: str | None,
        instance_id: str,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
        version: str | None = None,
    ) -> str:
        started = ExecutionStarted(
            timestamp=self._clock.now(),
            name=name,
            instance_id=instance_id,
            execution_id=uuid.uuid4().hex,
            input=payload,
            version=version if version is not None else self._default_version,
        )
        await self._store.create_instance(
            OrchestrationMessage(instance_id, started, started.execution_id),
            replaceable=replaceable,
        )
        return instance_id


_TERMINAL = frozenset(s for s in OrchestrationStatus if s.is_terminal)


def _poison_ids(poison_ids: PoisonIds) -> list[str]:
    # A lone string is one id, not an iterable of one-character ids.
    return [poison_ids] if isinstance(poison_ids, str) else list(poison_ids)


def _require_aware(**moments: datetime | None) -> None:
    """Stores compare instants: a naive datetime has no single meaning, so refuse it."""
    for name, value in moments.items():
        if value is not None and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (use UTC)")


def _statuses(status: StatusFilter) -> set[OrchestrationStatus]:
    if status is None:
        return set()
    if isinstance(status, str):
        return {OrchestrationStatus(status.upper())}
    return {OrchestrationStatus(s.upper()) for s in status}


def _state_of(record: InstanceRecord, history: list[HistoryEvent] | None) -> OrchestrationState:
    return OrchestrationState(
        instance_id=record.instance_id,
        name=record.name,
        status=record.status,
        execution_id=record.execution_id,
        input=decode(record.input),
        output=decode(record.output),
        custom_status=decode(record.custom_status),
        failure=record.failure,
        created_at=record.created_at,
        updated_at=record.updated_at,
        version=record.orchestration_version,
        history=history,
    )
