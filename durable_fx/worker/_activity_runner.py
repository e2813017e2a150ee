"""Runs one activity invocation and turns its outcome into a result message.

Whatever the activity does (returns, raises, returns something that is not
JSON, is not registered at all, stops heartbeating) the outcome is a
``TaskCompleted`` or ``TaskFailed`` for the orchestration: an activity never
takes the worker down. While it runs, the caller's ``renew`` keeps its lease
and saves its latest heartbeat details.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._clock import Clock
from .._errors import SerializationError, UnknownNameError
from .._heartbeat import Heartbeats
from .._history import FailureDetails, TaskCompleted, TaskFailed
from .._log_context import running
from .._metrics import record_activity
from .._registry import ActivityContext, ActivityDefinition, Registry
from .._replay.executor import failure_from_exception
from .._serialization import encode
from .._tracing import parent_of, span_in
from ..storage._records import ActivityResult, ActivityWorkItem, OrchestrationMessage

__all__ = ["ActivityRunner"]

log = logging.getLogger("durable_fx.activity")


class ActivityRunner:
    """Executes activities of one registry; sync ones in a thread pool."""

    def __init__(self, registry: Registry, clock: Clock, threads: Executor) -> None:
        self._registry = registry
        self._clock = clock
        self._threads = threads

    async def run(
        self, item: ActivityWorkItem, renew: Renew | None = None, every: float = 20.0
    ) -> ActivityResult:
        """Run the activity and build the message that reports its outcome.

        Every ``every`` seconds while it runs, ``renew`` is awaited with the
        heartbeat details not saved yet (``None`` if none); a failed renewal
        is logged, not fatal.
        """
        invocation = item.invocation
        beats = Heartbeats(invocation.heartbeat_details, invocation.heartbeat_timeout)
        definition = self._registry.find_activity(invocation.name)
        if definition is None:
            error = UnknownNameError("activity", invocation.name, self._registry.activity_names)
            return self._failed(item, _non_retriable(error))
        try:
            args = self._arguments(definition, item, beats)
        except SerializationError as error:
            return self._failed(item, _non_retriable(error))
        with (
            span_in(
                f"activity:{invocation.name}",
                parent_of(invocation.trace_context),
                kind=SpanKind.SERVER,
                attributes=_span_attributes(item),
            ) as span,
            running(
                instance_id=invocation.instance_id,
                activity=invocation.name,
                execution_id=invocation.execution_id,
            ),
        ):
            began = time.monotonic()
            result = await self._run_traced(item, definition, args, beats, renew, every)
            outcome = _record_outcome(span, result)
        record_activity(invocation.name, time.monotonic() - began, outcome)
        return result

    async def _run_traced(
        self,
        item: ActivityWorkItem,
        definition: ActivityDefinition,
        args: list[Any],
        beats: Heartbeats,
        renew: Renew | None,
        every: float,
    ) -> ActivityResult:
        invocation = item.invocation
        # Its own task, so the worker can stop waiting for it (a missed heartbeat).
        call = asyncio.ensure_future(self._outcome(definition, args))
        try:
            alive = await _watch(call, beats, renew, every, invocation.name)
        except asyncio.CancelledError:
            call.cancel()  # the worker is stopping: it releases the work item
            raise
        if not alive:
            call.cancel()  # an async activity stops; a thread cannot be stopped, its result is lost
            call.add_done_callback(_consume)
            return self._failed(item, _missed_heartbeat(invocation.name, beats), beats)
        value, raised = call.result()
        if raised is not None:
            log.info(
                "activity %s (%s #%d) failed: %s: %s",
                invocation.name,
                invocation.instance_id,
                invocation.task_id,
                type(raised).__name__,
                raised,
            )
            return self._failed(item, failure_from_exception(raised), beats)
        try:
            payload = encode(value)
        except SerializationError as error:
            return self._failed(item, _non_retriable(error))
        event = TaskCompleted(
            timestamp=self._clock.now(), task_scheduled_id=invocation.task_id, result=payload
        )
        return self._result(item, event)

    def _arguments(
        self, definition: ActivityDefinition, item: ActivityWorkItem, beats: Heartbeats
    ) -> list[Any]:
        invocation = item.invocation
        args: list[Any] = []
        for role in definition.parameters:
            if role == "context":
                details = invocation.heartbeat_details
                args.append(
                    ActivityContext(
                        instance_id=invocation.instance_id,
                        execution_id=invocation.execution_id,
                        task_id=invocation.task_id,
                        name=invocation.name,
                        attempt=invocation.attempt,
                        delivery_count=item.dequeue_count,
                        heartbeat_details=None if details is None else json.loads(details),
                        _beats=beats,
                    )
                )
            else:
                args.append(definition.input_codec.decode(invocation.input))
        return args

    async def _outcome(
        self, definition: ActivityDefinition, args: list[Any]
    ) -> tuple[Any, BaseException | None]:
        """The activity's value, or what it raised.

        Returned, not raised: a task that raises SystemExit has asyncio re-raise
        it in the event loop, which would stop the worker.
        """
        try:
            return await self._call(definition, args), None
        except asyncio.CancelledError as error:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # cancelled by the runner (the worker stops, the heartbeat was missed)
            return None, error  # the activity raised CancelledError itself: its failure
        # SystemExit too: sys.exit() in an activity must fail its task, not stop the worker.
        except (Exception, SystemExit) as error:
            return None, error

    async def _call(self, definition: ActivityDefinition, args: list[Any]) -> Any:
        if definition.is_async:
            return await definition.fn(*args)
        loop = asyncio.get_running_loop()
        # The pool's thread gets this context: the activity's span is current in it.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._threads, lambda: context.run(definition.fn, *args))

    def _failed(
        self, item: ActivityWorkItem, failure: FailureDetails, beats: Heartbeats | None = None
    ) -> ActivityResult:
        event = TaskFailed(
            timestamp=self._clock.now(),
            task_scheduled_id=item.invocation.task_id,
            failure=failure,
            # The retry resumes from the progress this attempt reported.
            heartbeat_details=None if beats is None else beats.details,
        )
        return self._result(item, event)

    @staticmethod
    def _result(item: ActivityWorkItem, event: TaskCompleted | TaskFailed) -> ActivityResult:
        invocation = item.invocation
        message = OrchestrationMessage(invocation.instance_id, event, invocation.execution_id)
        return ActivityResult(item, message)


_NEVER = float("inf")

Renew = Callable[[str | None], Awaitable[object]]
"""Keeps the item's lease, saving the heartbeat details given (``None``: no new ones)."""


async def _watch(
    call: asyncio.Future[Any], beats: Heartbeats, renew: Renew | None, every: float, name: str
) -> bool:
    """Wait for ``call``, renewing meanwhile; False once it misses its heartbeat."""
    next_renewal = time.monotonic() + every
    while True:
        wait = beats.overdue()
        if renew is not None:
            wait = min(wait, next_renewal - time.monotonic())
        done, _ = await asyncio.wait({call}, timeout=None if wait == _NEVER else max(0.0, wait))
        if done:
            return True
        if beats.overdue() <= 0:
            return False
        if renew is not None and time.monotonic() >= next_renewal:
            next_renewal = time.monotonic() + every
            try:
                await renew(beats.unsaved())
            except Exception:
                log.warning("could not renew the lease of activity %s", name)


def _missed_heartbeat(name: str, beats: Heartbeats) -> FailureDetails:
    return FailureDetails(
        error_type="ActivityTimeoutError",
        message=f"{name} sent no heartbeat for {timedelta(seconds=beats.timeout or 0)}",
    )


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of an abandoned call, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


def _span_attributes(item: ActivityWorkItem) -> dict[str, Any]:
    invocation = item.invocation
    attributes: dict[str, Any] = {
        "durabletask.type": "activity",
        "durabletask.task.name": invocation.name,
        "durabletask.task.instance_id": invocation.instance_id,
        "durabletask.task.task_id": invocation.task_id,
        "durable_fx.activity.attempt": invocation.attempt,
    }
    if item.dequeue_count > 1:  # a redelivery (its lease ran out); none says the first
        attributes["durable_fx.activity.delivery"] = item.dequeue_count
    return attributes


def _record_outcome(span: Span, result: ActivityResult) -> str:
    """Put the outcome on the span; returns it (Succeeded or Failed)."""
    event = result.message.event
    if isinstance(event, TaskFailed):
        span.set_attribute("durabletask.task.result", "Failed")
        span.set_status(Status(StatusCode.ERROR, str(event.failure)))
        span.add_event(
            "exception",
            {
                "exception.type": event.failure.error_type,
                "exception.message": event.failure.message,
                "exception.stacktrace": event.failure.stack_trace or "",
            },
        )
        return "Failed"
    span.set_attribute("durabletask.task.result", "Succeeded")
    return "Succeeded"


def _non_retriable(error: Exception) -> FailureDetails:
    """A failure that retrying cannot fix (no such activity, input of the wrong shape)."""
    return failure_from_exception(error).model_copy(update={"non_retriable": True})
