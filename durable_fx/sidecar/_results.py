"""Activity work in protobuf, and the batches its results are written in.

While one batch of results is being written, the results completed
meanwhile queue up for the next: a busy worker's results cost one store call
per batch, not one each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from .._history import TaskCompleted, TaskFailed
from ..storage._protocol import Store
from ..storage._records import ActivityResult, ActivityWorkItem, OrchestrationMessage
from ._history_pb import failure_from_pb
from ._proto import optional_text, pb, text_value

__all__ = ["ResultWriter", "activity_request", "activity_result"]

log = logging.getLogger("durable_fx.sidecar")

_RETRY_AFTER_ERROR = timedelta(seconds=1)


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


class ResultWriter:
    """Writes activity results to the store in batches (use on the sidecar's loop).

    Args:
        store: Where the results go (``complete_activities``).
        delivered: Called with each batch once it is written.
    """

    def __init__(self, store: Store, delivered: Callable[[list[ActivityResult]], None]) -> None:
        self._store = store
        self._delivered = delivered
        self._pending: list[ActivityResult] = []
        self._ready = asyncio.Event()

    def add(self, result: ActivityResult) -> None:
        """Queue a result for the next batch."""
        self._pending.append(result)
        self._ready.set()

    async def run(self) -> None:
        """Write batches as results come, until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is queued; on failure release the work items so the activities run again."""
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            await self._store.complete_activities(batch)
        except Exception:
            log.exception("writing %d activity results failed; they will run again", len(batch))
            for result in batch:
                with contextlib.suppress(Exception):
                    await self._store.abandon_activity(
                        result.item,
                        reason="could not record the result",
                        retry_after=_RETRY_AFTER_ERROR,
                    )
            return
        self._delivered(batch)
