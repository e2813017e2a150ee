"""Orchestrator actions, Durable Task protobuf -> durable_fx, one to one.

An SDK worker answers an ``OrchestratorRequest`` with ``OrchestratorAction``
messages; each scheduling action becomes the durable_fx action of the same
kind and keeps the SDK's id (its sequence number) as the ``id`` the history
event records, exactly as the built-in executor numbers its own actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .._entity import EntityId
from .._history import EventRaised, FailureDetails, HistoryEvent
from .._replay.actions import (
    Action,
    CallEntity,
    CompleteOrchestration,
    CreateSubOrchestration,
    CreateTimer,
    LockEntities,
    ScheduleTask,
    SendEvent,
    SignalEntity,
    UnlockEntity,
)
from .._state import OrchestrationStatus
from ._history_pb import event_from_pb, failure_from_pb, status_from_pb, trace_from_pb
from ._proto import from_timestamp, optional_text, pb

__all__ = ["ResponseActions", "actions_from_pb"]

_COMPLETION_STATUSES = {
    OrchestrationStatus.COMPLETED: "COMPLETED",
    OrchestrationStatus.FAILED: "FAILED",
    OrchestrationStatus.TERMINATED: "TERMINATED",
    OrchestrationStatus.CONTINUED_AS_NEW: "CONTINUED_AS_NEW",
}


@dataclass(slots=True)
class ResponseActions:
    """What an ``OrchestratorResponse`` asks for, in durable_fx terms."""

    actions: list[Action] = field(default_factory=list)
    completion: CompleteOrchestration | None = None
    rewound_history: list[HistoryEvent] | None = None
    """The history a rewind replaces the failed one with (``rewindOrchestration``)."""


def actions_from_pb(actions: Sequence[pb.OrchestratorAction]) -> ResponseActions:
    """Convert the actions of one response.

    An action durable_fx cannot carry out (terminating another instance)
    fails the orchestration with a failure that says so:
    dropping it silently would leave the code waiting forever.
    """
    result = ResponseActions()
    for action in actions:
        kind = action.WhichOneof("orchestratorActionType")
        match kind:
            case "scheduleTask":
                task = action.scheduleTask
                result.actions.append(
                    ScheduleTask(
                        action.id,
                        task.name,
                        optional_text(task, "input"),
                        trace_context=trace_from_pb(task, "parentTraceContext"),
                    )
                )
            case "createTimer":
                result.actions.append(
                    CreateTimer(action.id, from_timestamp(action.createTimer.fireAt))
                )
            case "createSubOrchestration":
                child = action.createSubOrchestration
                result.actions.append(
                    CreateSubOrchestration(
                        action.id,
                        child.name,
                        child.instanceId,
                        optional_text(child, "input"),
                        trace_context=trace_from_pb(child, "parentTraceContext"),
                    )
                )
            case "sendEvent":
                send = action.sendEvent
                result.actions.append(
                    SendEvent(
                        action.id, send.instance.instanceId, send.name, optional_text(send, "data")
                    )
                )
            case "sendEntityMessage":
                try:
                    result.actions.append(_entity_action(action.id, action.sendEntityMessage))
                except ValueError as error:  # the code would wait forever for a lost message
                    result.actions.clear()
                    result.completion = _failing("InvalidEntityMessageError", str(error))
                    return result
            case "completeOrchestration":
                result.completion = _completion(action.completeOrchestration)
            case "rewindOrchestration":
                rewind = action.rewindOrchestration
                result.rewound_history = [event_from_pb(e) for e in rewind.newHistory]
            case _:
                result.actions.clear()
                result.completion = _unsupported(kind)
                return result
    return result


def _entity_action(action_id: int, message: pb.SendEntityMessageAction) -> Action:
    """An entity message: a call, a signal, a lock request or an unlock.

    The SDK names the caller in its events; durable_fx fills that in from the
    instance when it plans the episode, as for its own orchestrations.
    """
    kind = message.WhichOneof("EntityMessageType")
    if kind == "entityOperationCalled":
        called = message.entityOperationCalled
        return CallEntity(
            action_id,
            _entity_target(called.targetInstanceId.value),
            called.operation,
            optional_text(called, "input"),
            called.requestId,
        )
    if kind == "entityOperationSignaled":
        signaled = message.entityOperationSignaled
        return SignalEntity(
            action_id,
            _entity_target(signaled.targetInstanceId.value),
            signaled.operation,
            optional_text(signaled, "input"),
            signaled.requestId,
            at=from_timestamp(signaled.scheduledTime)
            if signaled.HasField("scheduledTime")
            else None,
        )
    if kind == "entityLockRequested":
        requested = message.entityLockRequested
        lock_set = tuple(map(_entity_target, requested.lockSet))
        if not lock_set or list(lock_set) != sorted(set(lock_set)):
            raise ValueError(f"a lock set is sorted, without repeats, and not empty: {lock_set!r}")
        return LockEntities(action_id, lock_set, requested.criticalSectionId)
    if kind == "entityUnlockSent":
        unlock = message.entityUnlockSent
        target = _entity_target(unlock.targetInstanceId.value)
        return UnlockEntity(action_id, target, unlock.criticalSectionId)
    raise ValueError("a sendEntityMessage action carries no message")


def _entity_target(instance_id: str) -> str:
    """``instance_id`` if it names an entity (``@name@key``); ``ValueError`` if not."""
    return EntityId.parse(instance_id).instance_id


def _completion(complete: pb.CompleteOrchestrationAction) -> CompleteOrchestration:
    status = _COMPLETION_STATUSES.get(status_from_pb(complete.orchestrationStatus))
    if status is None:
        raise ValueError(
            f"an orchestration cannot complete as {complete.orchestrationStatus}; "
            "expected COMPLETED, FAILED, TERMINATED or CONTINUED_AS_NEW"
        )
    failure = None
    if complete.HasField("failureDetails"):
        failure = failure_from_pb(complete.failureDetails)
    elif status == "FAILED":
        failure = FailureDetails(error_type="Error", message="the orchestration failed")
    carryover: list[HistoryEvent] = [
        event
        for event in map(event_from_pb, complete.carryoverEvents)
        if isinstance(event, EventRaised)
    ]
    return CompleteOrchestration(
        status,  # type: ignore[arg-type]
        result=optional_text(complete, "result"),
        failure=failure,
        carryover_events=carryover,
    )


def _unsupported(kind: str | None) -> CompleteOrchestration:
    what = {
        "terminateOrchestration": "terminating another instance from an orchestration "
        "(use a client's terminate instead)",
    }.get(kind or "", f"the {kind!r} action")
    return _failing("NotSupportedError", f"the durable_fx sidecar does not support {what}")


def _failing(error_type: str, message: str) -> CompleteOrchestration:
    """Fail the orchestration: it asked for something that cannot be carried out."""
    failure = FailureDetails(error_type=error_type, message=message, non_retriable=True)
    return CompleteOrchestration("FAILED", failure=failure)
