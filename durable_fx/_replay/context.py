"""OrchestrationContext: the API an orchestrator calls, and the state replay keeps.

Every call that schedules work (an activity, a timer, a sub-orchestration, an
event sent) takes the next sequence number and records an action under it.
The executor pairs each action with the history event of the same number and
later completes the task when the matching result event is applied.

Over 500 lines because the typed overloads of each scheduling call (one per
call shape, so that its task carries the callee's result type) sit with it.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias, TypeVar, overload

from .._entity import EntityId
from .._errors import EventTimeoutError, SerializationError, TaskFailedError
from .._history import (
    EventRaised,
    FailureDetails,
    HistoryEvent,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TraceContext,
)
from .._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_POLL_INTERVAL,
    DurableHttpResponse,
    ManagedIdentity,
    http_options,
)
from .._ids import MAX_INSTANCE_ID_LENGTH, validate_instance_id
from .._parent_close import ParentClosePolicy
from .._registry import (
    ActivityContext,
    ActivityDefinition,
    Definition,
    Registry,
    check_timeouts,
    definition_of,
    name_of,
)
from .._retry import RetryPolicy
from .._serialization import PayloadCodec, encode
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
from .tasks import CompletableTask, DroppableTask, Task

__all__ = ["EntityLock", "Observation", "OrchestrationContext", "Orchestrator"]

T = TypeVar("T")
R = TypeVar("R")
In = TypeVar("In")

Orchestrator: TypeAlias = Generator[Task[Any], Any, R]
"""What an orchestrator function returns: ``def f(ctx, x: int) -> Orchestrator[str]``.

A generator that yields tasks and returns ``R``. The value of a ``yield``
is the task's result; the type checker sees it as ``Any`` (a generator has
one send type), so annotate it where it matters: ``sent: SendResult = yield ...``.
"""

_Async: TypeAlias = Coroutine[Any, Any, R]
_Arrival: TypeAlias = tuple[int, str, "str | None", "TraceContext | None", "datetime | None"]
"""A buffered event: arrival order, name, payload, who raised it, when."""
ResultHandler = Callable[[HistoryEvent], None]

_PLAIN: PayloadCodec[Any] = PayloadCodec(Any)
_UUID_NAMESPACE = uuid.UUID("9e0f6a3c-5d1e-4f7b-8a2c-3b4d5e6f7a8b")


@dataclass(slots=True)
class _EventWaiter:
    task: CompletableTask[Any]
    codec: PayloadCodec[Any]
    name: str
    since: datetime
    timeout_timer: int | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """A wait that ended in a live episode (not a replay): what tracing makes a span of."""

    kind: Literal["timer", "event"]
    name: str
    """The timer's purpose (``timer``, ``retry``...) or the event's name."""
    started: datetime
    ended: datetime
    fire_at: datetime | None = None
    link: TraceContext | None = None
    """Who raised the event (its span is linked)."""
    raised_at: datetime | None = None
    """When the event was raised (its arrival)."""


class OrchestrationContext:
    """What an orchestrator receives as ``ctx``.

    Everything here is deterministic: the same history yields the same
    values, so orchestrators must use it instead of the clock, ``uuid4`` or
    I/O.
    """

    def __init__(
        self,
        *,
        instance_id: str,
        execution_id: str,
        name: str,
        registry: Registry | None,
        started_at: datetime,
        version: str | None = None,
    ) -> None:
        self._instance_id = instance_id
        self._version = version
        self._execution_id = execution_id
        # Uuids and entity request ids derive from this: the execution's own id, or
        # the first one a rewind replaced (a rewound run runs on under a new id and
        # must make again the values the replaced one made; ``replay`` sets it).
        self._lineage_id = execution_id
        self._name = name
        self._registry = registry
        self._now = started_at
        self._input: Any = None
        self._is_replaying = False
        self._sequence = 0
        self._uuid_counter = 0
        self._arrivals = 0
        self._pending_actions: dict[int, Action] = {}
        self._result_handlers: dict[int, ResultHandler] = {}
        self._children: dict[int, str] = {}
        self._entity_calls: dict[str, int] = {}
        self._lock_requests: dict[str, int] = {}
        """The action id of each lock request by its critical section id (the grant names it)."""
        self._critical_section: EntityLock | None = None
        """The action id of each entity call by its request id (the reply names the request)."""
        self._terminate_on_close: set[int] = set()
        self._failures_raised: set[int] = set()
        self._timers: set[int] = set()
        self._cancelled_timers: list[int] = []
        self._patches_in_history: frozenset[str] = frozenset()
        self._patches: dict[str, bool] = {}
        self._buffered_events: dict[str, deque[_Arrival]] = {}
        self._observations: list[Observation] = []
        self._waiters: dict[str, deque[_EventWaiter]] = {}
        self._codecs: dict[Any, PayloadCodec[Any]] = {}
        self._custom_status: str | None = None
        self._completion: CompleteOrchestration | None = None
        self._logger = _ReplaySafeLogger(
            logging.getLogger(f"durable_fx.orchestration.{name}"), self
        )

    # -- what the orchestrator reads --------------------------------------------

    @property
    def instance_id(self) -> str:
        """This instance's id."""
        return self._instance_id

    @property
    def execution_id(self) -> str:
        """This execution's id: a new one after each continue-as-new, restart or rewind.

        A rewound run replays its code under the new id, so a key meant to last
        comes from ``new_uuid()`` (which a rewind keeps) or the instance id.
        """
        return self._execution_id

    @property
    def name(self) -> str:
        """The orchestrator's registered name."""
        return self._name

    @property
    def input(self) -> Any:
        """The orchestration's input, decoded into the declared type."""
        return self._input

    @property
    def current_utc_datetime(self) -> datetime:
        """The time this episode started; the same value on every replay."""
        return self._now

    @property
    def version(self) -> str | None:
        """The orchestration version this instance started with (``start(version=)``).

        Sub-orchestrations and continue-as-new keep it. Branch on it to run
        instances started on old code their old way (or use ``is_patched``).
        """
        return self._version

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs steps already in the history."""
        return self._is_replaying

    @property
    def custom_status(self) -> Any:
        """The last value given to ``set_custom_status`` (decoded JSON)."""
        return _PLAIN.decode(self._custom_status)

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that stays silent during replay, so each line is logged once."""
        return self._logger

    def new_uuid(self) -> uuid.UUID:
        """A UUID that is new for each call but the same on every replay."""
        self._uuid_counter += 1
        seed = (
            f"{self._instance_id}|{self._lineage_id}|{self._now.isoformat()}|{self._uuid_counter}"
        )
        return uuid.uuid5(_UUID_NAMESPACE, seed)

    # -- scheduling work ---------------------------------------------------------

    # An activity takes one payload and, optionally, an ActivityContext before or
    # after it; each shape is an overload so that both the input's and the
    # result's types are checked. Coroutine functions come first: a plain
    # ``Callable[[In], R]`` would match them with R = the coroutine.
    @overload
    def call_activity(
        self,
        activity: Callable[[In], _Async[R]],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[In], R],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[In, ActivityContext], _Async[R]],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[In, ActivityContext], R],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[ActivityContext, In], _Async[R]],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[ActivityContext, In], R],
        input: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[None], _Async[R]],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[None], R],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[], _Async[R]],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[], R],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[ActivityContext], _Async[R]],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: Callable[[ActivityContext], R],
        input: None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: str,
        input: Any = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
        result_type: type[R],
    ) -> Task[R]: ...
    @overload
    def call_activity(
        self,
        activity: str,
        input: Any = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Task[Any]: ...

    def call_activity(
        self,
        activity: Callable[..., Any] | str,
        input: Any = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
        result_type: Any = None,
    ) -> Task[Any]:
        """Schedule an activity; yielding the task returns its result.

        The result is rebuilt into the activity's declared return type when
        the activity is known (passed as a function, or registered here), or
        into ``result_type`` when given with a name.

        Limits (each defaults to the one the activity was registered with):
        ``timeout`` fails an attempt that has not finished that long after it
        was scheduled; ``heartbeat_timeout`` fails one whose code has not
        called ``ActivityContext.heartbeat`` for that long; ``total_timeout``
        fails the task once that long has passed since the first attempt was
        scheduled, retries included (Temporal's start-to-close, heartbeat and
        schedule-to-close timeouts). A timed-out attempt fails with
        ``ActivityTimeoutError``, which a retry policy may try again (not
        after ``total_timeout``); a result that comes later is dropped. The
        activity itself is not stopped: it runs at least once, as always.
        """
        name = name_of(activity)
        codec = self._result_codec(activity, name, "activity", result_type)
        payload = encode(input)
        limits = _ActivityLimits.of(
            self._definition(activity, name, "activity"),
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            total_timeout=total_timeout,
        )

        def start(attempt: int, on_result: ResultHandler, carried: str | None) -> _Started:
            task_id = self._next_id()
            heartbeat_s = limits.heartbeat_seconds
            action = ScheduleTask(task_id, name, payload, attempt, heartbeat_s, carried)
            if limits.timeout is None:
                self._record(action, on_result)
                return _Started(task_id)

            def finished(event: HistoryEvent) -> None:
                self._cancel_timer(timer_id)  # the task ended first: its timer is moot
                on_result(event)

            self._record(action, finished)
            timer_id = self._time_out(task_id, name, limits.timeout)
            return _Started(task_id, timer_id)

        return self._run_with_retry(name, codec, start, retry, limits.total_timeout)

    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext, In], Generator[Any, Any, R]],
        input: In,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[R]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext, None], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[R]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[R]: ...
    # An orchestrator that is a plain function (no yield) returns its value as
    # is, undeclared to the codecs: its result is plain JSON, typed ``object``
    # (not ``Any``, which would let a generator's mismatched result through).
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext, In], object],
        input: In,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[object]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext, None], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[object]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: Callable[[OrchestrationContext], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[object]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
        result_type: type[R],
    ) -> Task[R]: ...
    @overload
    def call_sub_orchestrator(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
    ) -> Task[Any]: ...

    def call_sub_orchestrator(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        retry: RetryPolicy | None = None,
        parent_close_policy: ParentClosePolicy = ParentClosePolicy.ABANDON,
        result_type: Any = None,
    ) -> Task[Any]:
        """Start a child orchestration; yielding the task returns its output.

        The output is rebuilt into the orchestrator's declared type (the ``R``
        of its ``Orchestrator[R]``), or into ``result_type`` when given with a name.
        With ``ParentClosePolicy.TERMINATE``, a child still running when this
        execution ends (completes, fails, continues as new) is terminated.
        """
        name = name_of(orchestrator)
        codec = self._result_codec(orchestrator, name, "orchestrator", result_type)
        payload = encode(input)
        if instance_id is not None:
            validate_instance_id(instance_id)

        def start(attempt: int, on_result: ResultHandler, _carried: str | None) -> _Started:
            action_id = self._next_id()
            child_id = instance_id or self._child_instance_id(action_id)
            self._children[action_id] = child_id
            if parent_close_policy is ParentClosePolicy.TERMINATE:
                self._terminate_on_close.add(action_id)
            self._record(CreateSubOrchestration(action_id, name, child_id, payload), on_result)
            return _Started(action_id)

        return self._run_with_retry(name, codec, start, retry)

    def call_http(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: timedelta | None = None,
        token_source: ManagedIdentity | None = None,
        poll: bool = True,
        poll_interval: timedelta = DEFAULT_POLL_INTERVAL,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> Task[DurableHttpResponse]:
        """Send an HTTP request from the orchestration; yielding the task returns the response.

        It runs as the built-in activity ``durable_fx.http`` (at least once, like
        any activity). A ``202 Accepted`` with a ``Location`` is polled with
        ``GET`` until another status comes, waiting ``Retry-After`` (else
        ``poll_interval``) on a durable timer between polls; ``poll=False``
        returns the 202 itself. ``retry`` retries transport errors and 5xx
        answers (without it a 5xx is returned like any status). ``timeout``
        bounds the whole call, polling included (``HttpTimeoutError``).
        ``token_source=ManagedIdentity(resource)`` adds a bearer token fetched
        when the request runs. History never records the value of an
        ``Authorization`` header (docs/how-to/durable-http.md).
        """
        from .http import start_http_call  # it builds on this module's retry machinery

        return start_http_call(
            self,
            http_options(
                method,
                url,
                headers=headers,
                content=content,
                retry=retry,
                timeout=timeout,
                token_source=token_source,
                poll=poll,
                poll_interval=poll_interval,
                max_response_bytes=max_response_bytes,
            ),
        )

    def create_timer(self, fire_at: datetime | timedelta) -> Task[None]:
        """A task that completes at ``fire_at`` (or after a delay), surviving restarts.

        A timer the code can no longer yield (it lost a ``when_any`` and no
        variable holds it) is cancelled: it will not wake the instance.
        """
        when = self._now + fire_at if isinstance(fire_at, timedelta) else fire_at
        if when.tzinfo is None:
            raise ValueError("create_timer needs a timezone-aware datetime (use UTC)")
        task = DroppableTask[None]()
        # The context holds the task weakly: only the code (and the composites
        # it waits on) keep it alive, so dropping it means nobody can wait on it.
        held = weakref.ref(task)

        def fired(_event: HistoryEvent) -> None:
            if (alive := held()) is not None:
                alive.complete(None)

        timer_id = self._create_timer(when, "timer", fired)
        # Deleting the timer message changes nothing in history, so it does not
        # matter for replay when the drop is noticed.
        context = weakref.ref(self)

        def dropped() -> None:
            if (ctx := context()) is not None:
                ctx._cancel_timer(timer_id)

        task.on_drop(dropped)
        return task

    @overload
    def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, result_type: type[T]
    ) -> Task[T]: ...
    @overload
    def wait_for_event(
        self, name: str, *, timeout: timedelta | None = None, result_type: None = None
    ) -> Task[Any]: ...

    def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta | None = None,
        result_type: type[Any] | None = None,
    ) -> Task[Any]:
        """A task that completes with the next event raised under ``name``.

        Events raised before the wait are kept, in order, until waited for.
        With ``timeout``, yielding the task raises ``EventTimeoutError`` if
        nothing arrives in time. Names are case-insensitive.
        """
        key = name.casefold()
        waiter = _EventWaiter(CompletableTask(), self._codec_for(result_type), name, self._now)
        buffered = self._buffered_events.get(key)
        if buffered:
            _order, _name, payload, traced, raised_at = buffered.popleft()
            self._deliver(waiter, payload, traced, raised_at)
            return waiter.task
        self._waiters.setdefault(key, deque()).append(waiter)
        if timeout is not None:
            seconds = timeout.total_seconds()

            def on_timeout(_event: HistoryEvent) -> None:
                if waiter.task.is_complete:
                    return
                self._waiters[key].remove(waiter)
                waiter.task.fail(EventTimeoutError(name, seconds))

            waiter.timeout_timer = self._create_timer(
                self._now + timeout, "event-timeout", on_timeout
            )
        return waiter.task

    def send_event(self, instance_id: str, name: str, data: Any = None) -> None:
        """Raise event ``name`` on another instance (fire and forget)."""
        validate_instance_id(instance_id)
        self._record(SendEvent(self._next_id(), instance_id, name, encode(data)), None)

    def call_entity(
        self, entity: EntityId, operation: str, input: Any = None, *, result_type: Any = None
    ) -> Task[Any]:
        """Run ``operation`` on ``entity``; yielding the task returns its result.

        The entity runs it after the operations sent to it before, one at a
        time. If the operation raises, the entity undoes its changes and the
        task fails with ``TaskFailedError``. ``result_type`` rebuilds the result
        (a pydantic model, a dataclass...); without it the result is plain JSON.
        """
        _check_operation(operation)
        held = self._critical_section
        if held is not None and entity.instance_id not in held.lock_set:
            raise ValueError(
                f"a critical section calls only the entities it locked, not {entity}: "
                "release the lock first"
            )
        codec = self._codec_for(result_type)
        payload = encode(input)

        def start(_attempt: int, on_result: ResultHandler, _carried: str | None) -> _Started:
            action_id = self._next_id()
            request_id = self._request_id(action_id)
            self._entity_calls[request_id] = action_id
            call = CallEntity(action_id, entity.instance_id, operation, payload, request_id)
            self._record(call, on_result)
            return _Started(action_id)

        return self._run_with_retry(f"{entity}.{operation}", codec, start, None)

    def signal_entity(
        self,
        entity: EntityId,
        operation: str,
        input: Any = None,
        *,
        at: datetime | timedelta | None = None,
    ) -> None:
        """Send ``operation`` to ``entity`` without waiting for it; ``at``: not before then."""
        _check_operation(operation)
        held = self._critical_section
        if held is not None and entity.instance_id in held.lock_set:
            raise ValueError(
                f"{entity} is locked by this critical section: call it (a signal would wait "
                "for the lock to be released)"
            )
        when = self._now + at if isinstance(at, timedelta) else at
        if when is not None and when.tzinfo is None:
            raise ValueError("signal_entity needs a timezone-aware datetime (use UTC)")
        action_id = self._next_id()
        signal = SignalEntity(
            action_id,
            entity.instance_id,
            operation,
            encode(input),
            self._request_id(action_id),
            when,
        )
        self._record(signal, None)

    def lock_entities(self, *entities: EntityId) -> Task[EntityLock]:
        """Lock ``entities`` for a critical section; yielding the task waits until all are held.

        ``with (yield ctx.lock_entities(a, b)):`` then only this orchestration's
        calls run on them until the block ends (or the orchestration does).
        Entities are locked one after another in a fixed order (their ids
        sorted), so two sections over the same entities never deadlock.
        Inside, call only the locked entities; sections do not nest.
        """
        if self._critical_section is not None:
            raise ValueError(
                "this orchestration holds a critical section already: sections do not nest"
            )
        if not entities:
            raise ValueError("lock_entities needs at least one entity")
        action_id = self._next_id()
        lock = EntityLock(
            self, self._request_id(action_id), sorted({e.instance_id for e in entities})
        )
        task: CompletableTask[EntityLock] = CompletableTask()
        self._critical_section = lock
        self._lock_requests[lock.critical_section_id] = action_id

        def granted(_event: HistoryEvent) -> None:
            task.complete(lock)

        self._record(
            LockEntities(action_id, tuple(lock.lock_set), lock.critical_section_id), granted
        )
        return task

    def _release(self, lock: EntityLock) -> None:
        """Send each entity of ``lock``'s section its unlock (once)."""
        if self._critical_section is not lock:
            return
        self._critical_section = None
        for entity in lock.lock_set:
            self._record(UnlockEntity(self._next_id(), entity, lock.critical_section_id), None)

    def _request_id(self, action_id: int) -> str:
        # The same on every replay, and unique across instances and executions.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self._lineage_id}/{action_id}"))

    def is_patched(self, patch_id: str) -> bool:
        """True where the code may take the new path of a change made while instances ran.

        Write ``if ctx.is_patched("send-via-acs"): <new code> else: <old code>``
        around a change to an orchestrator. An instance that recorded its
        history past this point under the old code replays with False, so its
        replay still matches; every other run (new instances, and old ones
        that reach this point after the deploy) takes the new path and
        records a ``PatchApplied`` marker, so it stays on it when replayed.
        The same id answers the same all through an execution. Once no
        instance from before the patch can still be running, keep only the
        new path and call ``deprecate_patch`` in place of ``is_patched``.
        """
        known = self._patches.get(patch_id)
        if known is not None:
            return known
        patched = patch_id in self._patches_in_history or not self._is_replaying
        if patched:
            self._record(RecordPatch(self._next_id(), patch_id), None)
        self._patches[patch_id] = patched
        return patched

    def deprecate_patch(self, patch_id: str) -> None:
        """Patch ``patch_id``'s new path is the only one left; its marker may or may not be there.

        Call it where ``is_patched(patch_id)`` was, after removing the old
        path. It records nothing; once no history holds the marker, remove
        the call as well.
        """
        if patch_id in self._patches:
            return
        self._patches[patch_id] = True
        if patch_id in self._patches_in_history:
            self._record(RecordPatch(self._next_id(), patch_id), None)  # matches the marker

    def set_custom_status(self, value: Any) -> None:
        """Publish a JSON value that clients see as the instance's custom status."""
        self._custom_status = encode(value)

    def continue_as_new(self, input: Any = None, *, keep_events: bool = True) -> None:
        """Finish this execution and start a fresh one with ``input`` and an empty history.

        With ``keep_events``, events received but not yet waited for are
        carried over to the new execution. The orchestrator should return
        right after calling this.
        """
        carryover: list[HistoryEvent] = []
        if keep_events:
            pending = sorted(
                (item for queue in self._buffered_events.values() for item in queue),
                key=lambda item: item[0],
            )
            carryover = [
                EventRaised(timestamp=self._now, name=name, input=payload, trace_context=traced)
                for _order, name, payload, traced, _raised_at in pending
            ]
        self._complete(
            CompleteOrchestration("CONTINUED_AS_NEW", encode(input), carryover_events=carryover)
        )

    # -- used by the executor -----------------------------------------------------

    def _next_id(self) -> int:
        action_id = self._sequence
        self._sequence += 1
        return action_id

    def _record(self, action: Action, on_result: ResultHandler | None) -> None:
        self._pending_actions[action.id] = action
        if on_result is not None:
            self._result_handlers[action.id] = on_result

    def _time_out(self, task_id: int, name: str, timeout: timedelta) -> int:
        """Race task ``task_id`` against a durable timer (its id): whichever ends first decides."""

        def on_fired(_event: HistoryEvent) -> None:
            message = f"{name} did not finish within {timeout} of being scheduled"
            self._fail_by_timeout(task_id, message)

        return self._create_timer(self._now + timeout, "activity-timeout", on_fired)

    def _fail_by_timeout(self, task_id: int, message: str, *, final: bool = False) -> None:
        """Fail task ``task_id`` (if still open) with ``ActivityTimeoutError``."""
        handler = self._result_handlers.pop(task_id, None)
        if handler is None:
            return  # the task finished first
        failure = FailureDetails(
            error_type="ActivityTimeoutError", message=message, non_retriable=final
        )
        handler(TaskFailed(timestamp=self._now, task_scheduled_id=task_id, failure=failure))

    def _create_timer(self, fire_at: datetime, purpose: Any, on_fired: ResultHandler) -> int:
        timer_id = self._next_id()
        created = self._now

        def fired(event: HistoryEvent) -> None:
            self._timers.discard(timer_id)
            if not self._is_replaying:
                self._observations.append(
                    Observation("timer", purpose, created, self._now, fire_at=fire_at)
                )
            on_fired(event)

        self._record(CreateTimer(timer_id, fire_at, purpose), fired)
        self._timers.add(timer_id)
        return timer_id

    def _cancel_timer(self, timer_id: int) -> None:
        """Timer ``timer_id`` can no longer matter: it must not wake the instance."""
        if timer_id in self._timers:
            self._timers.discard(timer_id)
            self._result_handlers.pop(timer_id, None)
            self._cancelled_timers.append(timer_id)

    def _complete(self, completion: CompleteOrchestration) -> None:
        if self._completion is None:
            if self._critical_section is not None:  # an ended orchestration holds no lock
                self._release(self._critical_section)
            self._completion = completion
            for timer_id in sorted(self._timers):  # an ended execution has no use for them
                self._cancel_timer(timer_id)

    def _receive_event(
        self,
        name: str,
        payload: str | None,
        traced: TraceContext | None = None,
        raised_at: datetime | None = None,
    ) -> None:
        key = name.casefold()
        waiters = self._waiters.get(key)
        if waiters:
            self._deliver(waiters.popleft(), payload, traced, raised_at)
            return
        self._arrivals += 1
        arrival = (self._arrivals, name, payload, traced, raised_at)
        self._buffered_events.setdefault(key, deque()).append(arrival)

    def _deliver(
        self,
        waiter: _EventWaiter,
        payload: str | None,
        traced: TraceContext | None,
        raised_at: datetime | None,
    ) -> None:
        if not self._is_replaying:
            seen = Observation(
                "event", waiter.name, waiter.since, self._now, link=traced, raised_at=raised_at
            )
            self._observations.append(seen)
        if waiter.timeout_timer is not None:
            self._cancel_timer(waiter.timeout_timer)
        try:
            waiter.task.complete(waiter.codec.decode(payload))
        except SerializationError as error:
            waiter.task.fail(
                TaskFailedError(f"event {waiter.name!r}", "SerializationError", str(error))
            )

    def _run_with_retry(
        self,
        name: str,
        codec: PayloadCodec[Any],
        start: _Start,
        retry: RetryPolicy | None,
        total_timeout: timedelta | None = None,
    ) -> Task[Any]:
        task: CompletableTask[Any] = CompletableTask()
        _Attempts(self, task, name, codec, start, retry).begin(total_timeout)
        return task

    def _definition(
        self, fn_or_name: Callable[..., Any] | str, name: str, kind: str
    ) -> Definition | None:
        """What the code or this context's registry knows of ``name`` (``None``: nothing)."""
        definition = definition_of(fn_or_name)
        if definition is None and self._registry is not None:
            definition = (
                self._registry.find_activity(name)
                if kind == "activity"
                else self._registry.find_orchestrator(name)
            )
        if definition is not None and definition.kind != kind:
            raise TypeError(f"{name!r} is registered as an {definition.kind}, not an {kind}")
        return definition

    def _result_codec(
        self, fn_or_name: Callable[..., Any] | str, name: str, kind: str, result_type: Any
    ) -> PayloadCodec[Any]:
        definition = self._definition(fn_or_name, name, kind)
        if result_type is not None:
            return self._codec_for(result_type)
        return definition.output_codec if definition is not None else _PLAIN

    def _codec_for(self, result_type: Any) -> PayloadCodec[Any]:
        if result_type is None:
            return _PLAIN
        codec = self._codecs.get(result_type)
        if codec is None:
            codec = self._codecs[result_type] = PayloadCodec(result_type)
        return codec

    def _child_instance_id(self, action_id: int) -> str:
        child = f"{self._instance_id}:{action_id}"
        return child if len(child) <= MAX_INSTANCE_ID_LENGTH else self.new_uuid().hex


class EntityLock:
    """A critical section's hold on its entities; leaving its ``with`` block releases them."""

    __slots__ = ("_ctx", "critical_section_id", "lock_set")

    def __init__(
        self, ctx: OrchestrationContext, critical_section_id: str, lock_set: list[str]
    ) -> None:
        self._ctx = ctx
        self.critical_section_id = critical_section_id
        self.lock_set = lock_set
        """The locked entities' instance ids, in locking order."""

    def __enter__(self) -> EntityLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Release every entity of the section now (again: nothing)."""
        self._ctx._release(self)


def _check_operation(operation: str) -> None:
    if not isinstance(operation, str) or not operation:
        raise ValueError("an entity operation needs a name")


@dataclass(frozen=True, slots=True)
class _Started:
    """What starting one attempt recorded: its task, and the timer racing it."""

    task_id: int
    timer_id: int | None = None


_Start = Callable[[int, ResultHandler, "str | None"], _Started]
"""Starts attempt ``n``, reporting to the handler, with the heartbeat details carried."""


@dataclass(frozen=True, slots=True)
class _ActivityLimits:
    """The time limits of one activity call: the call's, else the registration's."""

    timeout: timedelta | None
    heartbeat_timeout: timedelta | None
    total_timeout: timedelta | None

    @classmethod
    def of(cls, definition: Definition | None, **given: timedelta | None) -> _ActivityLimits:
        defaults = definition if isinstance(definition, ActivityDefinition) else None
        chosen = {
            key: value if value is not None else getattr(defaults, key, None)
            for key, value in given.items()
        }
        return cls(**check_timeouts(**chosen))

    @property
    def heartbeat_seconds(self) -> float | None:
        return None if self.heartbeat_timeout is None else self.heartbeat_timeout.total_seconds()


class _Attempts:
    """Runs one task's attempts: on failure, waits a durable timer and tries again.

    The last heartbeat details a failed attempt reported go to the next one.
    With a total timeout, one timer bounds them all: when it fires, the open
    attempt (or the wait before the next) ends the task with a timeout.
    """

    def __init__(
        self,
        ctx: OrchestrationContext,
        task: CompletableTask[Any],
        name: str,
        codec: PayloadCodec[Any],
        start: _Start,
        retry: RetryPolicy | None,
    ) -> None:
        self._ctx = ctx
        self._task = task
        self._name = name
        self._codec = codec
        self._start = start
        self._retry = retry
        self._attempt = 1
        self._first_started = ctx.current_utc_datetime
        self._carried: str | None = None
        self._current = _Started(-1)
        self._retry_timer: int | None = None
        self._deadline: int | None = None

    def begin(self, total_timeout: timedelta | None = None) -> None:
        if total_timeout is not None:
            fire_at = self._first_started + total_timeout
            self._deadline = self._ctx._create_timer(
                fire_at, "activity-timeout", lambda _event: self._on_deadline(total_timeout)
            )
        self._current = self._start(self._attempt, self._on_result, self._carried)

    def _on_result(self, event: HistoryEvent) -> None:
        if isinstance(event, TaskCompleted | SubOrchestrationInstanceCompleted):
            self._settled()
            try:
                self._task.complete(self._codec.decode(event.result))
            except SerializationError as error:
                self._task.fail(TaskFailedError(self._name, "SerializationError", str(error)))
            return
        assert isinstance(event, TaskFailed | SubOrchestrationInstanceFailed)
        if isinstance(event, TaskFailed) and event.heartbeat_details is not None:
            self._carried = event.heartbeat_details
        failed = _task_failed(self._name, event.failure)
        delay = self._next_delay(failed, event.failure)
        if delay is None:
            self._settled()
            self._ctx._failures_raised.add(event.task_scheduled_id)
            self._task.fail(failed)
            return
        fire_at = self._ctx.current_utc_datetime + delay
        self._retry_timer = self._ctx._create_timer(fire_at, "retry", self._on_retry_timer)

    def _next_delay(self, error: TaskFailedError, failure: FailureDetails) -> timedelta | None:
        if self._retry is None or failure.non_retriable:
            return None
        elapsed = self._ctx.current_utc_datetime - self._first_started
        return self._retry.next_delay(self._attempt, error, elapsed)

    def _on_retry_timer(self, _event: HistoryEvent) -> None:
        self._retry_timer = None
        self._attempt += 1
        self._current = self._start(self._attempt, self._on_result, self._carried)

    def _on_deadline(self, total_timeout: timedelta) -> None:
        self._deadline = None
        self.give_up(f"{self._name} did not finish within {total_timeout} of its first scheduling")

    def give_up(self, message: str) -> None:
        """End the task now with ``ActivityTimeoutError``: no more attempts, a late result drops."""
        if self._task.is_complete:
            return
        if self._retry_timer is not None:  # between attempts: the last one's failure stands
            self._ctx._cancel_timer(self._retry_timer)
            self._retry_timer = None
            self._ctx._failures_raised.add(self._current.task_id)
            self._task.fail(TaskFailedError(self._name, "ActivityTimeoutError", message))
            return
        self._ctx._fail_by_timeout(self._current.task_id, message, final=True)

    def _settled(self) -> None:
        """The task is decided: timers still racing it can no longer matter."""
        for timer_id in (self._deadline, self._current.timer_id):
            if timer_id is not None:
                self._ctx._cancel_timer(timer_id)
        self._deadline = None


def _task_failed(name: str, failure: FailureDetails) -> TaskFailedError:
    return TaskFailedError(name, failure.error_type, failure.message, failure.stack_trace)


class _ReplaySafeLogger(logging.LoggerAdapter[logging.Logger]):
    """Drops records while replaying and tags the rest with the instance id."""

    def __init__(self, logger: logging.Logger, ctx: OrchestrationContext) -> None:
        super().__init__(logger, {})
        self._ctx = ctx

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self._ctx.is_replaying:
            super().log(level, msg, *args, **kwargs)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("instance_id", self._ctx.instance_id)
        kwargs["extra"] = extra
        return msg, kwargs
