"""durable_fx history and actions <-> the Durable Task protobuf: one to one, nothing lost.

These check the sidecar's conversion directly (no server): every history
event kind survives a round trip, and the SDK's actions become the
durable_fx actions the episode planner knows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import timestamp_pb2, wrappers_pb2

from durable_fx import FailureDetails, OrchestrationStatus
from durable_fx._history import (
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
)
from durable_fx._replay.actions import (
    CallEntity,
    CreateSubOrchestration,
    CreateTimer,
    LockEntities,
    ScheduleTask,
    SendEvent,
    SignalEntity,
    UnlockEntity,
)
from durable_fx.sidecar._actions_pb import actions_from_pb
from durable_fx.sidecar._history_pb import (
    UnsupportedEventError,
    event_from_pb,
    event_to_pb,
    failure_from_pb,
    status_from_pb,
    status_to_pb,
)

NOW = datetime(2026, 11, 21, 9, 30, 15, 123456, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
FAILURE = FailureDetails(
    error_type="ValueError", message="bad", stack_trace="Traceback...", non_retriable=True
)

EVERY_KIND: list[HistoryEvent] = [
    ExecutionStarted(
        timestamp=NOW,
        name="orders",
        instance_id="order-1",
        execution_id="e1",
        input='{"id": 1}',
        parent=ParentInstance(
            instance_id="batch", execution_id="e0", name="batches", task_scheduled_id=4
        ),
        scheduled_start=LATER,
        version="2.0",
        tags={"team": "billing"},
    ),
    ExecutionCompleted(timestamp=NOW, status="COMPLETED", result='"ok"'),
    ExecutionCompleted(timestamp=NOW, status="FAILED", failure=FAILURE),
    ExecutionTerminated(timestamp=NOW, input='"stop"', recurse=False),
    ExecutionSuspended(timestamp=NOW, input="maintenance"),
    ExecutionResumed(timestamp=NOW, input="done"),
    ExecutionRewound(timestamp=NOW, reason="fixed", parent_execution_id="e9"),
    ContinueAsNew(timestamp=NOW, input="3"),
    OrchestratorStarted(timestamp=NOW),
    OrchestratorCompleted(timestamp=NOW),
    TaskScheduled(event_id=1, timestamp=NOW, name="charge", input="12"),
    TaskCompleted(timestamp=NOW, task_scheduled_id=1, result="true"),
    TaskFailed(timestamp=NOW, task_scheduled_id=1, failure=FAILURE),
    SubOrchestrationInstanceCreated(
        event_id=2, timestamp=NOW, name="ship", instance_id="order-1:0002", input="null"
    ),
    SubOrchestrationInstanceCompleted(timestamp=NOW, task_scheduled_id=2, result="[1]"),
    SubOrchestrationInstanceFailed(timestamp=NOW, task_scheduled_id=2, failure=FAILURE),
    TimerCreated(event_id=3, timestamp=NOW, fire_at=LATER),
    TimerFired(timestamp=LATER, timer_id=3, fire_at=LATER),
    EventSent(event_id=5, timestamp=NOW, instance_id="other", name="ping", input='{"a": 1}'),
    EventRaised(timestamp=NOW, name="approve", input=None),
    PatchApplied(event_id=6, timestamp=NOW, name="send-via-acs"),
    EntityOperationSignaled(
        event_id=7,
        timestamp=NOW,
        request_id="r1",
        operation="add",
        input="2",
        scheduled_time=LATER,
        target_instance_id="@counter@a",
    ),
    EntityOperationCalled(
        event_id=8,
        timestamp=NOW,
        request_id="r2",
        operation="get",
        parent_instance_id="order-1",
        parent_execution_id="e1",
        target_instance_id="@counter@a",
    ),
    EntityOperationCompleted(timestamp=NOW, request_id="r2", output="2"),
    EntityOperationFailed(timestamp=NOW, request_id="r3", failure=FAILURE),
    EntityLockRequested(
        event_id=9,
        timestamp=NOW,
        critical_section_id="cs1",
        lock_set=["@a@1", "@b@2"],
        position=1,
        parent_instance_id="order-1",
    ),
    EntityLockGranted(timestamp=NOW, critical_section_id="cs1"),
    EntityUnlockSent(
        event_id=10,
        timestamp=NOW,
        critical_section_id="cs1",
        parent_instance_id="order-1",
        target_instance_id="@a@1",
    ),
]


@pytest.mark.parametrize("event", EVERY_KIND, ids=lambda e: e.kind)
def test_every_history_event_survives_a_round_trip(event: HistoryEvent) -> None:
    assert event_from_pb(event_to_pb(event)) == event


def test_every_history_kind_is_covered() -> None:
    from typing import get_args

    union = get_args(get_args(HistoryEvent)[0])
    assert {kind.__name__ for kind in union} == {type(e).__name__ for e in EVERY_KIND}


def test_the_protobuf_event_carries_the_sequence_number_and_payloads() -> None:
    converted = event_to_pb(TaskScheduled(event_id=7, timestamp=NOW, name="charge", input="12"))
    assert converted.eventId == 7
    assert converted.taskScheduled.name == "charge"
    assert converted.taskScheduled.input.value == "12"
    assert converted.timestamp.ToDatetime(tzinfo=UTC) == NOW


def test_events_durable_fx_has_no_kind_for_are_refused_with_a_reason() -> None:
    history_state = pb.HistoryEvent(historyState=pb.HistoryStateEvent())
    with pytest.raises(UnsupportedEventError, match="historyState"):
        event_from_pb(history_state)


def test_an_inner_failure_is_kept_in_the_stack_trace() -> None:
    details = pb.TaskFailureDetails(
        errorType="TaskFailedError",
        errorMessage="activity failed",
        innerFailure=pb.TaskFailureDetails(errorType="ValueError", errorMessage="bad card"),
    )
    failure = failure_from_pb(details)
    assert failure.error_type == "TaskFailedError"
    assert failure.stack_trace is not None
    assert "Caused by ValueError: bad card" in failure.stack_trace


@pytest.mark.parametrize("status", list(OrchestrationStatus))
def test_every_status_maps_both_ways(status: OrchestrationStatus) -> None:
    assert status_from_pb(status_to_pb(status)) is status


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def test_sdk_actions_become_durable_fx_actions_with_their_ids() -> None:
    text = wrappers_pb2.StringValue
    carried = pb.HistoryEvent(eventRaised=pb.EventRaisedEvent(name="add", input=text(value="1")))
    converted = actions_from_pb(
        [
            pb.OrchestratorAction(
                id=1, scheduleTask=pb.ScheduleTaskAction(name="charge", input=text(value="12"))
            ),
            pb.OrchestratorAction(id=2, createTimer=pb.CreateTimerAction(fireAt=_stamp(LATER))),
            pb.OrchestratorAction(
                id=3,
                createSubOrchestration=pb.CreateSubOrchestrationAction(
                    instanceId="kid", name="ship"
                ),
            ),
            pb.OrchestratorAction(
                id=4,
                sendEvent=pb.SendEventAction(
                    instance=pb.OrchestrationInstance(instanceId="other"), name="ping"
                ),
            ),
            pb.OrchestratorAction(
                id=5,
                completeOrchestration=pb.CompleteOrchestrationAction(
                    orchestrationStatus=pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW,
                    result=text(value="2"),
                    carryoverEvents=[carried],
                ),
            ),
        ]
    )
    assert converted.actions == [
        ScheduleTask(1, "charge", "12"),
        CreateTimer(2, LATER),
        CreateSubOrchestration(3, "ship", "kid", None),
        SendEvent(4, "other", "ping", None),
    ]
    assert converted.completion is not None
    assert converted.completion.status == "CONTINUED_AS_NEW"
    assert converted.completion.result == "2"
    assert [e.kind for e in converted.completion.carryover_events] == ["EventRaised"]


def test_entity_messages_become_calls_signals_locks_and_unlocks() -> None:
    target = wrappers_pb2.StringValue(value="@Counter@a")
    messages = [
        pb.SendEntityMessageAction(
            entityOperationCalled=pb.EntityOperationCalledEvent(
                requestId="c", operation="get", targetInstanceId=target
            )
        ),
        pb.SendEntityMessageAction(
            entityOperationSignaled=pb.EntityOperationSignaledEvent(
                requestId="s",
                operation="add",
                input=wrappers_pb2.StringValue(value="2"),
                targetInstanceId=target,
                scheduledTime=_stamp(LATER),
            )
        ),
        pb.SendEntityMessageAction(
            entityLockRequested=pb.EntityLockRequestedEvent(
                criticalSectionId="cs", lockSet=["@counter@a", "@counter@b"]
            )
        ),
        pb.SendEntityMessageAction(
            entityUnlockSent=pb.EntityUnlockSentEvent(
                criticalSectionId="cs", targetInstanceId=target
            )
        ),
    ]
    converted = actions_from_pb(
        [pb.OrchestratorAction(id=n, sendEntityMessage=m) for n, m in enumerate(messages)]
    )
    assert converted.completion is None
    assert converted.actions == [
        CallEntity(0, "@counter@a", "get", None, "c"),
        SignalEntity(1, "@counter@a", "add", "2", "s", at=LATER),
        LockEntities(2, ("@counter@a", "@counter@b"), "cs"),
        UnlockEntity(3, "@counter@a", "cs"),
    ]


@pytest.mark.parametrize(
    "message",
    [
        pb.SendEntityMessageAction(
            entityOperationSignaled=pb.EntityOperationSignaledEvent(requestId="r", operation="add")
        ),
        pb.SendEntityMessageAction(
            entityLockRequested=pb.EntityLockRequestedEvent(
                criticalSectionId="cs", lockSet=["@counter@b", "@counter@a"]
            )
        ),
        pb.SendEntityMessageAction(),
    ],
    ids=["no-target", "unsorted-lock-set", "empty"],
)
def test_an_entity_message_to_no_entity_fails_the_orchestration_with_why(
    message: pb.SendEntityMessageAction,
) -> None:
    converted = actions_from_pb([pb.OrchestratorAction(id=1, sendEntityMessage=message)])
    assert converted.actions == []
    assert converted.completion is not None
    assert converted.completion.status == "FAILED"
    assert converted.completion.failure is not None
    assert converted.completion.failure.error_type == "InvalidEntityMessageError"
