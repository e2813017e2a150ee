"""Runs one orchestration episode: reuse or replay → apply → commit.

Live executors stay in an LRU cache between episodes, keyed by instance and
checked against the store's version: a hit replays nothing, so an episode
costs the same at step 5,000 as at step 100. A miss (another worker
committed, a restart, an eviction) rebuilds the executor from history once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import Token
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from .._clock import Clock
from .._errors import ConflictError, NonDeterminismError, UnknownNameError
from .._history import (
    ExecutionCompleted,
    ExecutionStarted,
    ExecutionTerminated,
    HistoryEvent,
    OrchestratorStarted,
)
from .._log_context import running
from .._metrics import record_cache, record_ended, record_episode, record_event_delay
from .._registry import Registry
from .._replay.actions import CreateSubOrchestration
from .._replay.context import Observation
from .._replay.executor import EpisodeOutput, OrchestrationExecutor, failure_from_exception
from .._state import OrchestrationStatus
from .._tracing import emit_execution_span, emit_span, execution_parent, recording
from .._versioning import VersionMismatchError, VersionPolicy
from ..storage._finished import finished_on
from ..storage._protocol import Store
from ..storage._records import (
    EpisodeCommit,
    InstanceRecord,
    OrchestrationWorkItem,
)
from ._episode import (
    AWAITING_START,
    EpisodeIds,
    events_for,
    pending_start,
    plan_before_start,
    plan_consume_only,
    plan_episode,
    plan_failure,
    refusals,
    rewind_requested,
    starting_instance,
)
from ._rewind import plan_rewind

__all__ = ["ExecutorCache", "OrchestrationRunner"]

log = logging.getLogger("durable_fx.worker")


@dataclass(slots=True)
class CachedExecution:
    """A live executor and the store version its state corresponds to."""

    executor: OrchestrationExecutor
    started: ExecutionStarted
    version: str
    observed: list[Observation] = field(default_factory=list)
    """What the last episode saw end (timers, waits), for its spans."""


class ExecutorCache:
    """Live executors by instance id, least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, CachedExecution] = OrderedDict()

    def get(self, instance: InstanceRecord) -> CachedExecution | None:
        """The entry for ``instance`` if nobody committed since it was cached."""
        entry = self._entries.pop(instance.instance_id, None)
        if entry is None:
            return None
        if entry.version != instance.version or entry.started.execution_id != instance.execution_id:
            return None
        self._entries[instance.instance_id] = entry
        return entry

    def peek(self, instance_id: str) -> CachedExecution | None:
        """The entry for ``instance_id`` as it is, without taking it (stale or not)."""
        return self._entries.get(instance_id)

    def put(self, instance_id: str, entry: CachedExecution) -> None:
        """Keep ``entry``; evict the least recently used beyond capacity."""
        self._entries[instance_id] = entry
        self._entries.move_to_end(instance_id)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def evict(self, instance_id: str) -> None:
        """Forget an instance (its state in the store moved on without us)."""
        self._entries.pop(instance_id, None)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class _Episode:
    """One locked work item being planned, and the time the episode runs at."""

    item: OrchestrationWorkItem
    now: datetime

    @property
    def instance(self) -> InstanceRecord:
        return self.item.instance

    @property
    def consumed(self) -> list[str]:
        return [m.message_id for m in self.item.messages]


class OrchestrationRunner:
    """Executes episodes for the orchestrators of one registry against one store."""

    def __init__(
        self,
        registry: Registry,
        store: Store,
        clock: Clock,
        cache: ExecutorCache,
        versioning: VersionPolicy | None = None,
    ) -> None:
        self._versioning = versioning
        self._registry = registry
        self._store = store
        self._clock = clock
        self._cache = cache
        self._finished = finished_on(store)

    async def run(self, item: OrchestrationWorkItem) -> None:
        """Run and commit one episode; on a conflict, drop it and let go of the lock.

        The episode was planned from a row that changed meanwhile: another worker
        took the lock over (its messages are its own now), or a client changed the
        instance under our lock (a rewind sets a FAILED instance RUNNING): then the
        lock is released so the messages are done again now, not after the lease.
        Only then: a release counts toward poisoning, and a conflict is no fault
        of the messages.
        """
        instance_id = item.instance.instance_id
        episode = _Episode(item, self._clock.now())
        instance = item.instance
        with (
            running(
                instance_id=instance_id,
                orchestration=instance.name,
                execution_id=instance.execution_id,
            ),
            _within(self._known_start(item) if recording() else None),
        ):
            await self._run(episode)

    async def _run(self, episode: _Episode) -> None:
        item = episode.item
        instance_id = item.instance.instance_id
        try:
            commit, entry = await self._plan(episode)
            version = await self._store.commit_episode(item, commit)
        except ConflictError as conflict:
            self._cache.evict(instance_id)
            log.info("episode for %s not committed: %s", instance_id, conflict)
            if conflict.lock_kept:  # else another worker holds it: its messages are theirs
                with contextlib.suppress(Exception):
                    await self._store.abandon_orchestration(
                        item, reason=str(conflict), retry_after=timedelta(0)
                    )
            return
        except BaseException:
            self._cache.evict(instance_id)
            raise
        self._trace(episode, commit, entry)
        if entry is not None and not commit.instance.status.is_terminal:
            entry.version = version
            self._cache.put(instance_id, entry)
        else:
            self._cache.evict(instance_id)
        if commit.instance.status.is_terminal:
            self._finished.finished(commit.instance)  # clients waiting in this process

    def _known_start(self, item: OrchestrationWorkItem) -> ExecutionStarted | None:
        """The execution this episode runs, if known without reading (for log lines)."""
        starting = _started_in([m.event for m in item.messages])
        if starting is not None:
            return starting
        cached = self._cache.peek(item.instance.instance_id)
        return cached.started if cached is not None else None

    def _trace(
        self, episode: _Episode, commit: EpisodeCommit, entry: CachedExecution | None
    ) -> None:
        """The episode's span; the execution's, once it ended (replays emit nothing)."""
        started = entry.started if entry is not None else _started_in(commit.new_history)
        if started is None:
            return  # nothing ran: a late result written off, a start not due yet
        now = self._clock.now()
        record_episode(started.name, (now - episode.now).total_seconds())
        ended = next((e for e in commit.new_history if isinstance(e, ExecutionCompleted)), None)
        if ended is not None:
            record_ended(started.name, ended.status)
        elif commit.instance.status is OrchestrationStatus.CONTINUED_AS_NEW:
            record_ended(started.name, "CONTINUED_AS_NEW")
        for seen in entry.observed if entry is not None else ():
            if seen.kind != "timer" and seen.raised_at is not None:
                delay = (seen.ended - seen.raised_at).total_seconds()
                record_event_delay(started.name, seen.name, delay)
        if recording():
            self._emit_spans(episode, started, entry, now, ended, commit.instance.status)

    def _emit_spans(
        self,
        episode: _Episode,
        started: ExecutionStarted,
        entry: CachedExecution | None,
        now: datetime,
        ended: ExecutionCompleted | None,
        status: OrchestrationStatus,
    ) -> None:
        parent = execution_parent(started)
        # The execution's span, its parent, names the instance; the SDK cleans every
        # attribute of every span, so an episode carries only what is its own.
        emit_span(
            f"orchestration:{started.name} episode",
            parent,
            start=episode.now,
            end=now,
            attributes={"durable_fx.episode.messages": len(episode.item.messages)},
        )
        for seen in entry.observed if entry is not None else ():
            _emit_observation(started.name, seen, parent)
        if ended is not None:
            emit_execution_span(started, status=ended.status, ended_at=now, failure=ended.failure)
        elif status is OrchestrationStatus.CONTINUED_AS_NEW:
            emit_execution_span(started, status="CONTINUED_AS_NEW", ended_at=now)

    async def _plan(self, episode: _Episode) -> tuple[EpisodeCommit, CachedExecution | None]:
        instance = episode.instance
        start = pending_start(instance, episode.item.messages)
        if start is not None:
            if not self._runs(start.version):
                return self._refuse_version(episode, start, starting=True), None
            early = await self._events_before_start(instance)
            commit, entry = self._begin(episode, start, early)
            # Other parents' starts in the same batch lose the race for this id.
            refused = refusals(
                episode.item.messages, start.execution_id, commit.instance.status, episode.now
            )
            if refused:
                commit = dataclasses.replace(commit, messages=[*commit.messages, *refused])
            return commit, entry
        refused = refusals(
            episode.item.messages, instance.execution_id, instance.status, episode.now
        )
        if instance.status is OrchestrationStatus.PENDING:
            # A scheduled start is not visible yet: keep what arrived for when it is.
            events = events_for(instance.execution_id, episode.item.messages)
            return plan_before_start(
                instance=instance,
                events=events,
                consumed=episode.consumed,
                now=episode.now,
                messages=refused,
            ), None
        rewind = rewind_requested(instance, episode.item.messages)
        if rewind is not None:
            rewound = await plan_rewind(
                self._store,
                self._registry,
                instance=instance,
                rewound=rewind,
                consumed=episode.consumed,
                now=episode.now,
            )
            if rewound is not None:
                return rewound, None
        if instance.status.is_terminal or instance.status in AWAITING_START:
            return plan_consume_only(
                instance=instance, consumed=episode.consumed, messages=refused
            ), None
        if not self._runs(instance.orchestration_version):
            history = await self._store.load_history(instance.instance_id)
            started = next((e for e in history if isinstance(e, ExecutionStarted)), None)
            return self._refuse_version(episode, started), None
        entry = self._cache.get(instance)
        record_cache(hit=entry is not None)
        if entry is None:
            rebuilt = await self._rebuild(episode)
            if isinstance(rebuilt, EpisodeCommit):
                return rebuilt, None
            entry = rebuilt
        events = events_for(instance.execution_id, episode.item.messages, entry.executor.superseded)
        commit, kept = self._advance(episode, instance, entry, events, reset_history=False)
        if refused:
            commit = dataclasses.replace(commit, messages=[*commit.messages, *refused])
        return commit, kept

    async def _events_before_start(self, instance: InstanceRecord) -> list[HistoryEvent]:
        """Events a PENDING instance kept while its scheduled start was not due yet."""
        if instance.status is not OrchestrationStatus.PENDING:
            return []
        return await self._store.load_history(instance.instance_id)

    def _begin(
        self, episode: _Episode, started: ExecutionStarted, early: Sequence[HistoryEvent] = ()
    ) -> tuple[EpisodeCommit, CachedExecution | None]:
        """Start a new execution: a fresh instance, a continue-as-new, or a re-created one."""
        instance = starting_instance(episode.instance, started)
        definition = self._registry.find_orchestrator(started.name)
        if definition is None:
            error = UnknownNameError(
                "orchestrator", started.name, self._registry.orchestrator_names
            )
            renewed = dataclasses.replace(episode, item=_with(episode.item, instance))
            return self._fail(renewed, started, error, reset_history=True), None
        executor = OrchestrationExecutor(definition, started, registry=self._registry)
        entry = CachedExecution(executor, started, "")
        events: list[HistoryEvent] = [started, *early]
        events += events_for(started.execution_id, episode.item.messages)
        return self._advance(episode, instance, entry, events, reset_history=True)

    def _advance(
        self,
        episode: _Episode,
        instance: InstanceRecord,
        entry: CachedExecution,
        events: Sequence[HistoryEvent],
        *,
        reset_history: bool,
    ) -> tuple[EpisodeCommit, CachedExecution | None]:
        try:
            output = entry.executor.apply([OrchestratorStarted(timestamp=episode.now), *events])
        except NonDeterminismError as error:
            return self._fail(episode, entry.started, error), None
        entry.observed = output.observations
        terminate = next((e for e in events if isinstance(e, ExecutionTerminated)), None)
        recurse = terminate is None or terminate.recurse
        commit = plan_episode(
            instance=instance,
            started=entry.started,
            output=output,
            consumed=episode.consumed,
            now=episode.now,
            ids=EpisodeIds(
                # Only continue-as-new needs one; uuid4 costs a GIL round trip (os.urandom).
                next_execution_id=uuid.uuid4().hex if _continues_as_new(output) else "",
                child_execution_ids={
                    action.id: uuid.uuid4().hex
                    for action in output.actions
                    if isinstance(action, CreateSubOrchestration)
                },
            ),
            running_children=entry.executor.running_children if recurse else (),
            reset_history=reset_history,
        )
        return commit, entry

    async def _rebuild(self, episode: _Episode) -> CachedExecution | EpisodeCommit:
        """Replay the stored history into a fresh executor (a cache miss).

        A history that cannot be replayed (its orchestrator is gone, the code
        changed, a row is corrupt) would fail the same way on every retry, so
        the instance fails with the reason instead: that is the commit returned.
        """
        instance = episode.instance
        try:
            history = await self._store.load_history(instance.instance_id)
        except ValidationError as error:
            corrupt = ValueError(f"the stored history is corrupt and cannot be replayed: {error}")
            return self._fail(episode, None, corrupt)
        started = next((e for e in history if isinstance(e, ExecutionStarted)), None)
        if started is None:
            missing = ValueError("the stored history has no ExecutionStarted event to replay from")
            return self._fail(episode, None, missing)
        try:
            definition = self._registry.get_orchestrator(started.name)
            executor = OrchestrationExecutor(definition, started, registry=self._registry)
            executor.replay(history)
        except (UnknownNameError, NonDeterminismError) as error:
            return self._fail(episode, started, error)
        return CachedExecution(executor, started, instance.version)

    def _runs(self, version: str | None) -> bool:
        return self._versioning is None or self._versioning.accepts(version)

    def _refuse_version(
        self, episode: _Episode, started: ExecutionStarted | None, *, starting: bool = False
    ) -> EpisodeCommit:
        """Fail an instance this worker's ``VersionPolicy`` does not run, saying why."""
        assert self._versioning is not None
        instance = episode.instance
        version = started.version if started is not None else instance.orchestration_version
        error = VersionMismatchError(instance.instance_id, version, self._versioning)
        if starting and started is not None:  # fail the execution this start begins
            renewed = _with(episode.item, starting_instance(instance, started))
            episode = dataclasses.replace(episode, item=renewed)
        return self._fail(episode, started, error, reset_history=starting)

    def _fail(
        self,
        episode: _Episode,
        started: ExecutionStarted | None,
        error: Exception,
        *,
        reset_history: bool = False,
    ) -> EpisodeCommit:
        log.warning("orchestration %s failed: %s", episode.instance.instance_id, error)
        return plan_failure(
            instance=episode.instance,
            started=started,
            failure=failure_from_exception(error),
            consumed=episode.consumed,
            now=episode.now,
            reset_history=reset_history,
        )


def _emit_observation(orchestration: str, seen: Observation, parent: Context) -> None:
    """The span of a timer or a wait for an event that ended in a live episode."""
    if seen.kind == "timer":
        attributes = {"durabletask.type": "timer", "durable_fx.timer.purpose": seen.name}
        if seen.fire_at is not None:
            attributes["durabletask.fire_at"] = seen.fire_at.isoformat()
        emit_span(
            f"orchestration:{orchestration}:timer",
            parent,
            start=seen.started,
            end=seen.ended,
            attributes=attributes,
        )
        return
    emit_span(
        f"orchestration:{orchestration}:event {seen.name}",
        parent,
        start=seen.started,
        end=seen.ended,
        kind=SpanKind.CONSUMER,
        attributes={"durabletask.type": "event", "durabletask.event.name": seen.name},
        links=[seen.link],
    )


class _within:
    """The execution's span is the current one in the block (log lines carry its ids).

    A class, not a generator: it wraps every episode.
    """

    __slots__ = ("_started", "_token")

    def __init__(self, started: ExecutionStarted | None) -> None:
        self._started = started
        self._token: Token[Context] | None = None

    def __enter__(self) -> None:
        if self._started is not None:
            self._token = otel_context.attach(execution_parent(self._started))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


def _started_in(history: Sequence[HistoryEvent]) -> ExecutionStarted | None:
    return next((e for e in history if isinstance(e, ExecutionStarted)), None)


def _continues_as_new(output: EpisodeOutput) -> bool:
    """True if this episode ends the execution with continue-as-new."""
    completion = output.completion
    return (
        output.completed_now and completion is not None and completion.status == "CONTINUED_AS_NEW"
    )


def _with(item: OrchestrationWorkItem, instance: InstanceRecord) -> OrchestrationWorkItem:
    return dataclasses.replace(item, instance=instance)
