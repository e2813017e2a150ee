"""Episodes whose orchestrator code runs in an SDK worker: request out, commit back.

The built-in runner (``durable_fx.worker._orchestration_runner``) locks an instance,
applies its new messages to live code and commits. Here the same locked work
item becomes an ``OrchestratorRequest`` (the stored history as past events,
an ``OrchestratorStarted`` and the admitted inbox events as new ones), and
the actions the SDK answers with become the commit, planned by the same pure
functions (``durable_fx.worker._episode``) so both paths write the same history,
messages and instance rows. Work that needs no code (a message for a
finished instance, events before a scheduled start) is planned directly.

Histories stay cached in protobuf form between episodes, checked against the
store's version, so an episode converts only its new events.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from .._clock import Clock
from .._history import (
    ExecutionRewound,
    ExecutionStarted,
    ExecutionTerminated,
    FailureDetails,
    HistoryEvent,
    OrchestratorStarted,
)
from .._replay.actions import CompleteOrchestration, CreateSubOrchestration
from .._replay.admission import HistoryState
from .._replay.executor import EpisodeOutput, failure_from_exception
from .._state import OrchestrationStatus
from .._tracing import execution_span_context
from ..storage._protocol import Store
from ..storage._records import EpisodeCommit, InstanceRecord, OrchestrationWorkItem
from ..worker._episode import (
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
from ._actions_pb import ResponseActions, actions_from_pb
from ._history_pb import event_to_pb
from ._proto import optional_text, pb, text_value
from ._rewind import plan_rewind

__all__ = ["EpisodeBridge", "EpisodePlan", "PreparedEpisode"]


@dataclass(slots=True)
class _CachedHistory:
    version: str
    started: ExecutionStarted
    past: list[pb.HistoryEvent]
    state: HistoryState


@dataclass(slots=True)
class PreparedEpisode:
    """A locked work item sent to an SDK worker, and what its completion needs."""

    item: OrchestrationWorkItem
    now: datetime
    instance: InstanceRecord
    """The row the commit starts from (a new execution's, when one begins)."""
    started: ExecutionStarted
    accepted: list[HistoryEvent]
    """The new events the commit records: ``OrchestratorStarted`` and the admitted ones."""
    state: HistoryState
    """The history's state after ``accepted``."""
    past: list[pb.HistoryEvent]
    new: list[pb.HistoryEvent]
    reset_history: bool
    rewinding: bool = False

    @property
    def request(self) -> pb.OrchestratorRequest:
        """The request for the SDK worker."""
        return pb.OrchestratorRequest(
            instanceId=self.instance.instance_id,
            executionId=text_value(self.instance.execution_id),
            pastEvents=self.past,
            newEvents=self.new,
            orchestrationTraceContext=_execution_span(self.started),
        )

    @property
    def consumed(self) -> list[str]:
        return [m.message_id for m in self.item.messages]


def _execution_span(started: ExecutionStarted) -> pb.OrchestrationTraceContext:
    """The execution's span as the SDK keeps it between episodes: its id and start.

    Nothing is stored: the id is derived from the execution id (as durable_fx's
    own worker derives it) and the start is the execution's, so every episode,
    wherever it runs, hands the SDK the same span to emit when the run ends.
    """
    span = execution_span_context(started)
    start = Timestamp()
    start.FromDatetime(started.timestamp)
    return pb.OrchestrationTraceContext(
        spanID=text_value(format(span.span_id, "016x")), spanStartTime=start
    )


EpisodePlan = Callable[[PreparedEpisode], Awaitable[EpisodeCommit]]
"""How an episode's commit is made: from the worker's answer, or failing its instance."""


class EpisodeBridge:
    """Turns locked orchestration work into SDK requests, and SDK responses into commits."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        cache_size: int = 1_000,
        cache_events: int = 500_000,
    ) -> None:
        self._store = store
        self._clock = clock
        self._capacity = cache_size
        self._event_budget = cache_events
        self._cached_events = 0
        self._cache: OrderedDict[str, _CachedHistory] = OrderedDict()

    async def prepare(self, item: OrchestrationWorkItem) -> PreparedEpisode | EpisodeCommit:
        """The request for ``item``, or the commit itself when no code needs to run."""
        now = self._clock.now()
        instance = item.instance
        start = pending_start(instance, item.messages)
        if start is not None:
            early: list[HistoryEvent] = []
            # Events can be kept for a start only while it is scheduled for later:
            # an immediate start is in the first batch of its instance's messages.
            if instance.status is OrchestrationStatus.PENDING and start.scheduled_start:
                early = await self._store.load_history(instance.instance_id)
            events = [start, *early, *events_for(start.execution_id, item.messages)]
            record = starting_instance(instance, start)
            return self._prepared(item, now, record, start, HistoryState(), [], events, True)
        events = events_for(instance.execution_id, item.messages)
        refused = refusals(item.messages, instance.execution_id, instance.status, now)
        consumed = [m.message_id for m in item.messages]
        if instance.status is OrchestrationStatus.PENDING:
            return plan_before_start(
                instance=instance, events=events, consumed=consumed, now=now, messages=refused
            )
        rewind = rewind_requested(instance, item.messages)
        if rewind is not None:
            rewinding = await self._prepare_rewind(item, now, rewind)
            if rewinding is not None:
                return rewinding
        if instance.status.is_terminal or instance.status in AWAITING_START:
            return plan_consume_only(instance=instance, consumed=consumed, messages=refused)
        cached = await self._history(item, now)
        if isinstance(cached, EpisodeCommit):
            return cached
        events = events_for(instance.execution_id, item.messages, cached.state.superseded)
        return self._prepared(
            item, now, instance, cached.started, cached.state.copy(), cached.past, events, False
        )

    async def finish(
        self, prepared: PreparedEpisode, response: pb.OrchestratorResponse
    ) -> EpisodeCommit:
        """The commit for the SDK's answer to ``prepared``."""
        converted = actions_from_pb(response.actions)
        if prepared.rewinding:
            return await plan_rewind(
                self._store,
                instance=prepared.instance,
                rewound_history=converted.rewound_history,
                consumed=prepared.consumed,
                now=prepared.now,
            )
        completion = converted.completion or _terminated(prepared)
        output = EpisodeOutput(
            accepted=prepared.accepted,
            actions=converted.actions,
            completion=completion,
            custom_status=optional_text(response, "customStatus"),
            suspended=prepared.state.suspended,
            completed_now=completion is not None,
        )
        commit = plan_episode(
            instance=prepared.instance,
            started=prepared.started,
            output=output,
            consumed=prepared.consumed,
            now=prepared.now,
            ids=_fresh_ids(converted),
            running_children=_children_to_terminate(prepared),
            reset_history=prepared.reset_history,
        )
        refused = refusals(
            prepared.item.messages,
            prepared.started.execution_id,
            commit.instance.status,
            prepared.now,
        )
        if refused:
            commit = dataclasses.replace(commit, messages=[*commit.messages, *refused])
        return commit

    async def fail(self, prepared: PreparedEpisode, error_type: str, message: str) -> EpisodeCommit:
        """The commit failing ``prepared``'s instance without its code (it cannot be sent).

        The new events are recorded before the failure, as if the code had
        failed, so the history shows what arrived (a result that made it too large).
        """
        if prepared.rewinding:
            failure = FailureDetails(error_type=error_type, message=message)
            return plan_failure(
                instance=prepared.instance,
                started=prepared.started,
                failure=failure,
                consumed=prepared.consumed,
                now=prepared.now,
            )
        details = pb.TaskFailureDetails(errorType=error_type, errorMessage=message)
        complete = pb.CompleteOrchestrationAction(
            orchestrationStatus=pb.ORCHESTRATION_STATUS_FAILED, failureDetails=details
        )
        response = pb.OrchestratorResponse(
            instanceId=prepared.instance.instance_id,
            actions=[pb.OrchestratorAction(id=-1, completeOrchestration=complete)],
        )
        return await self.finish(prepared, response)

    def committed(self, prepared: PreparedEpisode, commit: EpisodeCommit, version: str) -> None:
        """Keep the history that ``commit`` left, under the store's new ``version``."""
        instance_id = prepared.instance.instance_id
        status = commit.instance.status
        ended = status.is_terminal or status is OrchestrationStatus.CONTINUED_AS_NEW
        if ended or prepared.rewinding:
            self.forget(instance_id)
            return
        state = prepared.state
        recorded = list(commit.new_history[len(prepared.accepted) :])
        for event in recorded:
            state.observe(event)
        past = [*prepared.past, *prepared.new, *map(event_to_pb, recorded)]
        self.forget(instance_id)
        self._cache[instance_id] = _CachedHistory(version, prepared.started, past, state)
        self._cached_events += len(past)
        # Bounded by instances and by events: one huge history must not hold the memory.
        while self._cache and (
            len(self._cache) > self._capacity or self._cached_events > self._event_budget
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cached_events -= len(evicted.past)

    def forget(self, instance_id: str) -> None:
        """Drop the cached history of an instance (another worker moved it on)."""
        dropped = self._cache.pop(instance_id, None)
        if dropped is not None:
            self._cached_events -= len(dropped.past)

    # -- building requests -----------------------------------------------------------------

    def _prepared(
        self,
        item: OrchestrationWorkItem,
        now: datetime,
        instance: InstanceRecord,
        started: ExecutionStarted,
        state: HistoryState,
        past: list[pb.HistoryEvent],
        events: Sequence[HistoryEvent],
        reset_history: bool,
    ) -> PreparedEpisode | EpisodeCommit:
        accepted: list[HistoryEvent] = [OrchestratorStarted(timestamp=now)]
        woken = False
        for event in events:
            if isinstance(event, OrchestratorStarted):
                woken = True  # a wake-up (after a rewind): replay, record nothing for it
            elif state.admit(event):
                accepted.append(event)
        if len(accepted) == 1 and not woken and not reset_history:
            # Only duplicates and late results: nothing for the code to see.
            refused = refusals(item.messages, instance.execution_id, instance.status, now)
            consumed = [m.message_id for m in item.messages]
            return plan_consume_only(instance=instance, consumed=consumed, messages=refused)
        new = [event_to_pb(event) for event in accepted]
        return PreparedEpisode(
            item, now, instance, started, accepted, state, past, new, reset_history
        )

    async def _history(
        self, item: OrchestrationWorkItem, now: datetime
    ) -> _CachedHistory | EpisodeCommit:
        """The instance's history (cached if nobody committed since), or the commit failing it.

        A history that cannot be replayed (a corrupt row, no start) would fail
        the same way on every retry, so the instance fails with the reason.
        """
        instance = item.instance
        cached = self._cache.get(instance.instance_id)
        if cached is not None and cached.version == instance.version:
            self._cache.move_to_end(instance.instance_id)
            return cached
        try:
            history = await self._store.load_history(instance.instance_id)
        except ValidationError as error:
            problem = f"the stored history is corrupt and cannot be replayed: {error}"
            return self._failed(item, now, None, ValueError(problem))
        started = next((e for e in history if isinstance(e, ExecutionStarted)), None)
        if started is None:
            problem = "the stored history has no ExecutionStarted event to replay from"
            return self._failed(item, now, None, ValueError(problem))
        past = [event_to_pb(event) for event in history]
        return _CachedHistory(instance.version, started, past, HistoryState.of(history))

    async def _prepare_rewind(
        self, item: OrchestrationWorkItem, now: datetime, rewind: ExecutionRewound
    ) -> PreparedEpisode | EpisodeCommit | None:
        """Ask the SDK to rewrite a failed history; ``None`` if it did not end failed."""
        self.forget(item.instance.instance_id)
        cached = await self._history(item, now)
        if isinstance(cached, EpisodeCommit):
            return cached
        if not _ended_failed(cached.past):
            return None  # rewound already (a rewound parent asked again): run it as it is
        accepted: list[HistoryEvent] = [OrchestratorStarted(timestamp=now), rewind]
        new = [event_to_pb(event) for event in accepted]
        return PreparedEpisode(
            item,
            now,
            item.instance,
            cached.started,
            accepted,
            cached.state,
            cached.past,
            new,
            reset_history=True,
            rewinding=True,
        )

    def _failed(
        self,
        item: OrchestrationWorkItem,
        now: datetime,
        started: ExecutionStarted | None,
        error: Exception,
    ) -> EpisodeCommit:
        return plan_failure(
            instance=item.instance,
            started=started,
            failure=failure_from_exception(error),
            consumed=[m.message_id for m in item.messages],
            now=now,
        )


def _terminated(prepared: PreparedEpisode) -> CompleteOrchestration | None:
    """A terminate the SDK did not answer with a completion still ends the execution."""
    terminate = next((e for e in prepared.accepted if isinstance(e, ExecutionTerminated)), None)
    if terminate is None:
        return None
    return CompleteOrchestration("TERMINATED", terminate.input)


def _children_to_terminate(prepared: PreparedEpisode) -> list[str]:
    terminate = next((e for e in prepared.accepted if isinstance(e, ExecutionTerminated)), None)
    if terminate is not None and not terminate.recurse:
        return []
    return list(prepared.state.children.values())


def _fresh_ids(converted: ResponseActions) -> EpisodeIds:
    completion = converted.completion
    continues = completion is not None and completion.status == "CONTINUED_AS_NEW"
    return EpisodeIds(
        next_execution_id=uuid.uuid4().hex if continues else "",
        child_execution_ids={
            action.id: uuid.uuid4().hex
            for action in converted.actions
            if isinstance(action, CreateSubOrchestration)
        },
    )


def _ended_failed(past: Sequence[pb.HistoryEvent]) -> bool:
    ended = next((e for e in reversed(past) if e.HasField("executionCompleted")), None)
    return ended is not None and ended.executionCompleted.orchestrationStatus == (
        pb.ORCHESTRATION_STATUS_FAILED
    )
