"""Runs one activity invocation and turns its outcome into a result message.

Whatever the activity does (returns, raises, returns something that is not
JSON, is not registered at all) the outcome is a ``TaskCompleted`` or
``TaskFailed`` for the orchestration: an activity never takes the worker down.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from typing import Any

from .._clock import Clock
from .._errors import SerializationError, UnknownNameError
from .._history import FailureDetails, TaskCompleted, TaskFailed
from .._registry import ActivityContext, ActivityDefinition, Registry
from .._replay.executor import failure_from_exception
from .._serialization import encode
from ..storage._records import ActivityResult, ActivityWorkItem, OrchestrationMessage

__all__ = ["ActivityRunner"]

log = logging.getLogger("durable_fx.activity")


class ActivityRunner:
    """Executes activities of one registry; sync ones in a thread pool."""

    def __init__(self, registry: Registry, clock: Clock, threads: Executor) -> None:
        self._registry = registry
        self._clock = clock
        self._threads = threads

    async def run(self, item: ActivityWorkItem) -> ActivityResult:
        """Run the activity and build the message that reports its outcome."""
        invocation = item.invocation
        definition = self._registry.find_activity(invocation.name)
        if definition is None:
            error = UnknownNameError("activity", invocation.name, self._registry.activity_names)
            return self._failed(item, _non_retriable(error))
        try:
            args = self._arguments(definition, item)
        except SerializationError as error:
            return self._failed(item, _non_retriable(error))
        try:
            value = await self._call(definition, args)
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the worker is stopping: it releases the work item
            # The activity raised CancelledError itself: that is its failure, not ours.
            return self._failed(item, failure_from_exception(error))
        # SystemExit too: sys.exit() in an activity must fail its task, not stop the worker.
        except (Exception, SystemExit) as error:
            log.info(
                "activity %s (%s #%d) failed: %s: %s",
                invocation.name,
                invocation.instance_id,
                invocation.task_id,
                type(error).__name__,
                error,
            )
            return self._failed(item, failure_from_exception(error))
        try:
            payload = encode(value)
        except SerializationError as error:
            return self._failed(item, _non_retriable(error))
        event = TaskCompleted(
            timestamp=self._clock.now(), task_scheduled_id=invocation.task_id, result=payload
        )
        return self._result(item, event)

    def _arguments(self, definition: ActivityDefinition, item: ActivityWorkItem) -> list[Any]:
        invocation = item.invocation
        args: list[Any] = []
        for role in definition.parameters:
            if role == "context":
                args.append(
                    ActivityContext(
                        instance_id=invocation.instance_id,
                        execution_id=invocation.execution_id,
                        task_id=invocation.task_id,
                        name=invocation.name,
                        attempt=invocation.attempt,
                        delivery_count=item.dequeue_count,
                    )
                )
            else:
                args.append(definition.input_codec.decode(invocation.input))
        return args

    async def _call(self, definition: ActivityDefinition, args: list[Any]) -> Any:
        if definition.is_async:
            return await definition.fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: definition.fn(*args))

    def _failed(self, item: ActivityWorkItem, failure: FailureDetails) -> ActivityResult:
        event = TaskFailed(
            timestamp=self._clock.now(),
            task_scheduled_id=item.invocation.task_id,
            failure=failure,
        )
        return self._result(item, event)

    @staticmethod
    def _result(item: ActivityWorkItem, event: TaskCompleted | TaskFailed) -> ActivityResult:
        invocation = item.invocation
        message = OrchestrationMessage(invocation.instance_id, event, invocation.execution_id)
        return ActivityResult(item, message)


def _non_retriable(error: Exception) -> FailureDetails:
    """A failure that retrying cannot fix (no such activity, input of the wrong shape)."""
    return failure_from_exception(error).model_copy(update={"non_retriable": True})
