"""Episodes: turn what the executor did into one atomic store commit.

Pure functions of their arguments (the caller supplies ``now`` and new ids),
so every rule about what an episode writes lives here and can be tested
without a store: which history events record the actions, which activity
work items and messages go out, how the instance row changes, what the
parent hears when a sub-orchestration ends, and how continue-as-new starts
the next execution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Sequence
from datetime import datetime

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
    ParentInstance,
    PatchApplied,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
)
from .._replay.actions import (
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
from .._replay.executor import EpisodeOutput
from .._serialization import encode
from .._state import OrchestrationStatus
from .._tracing import child_trace_context
from ..storage._records import (
    ActivityInvocation,
    EpisodeCommit,
    InboxMessage,
    InstanceRecord,
    OrchestrationMessage,
    timer_key,
)

__all__ = [
    "AWAITING_START",
    "EpisodeIds",
    "events_for",
    "pending_start",
    "plan_before_start",
    "plan_consume_only",
    "plan_episode",
    "plan_failure",
    "refusals",
    "rewind_requested",
    "starting_instance",
    "terminated_failure",
    "timer_message",
]


AWAITING_START = (OrchestrationStatus.PENDING, OrchestrationStatus.CONTINUED_AS_NEW)
"""Statuses of an instance whose next execution has not begun yet."""


@dataclasses.dataclass(frozen=True, slots=True)
class EpisodeIds:
    """Fresh ids an episode may need, supplied by the (impure) caller."""

    next_execution_id: str
    child_execution_ids: dict[int, str]
    """Execution id for each sub-orchestration started this episode, by action id.

    By action, not by child instance id: two starts of one id must stay two
    messages (the loser is refused), not collapse into one under a shared key.
    """


def pending_start(
    instance: InstanceRecord, messages: Sequence[InboxMessage]
) -> ExecutionStarted | None:
    """The start message that begins a new execution now, if one is pending.

    Either the instance awaits exactly this execution (new instance,
    continue-as-new) or it has finished and a new start re-creates it.
    """
    for message in messages:
        event = message.event
        if not isinstance(event, ExecutionStarted):
            continue
        same_execution = event.execution_id == instance.execution_id
        if same_execution and instance.status in AWAITING_START:
            return event
        if not same_execution and instance.status.is_terminal:
            return event
    return None


def starting_instance(instance: InstanceRecord, started: ExecutionStarted) -> InstanceRecord:
    """The instance row as ``started`` begins a new execution (a re-created one is new again)."""
    record = dataclasses.replace(
        instance,
        name=started.name,
        execution_id=started.execution_id,
        input=started.input,
        output=None,
        failure=None,
        custom_status=None,
        orchestration_version=started.version,
    )
    if instance.status.is_terminal:
        record = dataclasses.replace(record, created_at=started.timestamp)
    return record


_STANDING_ANSWERS = (
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceFailed,
    EntityOperationCompleted,
    EntityOperationFailed,
    EntityLockGranted,
)
"""Answers to requests a rewind does not send again."""


def events_for(
    execution_id: str,
    messages: Sequence[InboxMessage],
    superseded: Container[str] = (),
) -> list[HistoryEvent]:
    """Events addressed to this execution (or to whichever is current), in arrival order.

    An answer of a sub-orchestration or an entity to an execution a rewind
    replaced (``superseded``) counts too: the rewind did not ask again.
    Events carried over by ``continue_as_new(save_events=True)`` come first:
    they reached the instance before anything else this execution sees, but
    were put in the inbox by the commit that started it, after events raised
    while the previous episode ran.
    """
    events = [
        m
        for m in messages
        if not isinstance(m.event, ExecutionStarted | ExecutionRewound)
        and (
            m.execution_id in (None, execution_id)
            or (m.execution_id in superseded and isinstance(m.event, _STANDING_ANSWERS))
        )
    ]
    carried = [m.event for m in events if _carried_over(m)]
    return carried + [m.event for m in events if not _carried_over(m)]


def rewind_requested(
    instance: InstanceRecord, messages: Sequence[InboxMessage]
) -> ExecutionRewound | None:
    """The rewind among ``messages`` if ``instance`` may be rewinding (it is not code's event).

    A FAILED instance gets one from a rewound parent; a client's rewind sets
    the instance RUNNING as the store accepts it. Whoever plans the episode
    checks that the history did fail.
    """
    if instance.status not in (OrchestrationStatus.FAILED, OrchestrationStatus.RUNNING):
        return None
    return next((m.event for m in messages if isinstance(m.event, ExecutionRewound)), None)


def _carried_over(message: InboxMessage) -> bool:
    # A raised event is addressed to whichever execution is current, unless
    # continue-as-new pinned it to the execution it carried it to.
    return isinstance(message.event, EventRaised) and message.execution_id is not None


def refusals(
    messages: Sequence[InboxMessage],
    execution_id: str,
    status: OrchestrationStatus,
    now: datetime,
) -> list[OrchestrationMessage]:
    """Tell parents whose sub-orchestration start this instance cannot take.

    ``execution_id`` is the execution the instance runs after this episode,
    and ``status`` its status then.
    """
    replies = []
    for message in messages:
        event = message.event
        if not isinstance(event, ExecutionStarted) or event.parent is None:
            continue
        if event.execution_id == execution_id:
            continue  # the start that runs (or a redelivered copy of it)
        failure = FailureDetails(
            error_type="InstanceExistsError",
            message=f"instance {event.instance_id!r} is already {status.value}",
            non_retriable=True,
        )
        reply = SubOrchestrationInstanceFailed(
            timestamp=now, task_scheduled_id=event.parent.task_scheduled_id, failure=failure
        )
        replies.append(
            OrchestrationMessage(event.parent.instance_id, reply, event.parent.execution_id)
        )
    return replies


def plan_episode(
    *,
    instance: InstanceRecord,
    started: ExecutionStarted,
    output: EpisodeOutput,
    consumed: Sequence[str],
    now: datetime,
    ids: EpisodeIds,
    running_children: Sequence[str] = (),
    reset_history: bool = False,
) -> EpisodeCommit:
    """The commit for an episode in which the executor produced ``output``."""
    history: list[HistoryEvent] = list(output.accepted)
    activities: list[ActivityInvocation] = []
    messages: list[OrchestrationMessage] = []
    for action in output.actions:
        history.append(_recorded(action, now, instance))
        _dispatch(action, instance, started, now, ids, activities, messages)

    record = dataclasses.replace(
        instance,
        status=OrchestrationStatus.SUSPENDED if output.suspended else OrchestrationStatus.RUNNING,
        custom_status=output.custom_status,
        updated_at=now,
    )
    completion = output.completion if output.completed_now else None
    if completion is not None:
        if completion.status == "CONTINUED_AS_NEW":
            record, history, continued = _continue_as_new(record, started, completion, now, ids)
            messages.extend(continued)
            reset_history = True
            activities.clear()
        else:
            history.append(_completed_event(completion, now))
            record = _finished(record, completion, now)
            messages.extend(_notify_parent(started, completion, now))
        messages.extend(_close_children(started, completion, output, running_children, now))
    moot = {timer_key(instance.execution_id, t) for t in output.cancelled_timers}
    sent = [m for m in messages if not (m.instance_id == instance.instance_id and m.key in moot)]
    return EpisodeCommit(
        instance=record,
        new_history=history,
        consumed=list(consumed),
        activities=activities,
        messages=_without_stale_self_messages(sent, record),
        reset_history=reset_history,
        # Timers this episode created and cancelled are never sent; the rest are deleted.
        cancelled=sorted(moot - {m.key for m in messages}),
    )


def _without_stale_self_messages(
    messages: list[OrchestrationMessage], record: InstanceRecord
) -> list[OrchestrationMessage]:
    """Drop timers to an execution that continue-as-new just ended: they could never apply."""
    return [
        m
        for m in messages
        if m.instance_id != record.instance_id or m.execution_id in (None, record.execution_id)
    ]


def plan_failure(
    *,
    instance: InstanceRecord,
    started: ExecutionStarted | None,
    failure: FailureDetails,
    consumed: Sequence[str],
    now: datetime,
    reset_history: bool = False,
) -> EpisodeCommit:
    """A commit that fails the instance without running its code (unknown name, bad history).

    With ``reset_history`` (the failure ends an execution before it began) the
    new history records the start too, so the timeline shows what was asked.
    """
    completion = CompleteOrchestration("FAILED", failure=failure)
    history: list[HistoryEvent] = [OrchestratorStarted(timestamp=now)]
    if reset_history and started is not None:
        history.append(started)
    history.append(_completed_event(completion, now))
    return EpisodeCommit(
        instance=_finished(dataclasses.replace(instance, updated_at=now), completion, now),
        new_history=history,
        reset_history=reset_history,
        consumed=list(consumed),
        messages=_notify_parent(started, completion, now) if started is not None else [],
    )


def plan_before_start(
    *,
    instance: InstanceRecord,
    events: Sequence[HistoryEvent],
    consumed: Sequence[str],
    now: datetime,
    messages: Sequence[OrchestrationMessage] = (),
) -> EpisodeCommit:
    """A commit for messages that reach a PENDING instance before its scheduled start.

    A terminate ends the instance without running its code. Raised events and
    suspend/resume requests are kept in its history, which the start applies
    after ``ExecutionStarted`` (so an event raised early is not lost).
    """
    record = dataclasses.replace(instance, updated_at=now)
    terminated = next((e for e in events if isinstance(e, ExecutionTerminated)), None)
    if terminated is not None:
        completion = CompleteOrchestration("TERMINATED", terminated.input)
        return EpisodeCommit(
            instance=_finished(record, completion, now),
            new_history=[OrchestratorStarted(timestamp=now), _completed_event(completion, now)],
            consumed=list(consumed),
            messages=list(messages),
        )
    kept = [e for e in events if isinstance(e, _KEPT_BEFORE_START)]
    return EpisodeCommit(
        instance=record, new_history=kept, consumed=list(consumed), messages=list(messages)
    )


_KEPT_BEFORE_START = (EventRaised, ExecutionSuspended, ExecutionResumed)


def plan_consume_only(
    *,
    instance: InstanceRecord,
    consumed: Sequence[str],
    messages: Sequence[OrchestrationMessage] = (),
) -> EpisodeCommit:
    """A commit that only removes messages (late results for a finished instance)."""
    return EpisodeCommit(
        instance=instance, new_history=[], consumed=list(consumed), messages=list(messages)
    )


def _recorded(action: Action, now: datetime, instance: InstanceRecord) -> HistoryEvent:
    """The history event that records ``action`` (same sequence number)."""
    match action:
        case CallEntity() | SignalEntity():
            return _entity_request(action, now, instance)
        case LockEntities():
            return EntityLockRequested(
                event_id=action.id,
                timestamp=now,
                critical_section_id=action.critical_section_id,
                lock_set=list(action.lock_set),
                parent_instance_id=instance.instance_id,
            )
        case UnlockEntity():
            return EntityUnlockSent(
                event_id=action.id,
                timestamp=now,
                critical_section_id=action.critical_section_id,
                parent_instance_id=instance.instance_id,
                target_instance_id=action.entity_instance_id,
            )
        case ScheduleTask():
            return TaskScheduled(
                event_id=action.id,
                timestamp=now,
                name=action.name,
                # A call_http with credentials: history keeps the copy without them.
                input=action.input if action.recorded_input is None else action.recorded_input,
                attempt=action.attempt,
                heartbeat_timeout=action.heartbeat_timeout,
                heartbeat_details=action.heartbeat_details,
                trace_context=action.trace_context,
            )
        case CreateTimer():
            return TimerCreated(
                event_id=action.id, timestamp=now, fire_at=action.fire_at, purpose=action.purpose
            )
        case CreateSubOrchestration():
            return SubOrchestrationInstanceCreated(
                event_id=action.id,
                timestamp=now,
                name=action.name,
                instance_id=action.instance_id,
                input=action.input,
            )
        case SendEvent():
            return EventSent(
                event_id=action.id,
                timestamp=now,
                instance_id=action.instance_id,
                name=action.name,
                input=action.input,
            )
        case RecordPatch():
            return PatchApplied(event_id=action.id, timestamp=now, name=action.name)


def _dispatch(
    action: Action,
    instance: InstanceRecord,
    started: ExecutionStarted,
    now: datetime,
    ids: EpisodeIds,
    activities: list[ActivityInvocation],
    messages: list[OrchestrationMessage],
) -> None:
    """Add the work item or message that carries ``action`` out."""
    execution_id = instance.execution_id
    match action:
        case ScheduleTask():
            activities.append(
                ActivityInvocation(
                    instance.instance_id,
                    execution_id,
                    action.id,
                    action.name,
                    action.input,
                    action.attempt,
                    action.heartbeat_timeout,
                    action.heartbeat_details,
                    action.trace_context or child_trace_context(started),
                )
            )
        case CreateTimer():
            messages.append(
                timer_message(instance.instance_id, execution_id, action.id, action.fire_at)
            )
        case CreateSubOrchestration():
            child_start = ExecutionStarted(
                timestamp=now,
                name=action.name,
                instance_id=action.instance_id,
                execution_id=ids.child_execution_ids[action.id],
                input=action.input,
                version=started.version,
                trace_context=action.trace_context or child_trace_context(started),
                parent=ParentInstance(
                    instance_id=instance.instance_id,
                    execution_id=execution_id,
                    name=started.name,
                    task_scheduled_id=action.id,
                ),
            )
            messages.append(OrchestrationMessage(action.instance_id, child_start))
        case SendEvent():
            raised = EventRaised(timestamp=now, name=action.name, input=action.input)
            messages.append(OrchestrationMessage(action.instance_id, raised))
        case LockEntities() | UnlockEntity():
            request = _recorded(action, now, instance)
            target = (
                action.lock_set[0]
                if isinstance(action, LockEntities)
                else action.entity_instance_id
            )
            messages.append(OrchestrationMessage(target, request))
        case CallEntity() | SignalEntity():
            request = _entity_request(action, now, instance)
            at = action.at if isinstance(action, SignalEntity) else None
            messages.append(OrchestrationMessage(action.entity_instance_id, request, visible_at=at))
        case RecordPatch():
            pass  # only a marker in history


def _entity_request(
    action: CallEntity | SignalEntity, now: datetime, instance: InstanceRecord
) -> EntityOperationCalled | EntityOperationSignaled:
    """The request an entity receives; the orchestration's history records the same."""
    if isinstance(action, SignalEntity):
        return EntityOperationSignaled(
            event_id=action.id,
            timestamp=now,
            request_id=action.request_id,
            operation=action.operation,
            input=action.input,
            scheduled_time=action.at,
            target_instance_id=action.entity_instance_id,
        )
    return EntityOperationCalled(
        event_id=action.id,
        timestamp=now,
        request_id=action.request_id,
        operation=action.operation,
        input=action.input,
        parent_instance_id=instance.instance_id,
        parent_execution_id=instance.execution_id,
        target_instance_id=action.entity_instance_id,
    )


def _completed_event(completion: CompleteOrchestration, now: datetime) -> ExecutionCompleted:
    status = completion.status
    assert status != "CONTINUED_AS_NEW"
    return ExecutionCompleted(
        timestamp=now, status=status, result=completion.result, failure=completion.failure
    )


def _finished(
    record: InstanceRecord, completion: CompleteOrchestration, now: datetime
) -> InstanceRecord:
    return dataclasses.replace(
        record,
        status=OrchestrationStatus(completion.status),
        output=completion.result,
        failure=completion.failure,
        updated_at=now,
    )


def _continue_as_new(
    record: InstanceRecord,
    started: ExecutionStarted,
    completion: CompleteOrchestration,
    now: datetime,
    ids: EpisodeIds,
) -> tuple[InstanceRecord, list[HistoryEvent], list[OrchestrationMessage]]:
    """The next execution: a fresh history, started by a message to the instance itself."""
    execution_id = ids.next_execution_id
    next_start = started.model_copy(
        update={"timestamp": now, "execution_id": execution_id, "input": completion.result}
    )
    messages = [OrchestrationMessage(record.instance_id, next_start, execution_id)]
    messages += [
        OrchestrationMessage(record.instance_id, event, execution_id)
        for event in completion.carryover_events
    ]
    next_record = dataclasses.replace(
        record,
        execution_id=execution_id,
        status=OrchestrationStatus.CONTINUED_AS_NEW,
        input=completion.result,
        output=None,
        failure=None,
    )
    return next_record, [], messages


def timer_message(
    instance_id: str, execution_id: str, timer_id: int, fire_at: datetime
) -> OrchestrationMessage:
    """The delayed message that fires timer ``timer_id`` of an execution at ``fire_at``."""
    fired = TimerFired(timestamp=fire_at, timer_id=timer_id, fire_at=fire_at)
    return OrchestrationMessage(instance_id, fired, execution_id, visible_at=fire_at)


def terminated_failure(instance_id: str, reason: str | None = None) -> FailureDetails:
    """What a parent learns of a terminated sub-orchestration."""
    message = f"sub-orchestration {instance_id!r} was terminated"
    return FailureDetails(
        error_type="OrchestrationTerminated",
        message=message + (f": {reason}" if reason else ""),
    )


def _notify_parent(
    started: ExecutionStarted, completion: CompleteOrchestration, now: datetime
) -> list[OrchestrationMessage]:
    parent = started.parent
    if parent is None:
        return []
    event: HistoryEvent
    if completion.status == "COMPLETED":
        event = SubOrchestrationInstanceCompleted(
            timestamp=now, task_scheduled_id=parent.task_scheduled_id, result=completion.result
        )
    else:
        failure = completion.failure or terminated_failure(started.instance_id, completion.result)
        event = SubOrchestrationInstanceFailed(
            timestamp=now, task_scheduled_id=parent.task_scheduled_id, failure=failure
        )
    return [OrchestrationMessage(parent.instance_id, event, parent.execution_id)]


def _close_children(
    started: ExecutionStarted,
    completion: CompleteOrchestration,
    output: EpisodeOutput,
    running_children: Sequence[str],
    now: datetime,
) -> list[OrchestrationMessage]:
    """Terminates for the children the ended execution takes with it.

    A terminated parent takes every running child (``running_children``, empty
    when the terminate did not recurse), with its own reason; any other end
    takes those started with ``ParentClosePolicy.TERMINATE``.
    """
    if completion.status == "TERMINATED":
        children, reason = list(running_children), completion.result
    else:
        verb = {"COMPLETED": "completed", "FAILED": "failed"}.get(
            completion.status, "continued as new"
        )
        children = []
        reason = encode(f"parent {started.instance_id} {verb} (ParentClosePolicy.TERMINATE)")
    children += [c for c in output.terminate_on_close if c not in children]
    return [
        OrchestrationMessage(child, ExecutionTerminated(timestamp=now, input=reason))
        for child in children
    ]
