"""History events and failures, durable_fx <-> Durable Task protobuf, one to one.

durable_fx's history events mirror ``HistoryEvent`` of the protobuf, so each
kind maps to exactly one ``eventType`` and back; payloads are JSON text on
both sides and pass through untouched. What the protobuf has and durable_fx
does not keep (trace contexts, tags of tasks, a timer's purpose) is dropped
on the way in and left unset on the way out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._history import (
    ContinueAsNew,
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
    OrchestratorCompleted,
    OrchestratorStarted,
    ParentInstance,
    PatchApplied,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
    TaskCompleted,
    TaskFailed,
    TaskScheduled,
    TimerCreated,
    TimerFired,
    TraceContext,
)
from .._state import OrchestrationStatus
from ._proto import from_timestamp, optional_text, pb, text_value, timestamp

__all__ = [
    "UnsupportedEventError",
    "event_from_pb",
    "event_to_pb",
    "failure_from_pb",
    "failure_to_pb",
    "status_from_pb",
    "status_to_pb",
]


class UnsupportedEventError(ValueError):
    """A protobuf history event durable_fx has no kind for."""


_STATUS_TO_PB = {
    OrchestrationStatus.RUNNING: pb.ORCHESTRATION_STATUS_RUNNING,
    OrchestrationStatus.COMPLETED: pb.ORCHESTRATION_STATUS_COMPLETED,
    OrchestrationStatus.CONTINUED_AS_NEW: pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW,
    OrchestrationStatus.FAILED: pb.ORCHESTRATION_STATUS_FAILED,
    OrchestrationStatus.TERMINATED: pb.ORCHESTRATION_STATUS_TERMINATED,
    OrchestrationStatus.PENDING: pb.ORCHESTRATION_STATUS_PENDING,
    OrchestrationStatus.SUSPENDED: pb.ORCHESTRATION_STATUS_SUSPENDED,
}
_STATUS_FROM_PB = {value: status for status, value in _STATUS_TO_PB.items()}


def status_to_pb(status: OrchestrationStatus) -> pb.OrchestrationStatus:
    """The protobuf status of a durable_fx status."""
    return _STATUS_TO_PB[status]


def status_from_pb(value: int) -> OrchestrationStatus:
    """The durable_fx status of a protobuf status (CANCELED, never used by the SDKs, is refused)."""
    try:
        return _STATUS_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unsupported orchestration status {value}") from None


# -- failures -------------------------------------------------------------------------------


def failure_to_pb(failure: FailureDetails) -> pb.TaskFailureDetails:
    """The protobuf failure details of a durable_fx failure."""
    return pb.TaskFailureDetails(
        errorType=failure.error_type,
        errorMessage=failure.message,
        stackTrace=text_value(failure.stack_trace),
        isNonRetriable=failure.non_retriable,
    )


def failure_from_pb(details: pb.TaskFailureDetails) -> FailureDetails:
    """A durable_fx failure from protobuf failure details.

    durable_fx keeps one level: an inner failure (the task failure that failed
    an orchestration) is folded into the stack trace text so it is not lost.
    """
    stack = optional_text(details, "stackTrace")
    if details.HasField("innerFailure"):
        inner = details.innerFailure
        caused_by = f"Caused by {inner.errorType}: {inner.errorMessage}"
        inner_stack = optional_text(inner, "stackTrace")
        if inner_stack:
            caused_by += f"\n{inner_stack}"
        stack = f"{stack}\n{caused_by}" if stack else caused_by
    return FailureDetails(
        error_type=details.errorType or "Error",
        message=details.errorMessage,
        stack_trace=stack,
        non_retriable=details.isNonRetriable,
    )


# -- durable_fx -> protobuf -------------------------------------------------------------------


def trace_to_pb(context: TraceContext | None) -> pb.TraceContext | None:
    """A trace context as the protocol carries it (``None`` for none)."""
    if context is None:
        return None
    return pb.TraceContext(
        traceParent=context.traceparent, traceState=text_value(context.tracestate)
    )


def trace_from_pb(message: Any, field: str) -> TraceContext | None:
    """The trace context in ``message.field``, if it has a usable one."""
    if not message.HasField(field):
        return None
    found = getattr(message, field)
    if not found.traceParent:
        return None
    return TraceContext(
        traceparent=found.traceParent, tracestate=optional_text(found, "traceState")
    )


def event_to_pb(event: HistoryEvent) -> pb.HistoryEvent:
    """The protobuf event for a durable_fx history event."""
    fields = _TO_PB[type(event)](event)
    return pb.HistoryEvent(eventId=event.event_id, timestamp=timestamp(event.timestamp), **fields)


def _instance(instance_id: str, execution_id: str | None) -> pb.OrchestrationInstance:
    return pb.OrchestrationInstance(instanceId=instance_id, executionId=text_value(execution_id))


def _started_to_pb(event: ExecutionStarted) -> dict[str, Any]:
    parent = None
    if event.parent is not None:
        parent = pb.ParentInstanceInfo(
            taskScheduledId=event.parent.task_scheduled_id,
            name=text_value(event.parent.name),
            orchestrationInstance=_instance(event.parent.instance_id, event.parent.execution_id),
        )
    started = pb.ExecutionStartedEvent(
        name=event.name,
        version=text_value(event.version),
        input=text_value(event.input),
        orchestrationInstance=_instance(event.instance_id, event.execution_id),
        parentInstance=parent,
        scheduledStartTimestamp=(
            timestamp(event.scheduled_start) if event.scheduled_start is not None else None
        ),
        tags=event.tags or {},
        parentTraceContext=trace_to_pb(event.trace_context),
    )
    return {"executionStarted": started}


def _completed_to_pb(event: ExecutionCompleted) -> dict[str, Any]:
    completed = pb.ExecutionCompletedEvent(
        orchestrationStatus=status_to_pb(OrchestrationStatus(event.status)),
        result=text_value(event.result),
        failureDetails=failure_to_pb(event.failure) if event.failure is not None else None,
    )
    return {"executionCompleted": completed}


def _rewound_to_pb(event: ExecutionRewound) -> dict[str, Any]:
    rewound = pb.ExecutionRewoundEvent(
        reason=text_value(event.reason), parentExecutionId=text_value(event.parent_execution_id)
    )
    return {"executionRewound": rewound}


_TO_PB: dict[type[Any], Callable[[Any], dict[str, Any]]] = {
    ExecutionStarted: _started_to_pb,
    ExecutionCompleted: _completed_to_pb,
    ExecutionTerminated: lambda e: {
        "executionTerminated": pb.ExecutionTerminatedEvent(
            input=text_value(e.input), recurse=e.recurse
        )
    },
    ExecutionSuspended: lambda e: {
        "executionSuspended": pb.ExecutionSuspendedEvent(input=text_value(e.input))
    },
    ExecutionResumed: lambda e: {
        "executionResumed": pb.ExecutionResumedEvent(input=text_value(e.input))
    },
    ExecutionRewound: _rewound_to_pb,
    ContinueAsNew: lambda e: {"continueAsNew": pb.ContinueAsNewEvent(input=text_value(e.input))},
    OrchestratorStarted: lambda e: {"orchestratorStarted": pb.OrchestratorStartedEvent()},
    OrchestratorCompleted: lambda e: {"orchestratorCompleted": pb.OrchestratorCompletedEvent()},
    TaskScheduled: lambda e: {
        "taskScheduled": pb.TaskScheduledEvent(
            name=e.name,
            input=text_value(e.input),
            parentTraceContext=trace_to_pb(e.trace_context),
        )
    },
    TaskCompleted: lambda e: {
        "taskCompleted": pb.TaskCompletedEvent(
            taskScheduledId=e.task_scheduled_id, result=text_value(e.result)
        )
    },
    TaskFailed: lambda e: {
        "taskFailed": pb.TaskFailedEvent(
            taskScheduledId=e.task_scheduled_id, failureDetails=failure_to_pb(e.failure)
        )
    },
    SubOrchestrationInstanceCreated: lambda e: {
        "subOrchestrationInstanceCreated": pb.SubOrchestrationInstanceCreatedEvent(
            instanceId=e.instance_id, name=e.name, input=text_value(e.input)
        )
    },
    SubOrchestrationInstanceCompleted: lambda e: {
        "subOrchestrationInstanceCompleted": pb.SubOrchestrationInstanceCompletedEvent(
            taskScheduledId=e.task_scheduled_id, result=text_value(e.result)
        )
    },
    SubOrchestrationInstanceFailed: lambda e: {
        "subOrchestrationInstanceFailed": pb.SubOrchestrationInstanceFailedEvent(
            taskScheduledId=e.task_scheduled_id, failureDetails=failure_to_pb(e.failure)
        )
    },
    TimerCreated: lambda e: {"timerCreated": pb.TimerCreatedEvent(fireAt=timestamp(e.fire_at))},
    TimerFired: lambda e: {
        "timerFired": pb.TimerFiredEvent(fireAt=timestamp(e.fire_at), timerId=e.timer_id)
    },
    EventSent: lambda e: {
        "eventSent": pb.EventSentEvent(
            instanceId=e.instance_id, name=e.name, input=text_value(e.input)
        )
    },
    EventRaised: lambda e: {
        "eventRaised": pb.EventRaisedEvent(name=e.name, input=text_value(e.input))
    },
    EntityOperationSignaled: lambda e: {
        "entityOperationSignaled": pb.EntityOperationSignaledEvent(
            requestId=e.request_id,
            operation=e.operation,
            scheduledTime=timestamp(e.scheduled_time) if e.scheduled_time else None,
            input=text_value(e.input),
            targetInstanceId=text_value(e.target_instance_id),
        )
    },
    EntityOperationCalled: lambda e: {
        "entityOperationCalled": pb.EntityOperationCalledEvent(
            requestId=e.request_id,
            operation=e.operation,
            scheduledTime=timestamp(e.scheduled_time) if e.scheduled_time else None,
            input=text_value(e.input),
            parentInstanceId=text_value(e.parent_instance_id),
            parentExecutionId=text_value(e.parent_execution_id),
            targetInstanceId=text_value(e.target_instance_id),
        )
    },
    EntityOperationCompleted: lambda e: {
        "entityOperationCompleted": pb.EntityOperationCompletedEvent(
            requestId=e.request_id, output=text_value(e.output)
        )
    },
    EntityLockRequested: lambda e: {
        "entityLockRequested": pb.EntityLockRequestedEvent(
            criticalSectionId=e.critical_section_id,
            lockSet=e.lock_set,
            position=e.position,
            parentInstanceId=text_value(e.parent_instance_id),
        )
    },
    EntityLockGranted: lambda e: {
        "entityLockGranted": pb.EntityLockGrantedEvent(criticalSectionId=e.critical_section_id)
    },
    EntityUnlockSent: lambda e: {
        "entityUnlockSent": pb.EntityUnlockSentEvent(
            criticalSectionId=e.critical_section_id,
            parentInstanceId=text_value(e.parent_instance_id),
            targetInstanceId=text_value(e.target_instance_id),
        )
    },
    EntityOperationFailed: lambda e: {
        "entityOperationFailed": pb.EntityOperationFailedEvent(
            requestId=e.request_id, failureDetails=failure_to_pb(e.failure)
        )
    },
    # The protocol has no patch marker; a reader (the durable_fx Python API wrote it) sees it
    # as a generic event.
    PatchApplied: lambda e: {
        "genericEvent": pb.GenericEvent(data=text_value(_PATCH_PREFIX + e.name))
    },
}


# -- protobuf -> durable_fx -------------------------------------------------------------------


def event_from_pb(event: pb.HistoryEvent) -> HistoryEvent:
    """The durable_fx event for a protobuf history event.

    Raises ``UnsupportedEventError`` for kinds durable_fx does not have
    (generic and history-state events).
    """
    kind = event.WhichOneof("eventType")
    convert = _FROM_PB.get(kind or "")
    if convert is None:
        raise UnsupportedEventError(
            f"durable_fx has no history event for the Durable Task event {kind!r}"
        )
    common = {"event_id": event.eventId, "timestamp": from_timestamp(event.timestamp)}
    return convert(getattr(event, kind or ""), common)


def _started_from_pb(e: pb.ExecutionStartedEvent, common: dict[str, Any]) -> HistoryEvent:
    parent = None
    if e.HasField("parentInstance"):
        info = e.parentInstance
        parent = ParentInstance(
            instance_id=info.orchestrationInstance.instanceId,
            execution_id=optional_text(info.orchestrationInstance, "executionId") or "",
            name=optional_text(info, "name") or "",
            task_scheduled_id=info.taskScheduledId,
        )
    return ExecutionStarted(
        **common,
        name=e.name,
        instance_id=e.orchestrationInstance.instanceId,
        execution_id=optional_text(e.orchestrationInstance, "executionId") or "",
        input=optional_text(e, "input"),
        parent=parent,
        scheduled_start=(
            from_timestamp(e.scheduledStartTimestamp)
            if e.HasField("scheduledStartTimestamp")
            else None
        ),
        version=optional_text(e, "version"),
        tags=dict(e.tags) or None,
        trace_context=trace_from_pb(e, "parentTraceContext"),
    )


def _completed_from_pb(e: pb.ExecutionCompletedEvent, common: dict[str, Any]) -> HistoryEvent:
    status = status_from_pb(e.orchestrationStatus)
    if status not in _FINAL_STATUSES:
        raise ValueError(f"an execution cannot complete as {status.value}")
    return ExecutionCompleted(
        **common,
        status=status.value,
        result=optional_text(e, "result"),
        failure=failure_from_pb(e.failureDetails) if e.HasField("failureDetails") else None,
    )


_FINAL_STATUSES = frozenset(
    {
        OrchestrationStatus.COMPLETED,
        OrchestrationStatus.FAILED,
        OrchestrationStatus.TERMINATED,
        OrchestrationStatus.CONTINUED_AS_NEW,
    }
)

_FROM_PB: dict[str, Callable[[Any, dict[str, Any]], HistoryEvent]] = {
    "executionStarted": _started_from_pb,
    "executionCompleted": _completed_from_pb,
    "executionTerminated": lambda e, c: ExecutionTerminated(
        **c, input=optional_text(e, "input"), recurse=e.recurse
    ),
    "executionSuspended": lambda e, c: ExecutionSuspended(**c, input=optional_text(e, "input")),
    "executionResumed": lambda e, c: ExecutionResumed(**c, input=optional_text(e, "input")),
    "executionRewound": lambda e, c: ExecutionRewound(
        **c,
        reason=optional_text(e, "reason"),
        parent_execution_id=optional_text(e, "parentExecutionId"),
    ),
    "continueAsNew": lambda e, c: ContinueAsNew(**c, input=optional_text(e, "input")),
    "orchestratorStarted": lambda e, c: OrchestratorStarted(**c),
    "orchestratorCompleted": lambda e, c: OrchestratorCompleted(**c),
    "taskScheduled": lambda e, c: TaskScheduled(
        **c,
        name=e.name,
        input=optional_text(e, "input"),
        trace_context=trace_from_pb(e, "parentTraceContext"),
    ),
    "taskCompleted": lambda e, c: TaskCompleted(
        **c, task_scheduled_id=e.taskScheduledId, result=optional_text(e, "result")
    ),
    "taskFailed": lambda e, c: TaskFailed(
        **c, task_scheduled_id=e.taskScheduledId, failure=failure_from_pb(e.failureDetails)
    ),
    "subOrchestrationInstanceCreated": lambda e, c: SubOrchestrationInstanceCreated(
        **c, name=e.name, instance_id=e.instanceId, input=optional_text(e, "input")
    ),
    "subOrchestrationInstanceCompleted": lambda e, c: SubOrchestrationInstanceCompleted(
        **c, task_scheduled_id=e.taskScheduledId, result=optional_text(e, "result")
    ),
    "subOrchestrationInstanceFailed": lambda e, c: SubOrchestrationInstanceFailed(
        **c, task_scheduled_id=e.taskScheduledId, failure=failure_from_pb(e.failureDetails)
    ),
    "timerCreated": lambda e, c: TimerCreated(**c, fire_at=from_timestamp(e.fireAt)),
    "timerFired": lambda e, c: TimerFired(
        **c, timer_id=e.timerId, fire_at=from_timestamp(e.fireAt)
    ),
    "eventSent": lambda e, c: EventSent(
        **c, instance_id=e.instanceId, name=e.name, input=optional_text(e, "input")
    ),
    "eventRaised": lambda e, c: EventRaised(**c, name=e.name, input=optional_text(e, "input")),
    "genericEvent": lambda e, c: _generic_from_pb(e, c),
    "entityOperationSignaled": lambda e, c: EntityOperationSignaled(
        **c,
        request_id=e.requestId,
        operation=e.operation,
        input=optional_text(e, "input"),
        scheduled_time=_optional_time(e, "scheduledTime"),
        target_instance_id=optional_text(e, "targetInstanceId") or "",
    ),
    "entityOperationCalled": lambda e, c: EntityOperationCalled(
        **c,
        request_id=e.requestId,
        operation=e.operation,
        input=optional_text(e, "input"),
        scheduled_time=_optional_time(e, "scheduledTime"),
        parent_instance_id=optional_text(e, "parentInstanceId"),
        parent_execution_id=optional_text(e, "parentExecutionId"),
        target_instance_id=optional_text(e, "targetInstanceId") or "",
    ),
    "entityOperationCompleted": lambda e, c: EntityOperationCompleted(
        **c, request_id=e.requestId, output=optional_text(e, "output")
    ),
    "entityLockRequested": lambda e, c: EntityLockRequested(
        **c,
        critical_section_id=e.criticalSectionId,
        lock_set=list(e.lockSet),
        position=e.position,
        parent_instance_id=optional_text(e, "parentInstanceId"),
    ),
    "entityLockGranted": lambda e, c: EntityLockGranted(
        **c, critical_section_id=e.criticalSectionId
    ),
    "entityUnlockSent": lambda e, c: EntityUnlockSent(
        **c,
        critical_section_id=e.criticalSectionId,
        parent_instance_id=optional_text(e, "parentInstanceId"),
        target_instance_id=optional_text(e, "targetInstanceId"),
    ),
    "entityOperationFailed": lambda e, c: EntityOperationFailed(
        **c, request_id=e.requestId, failure=failure_from_pb(e.failureDetails)
    ),
}


def _optional_time(message: Any, field: str) -> Any:
    return from_timestamp(getattr(message, field)) if message.HasField(field) else None


_PATCH_PREFIX = "patch:"


def _generic_from_pb(e: pb.GenericEvent, common: dict[str, Any]) -> HistoryEvent:
    """A patch marker durable_fx wrote; any other generic event is not one of ours."""
    data = optional_text(e, "data") or ""
    if not data.startswith(_PATCH_PREFIX):
        raise UnsupportedEventError(f"durable_fx has no history event for generic event {data!r}")
    return PatchApplied(**common, name=data.removeprefix(_PATCH_PREFIX))
