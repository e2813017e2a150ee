"""Activity work in protobuf: the requests workers run, and the results they send back.

The results are written in batches (``durable_fx.worker._result_batches``), as the
built-in worker writes its own.
"""

from __future__ import annotations

from datetime import datetime

from .._history import TaskCompleted, TaskFailed
from ..storage._records import ActivityResult, ActivityWorkItem, OrchestrationMessage
from ._history_pb import failure_from_pb, trace_to_pb
from ._proto import optional_text, pb, text_value

__all__ = ["activity_request", "activity_result"]


def activity_request(item: ActivityWorkItem) -> pb.ActivityRequest:
    """The request a worker runs ``item`` from."""
    invocation = item.invocation
    return pb.ActivityRequest(
        name=invocation.name,
        input=text_value(invocation.input),
        orchestrationInstance=pb.OrchestrationInstance(
            instanceId=invocation.instance_id, executionId=text_value(invocation.execution_id)
        ),
        taskId=invocation.task_id,
        parentTraceContext=trace_to_pb(invocation.trace_context),
    )


def activity_result(
    item: ActivityWorkItem, response: pb.ActivityResponse, now: datetime
) -> ActivityResult:
    """The message that takes a worker's response for ``item`` back to its instance."""
    invocation = item.invocation
    event: TaskCompleted | TaskFailed
    if response.HasField("failureDetails"):
        failure = failure_from_pb(response.failureDetails)
        event = TaskFailed(timestamp=now, task_scheduled_id=invocation.task_id, failure=failure)
    else:
        result = optional_text(response, "result")
        event = TaskCompleted(timestamp=now, task_scheduled_id=invocation.task_id, result=result)
    message = OrchestrationMessage(invocation.instance_id, event, invocation.execution_id)
    return ActivityResult(item, message)
