"""Entity batches whose operations run in an SDK worker: request out, outcome back.

The sidecar locks an entity like durable_fx's own worker does and orders its
requests around the entity's lock (``worker._entity_batch.schedule``); lock
requests and unlocks never reach the SDK. The operations to run go out in
one of the protocol's two shapes: an ``EntityBatchRequest`` (``batch``, the
default: every Durable Task SDK with entities reads it) or an
``EntityRequest`` whose operations are the request events themselves
(``operations``, the newer shape the Durable Task Scheduler sends). The
``EntityBatchResult`` the worker sends back becomes the same
``BatchOutcome`` durable_fx's own runner produces, and is committed the same
way (``entity_commit``); the sidecar knows who waits for each operation, so
it needs no ``operationInfos``.
"""

from __future__ import annotations

import uuid
from typing import Literal

from .._entity import EntityId, EntitySignal, OrchestrationStart
from .._history import EntityOperationCalled, EntityOperationSignaled, FailureDetails
from .._ids import validate_instance_id
from .._replay.entities import BatchOutcome, EntityOperation, OperationResult, operation_result
from ..worker._entity_batch import EntityBatch
from ._history_pb import event_to_pb, failure_from_pb
from ._proto import from_timestamp, optional_text, pb, text_value

__all__ = ["ENTITY_SHAPES", "EntityShape", "entity_request", "failed_outcome", "outcome_of"]

EntityShape = Literal["batch", "operations"]
ENTITY_SHAPES: tuple[EntityShape, ...] = ("batch", "operations")

_NO_RESULT = FailureDetails(
    error_type="MissingResultError",
    message="the worker answered the batch without a result for this operation",
    non_retriable=True,
)


def entity_request(batch: EntityBatch, shape: EntityShape = "batch") -> pb.WorkItem:
    """The work item that runs ``batch``'s operations, with the entity's state."""
    if shape == "operations":
        return pb.WorkItem(entityRequestV2=_operations_request(batch))
    return pb.WorkItem(entityRequest=_batch_request(batch))


def _operations_request(batch: EntityBatch) -> pb.EntityRequest:
    instance = batch.item.instance
    return pb.EntityRequest(
        instanceId=instance.instance_id,
        executionId=instance.execution_id,
        entityState=text_value(batch.row.state),
        operationRequests=[event_to_pb(_request_event(batch, op)) for op in batch.operations],
    )


def _request_event(
    batch: EntityBatch, op: EntityOperation
) -> EntityOperationSignaled | EntityOperationCalled:
    """The request event an operation came as (its caller, if any, named in it)."""
    target = batch.item.instance.instance_id
    if op.caller is None:
        return EntityOperationSignaled(
            timestamp=batch.now,
            request_id=op.request_id,
            operation=op.operation,
            input=op.input,
            target_instance_id=target,
        )
    return EntityOperationCalled(
        timestamp=batch.now,
        request_id=op.request_id,
        operation=op.operation,
        input=op.input,
        parent_instance_id=op.caller,
        parent_execution_id=op.caller_execution_id,
        target_instance_id=target,
    )


def _batch_request(batch: EntityBatch) -> pb.EntityBatchRequest:
    return pb.EntityBatchRequest(
        instanceId=batch.item.instance.instance_id,
        entityState=text_value(batch.row.state),
        operations=[
            pb.OperationRequest(
                operation=op.operation, requestId=op.request_id, input=text_value(op.input)
            )
            for op in batch.operations
        ],
    )


def outcome_of(batch: EntityBatch, result: pb.EntityBatchResult) -> BatchOutcome:
    """What the worker's answer to ``batch`` keeps and sends.

    Results pair with the operations in order. An operation the worker left
    without a result fails (it is not run again: the batch's messages are
    consumed with the commit, and a failure tells its caller what happened).
    ``ValueError`` if an action names no entity or orchestration to send to.
    """
    results = list(map(_result, batch.operations, result.results))
    results += [operation_result(op, failure=_NO_RESULT) for op in batch.operations[len(results) :]]
    signals: list[EntitySignal] = []
    starts: list[OrchestrationStart] = []
    for action in result.actions:
        kind = action.WhichOneof("operationActionType")
        if kind == "sendSignal":
            signals.append(_signal(action.sendSignal))
        elif kind == "startNewOrchestration":
            starts.append(_start(action.startNewOrchestration))
    return BatchOutcome(
        optional_text(result, "entityState"), tuple(results), tuple(signals), tuple(starts)
    )


def failed_outcome(batch: EntityBatch, failure: FailureDetails) -> BatchOutcome:
    """Every operation of ``batch`` failed with ``failure``; the state stays as it was."""
    failed = tuple(operation_result(op, failure=failure) for op in batch.operations)
    return BatchOutcome(batch.row.state, failed, (), ())


def _result(operation: EntityOperation, result: pb.OperationResult) -> OperationResult:
    if result.HasField("failure"):
        return operation_result(operation, failure=failure_from_pb(result.failure.failureDetails))
    return operation_result(operation, output=optional_text(result.success, "result"))


def _signal(send: pb.SendSignalAction) -> EntitySignal:
    at = from_timestamp(send.scheduledTime) if send.HasField("scheduledTime") else None
    return EntitySignal(
        EntityId.parse(send.instanceId),
        send.name,
        optional_text(send, "input"),
        uuid.uuid4().hex,
        at,
    )


def _start(start: pb.StartNewOrchestrationAction) -> OrchestrationStart:
    if not start.name:
        raise ValueError("an entity started an orchestration without a name")
    instance_id = start.instanceId or uuid.uuid4().hex
    validate_instance_id(instance_id)
    return OrchestrationStart(start.name, optional_text(start, "input"), instance_id)
