"""Rewind a failed instance: it runs on from its last good state, as a new execution.

The history keeps every successful result and loses its failure (see
``durable_fx._replay.rewind``); the work history leaves open is sent again:
activities as work items, timers as delayed messages, and each awaited
sub-orchestration according to where it stands (a failed one is rewound in
turn, a finished one's result is delivered again, a purged one starts
again). A wake-up lets the code run on even when nothing is open, e.g. after
a deploy fixed the exception that failed it.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

from .._errors import NonDeterminismError, UnknownNameError
from .._history import (
    ExecutionCompleted,
    ExecutionRewound,
    ExecutionStarted,
    HistoryEvent,
    OrchestratorStarted,
    ParentInstance,
    SubOrchestrationInstanceCompleted,
    SubOrchestrationInstanceCreated,
    SubOrchestrationInstanceFailed,
)
from .._registry import Registry
from .._replay.executor import OrchestrationExecutor
from .._replay.rewind import open_work, rewound_history
from .._state import OrchestrationStatus
from .._tracing import child_trace_context
from ..storage._protocol import Store
from ..storage._records import (
    ActivityInvocation,
    EpisodeCommit,
    InstanceRecord,
    OrchestrationMessage,
)
from ._episode import terminated_failure, timer_message

__all__ = ["plan_rewind", "rewound_record", "start_again"]

log = logging.getLogger("durable_fx.worker")


async def plan_rewind(
    store: Store,
    registry: Registry,
    *,
    instance: InstanceRecord,
    rewound: ExecutionRewound,
    consumed: Sequence[str],
    now: datetime,
) -> EpisodeCommit | None:
    """The commit that rewinds ``instance``; ``None`` unless its history ended failed.

    (A rewound parent may ask a child that was rewound already: nothing to do.)
    """
    history = await store.load_history(instance.instance_id)
    started = next((e for e in history if isinstance(e, ExecutionStarted)), None)
    ended = next((e for e in reversed(history) if isinstance(e, ExecutionCompleted)), None)
    if started is None or ended is None or ended.status != "FAILED":
        return None
    failures = _failures_raised(registry, started, history)
    execution_id = uuid.uuid4().hex
    clean = rewound_history(history, failures, rewound, now, execution_id)
    started = next(e for e in clean if isinstance(e, ExecutionStarted))
    work = open_work(clean)
    iid = instance.instance_id
    activities = [
        ActivityInvocation(
            iid,
            execution_id,
            e.event_id,
            e.name,
            e.input,
            e.attempt,
            e.heartbeat_timeout,
            e.heartbeat_details,
            e.trace_context or child_trace_context(started),
        )
        for e in work.activities
    ]
    messages = [timer_message(iid, execution_id, e.event_id, e.fire_at) for e in work.timers]
    for child in work.children:
        message = await _child_message(store, child, started, rewound.reason, now)
        if message is not None:
            messages.append(message)
    messages.append(OrchestrationMessage(iid, OrchestratorStarted(timestamp=now), execution_id))
    return EpisodeCommit(
        instance=rewound_record(instance, execution_id, now),
        new_history=clean,
        consumed=list(consumed),
        activities=activities,
        messages=messages,
        reset_history=True,
    )


def rewound_record(instance: InstanceRecord, execution_id: str, now: datetime) -> InstanceRecord:
    """``instance`` running again as the rewound execution ``execution_id``."""
    return dataclasses.replace(
        instance,
        execution_id=execution_id,
        status=OrchestrationStatus.RUNNING,
        output=None,
        failure=None,
        updated_at=now,
    )


def _failures_raised(
    registry: Registry, started: ExecutionStarted, history: Sequence[HistoryEvent]
) -> frozenset[int] | None:
    """The failed results the code saw, by replaying it; ``None`` if it cannot replay."""
    definition = registry.find_orchestrator(started.name)
    if definition is None:
        return None
    executor = OrchestrationExecutor(definition, started, registry=registry)
    try:
        executor.replay(history)
    except (NonDeterminismError, UnknownNameError) as error:
        log.warning("rewinding %s without replaying it: %s", started.instance_id, error)
        return None
    return executor.failures_raised


async def _child_message(
    store: Store,
    child: SubOrchestrationInstanceCreated,
    parent: ExecutionStarted,
    reason: str | None,
    now: datetime,
) -> OrchestrationMessage | None:
    """What brings an awaited sub-orchestration's result back; ``None`` if it will come."""
    record = await store.get_instance(child.instance_id)
    task_id = child.event_id
    if record is None:  # purged: run it again
        return OrchestrationMessage(child.instance_id, start_again(child, parent, now))
    match record.status:
        case OrchestrationStatus.FAILED:
            rewind = ExecutionRewound(
                timestamp=now, reason=reason, parent_execution_id=parent.execution_id
            )
            return OrchestrationMessage(child.instance_id, rewind)
        case OrchestrationStatus.COMPLETED:
            # Its result reached the parent while the parent was failed, and was dropped.
            done = SubOrchestrationInstanceCompleted(
                timestamp=now, task_scheduled_id=task_id, result=record.output
            )
            return OrchestrationMessage(parent.instance_id, done, parent.execution_id)
        case OrchestrationStatus.TERMINATED:
            failure = terminated_failure(child.instance_id)
            failed = SubOrchestrationInstanceFailed(
                timestamp=now, task_scheduled_id=task_id, failure=failure
            )
            return OrchestrationMessage(parent.instance_id, failed, parent.execution_id)
        case _:
            return None  # still running: its answer to the replaced execution counts


def start_again(
    child: SubOrchestrationInstanceCreated, parent: ExecutionStarted, now: datetime
) -> ExecutionStarted:
    """The start of a purged sub-orchestration, anew, reporting to ``parent``."""
    return ExecutionStarted(
        timestamp=now,
        name=child.name,
        instance_id=child.instance_id,
        execution_id=uuid.uuid4().hex,
        input=child.input,
        parent=ParentInstance(
            instance_id=parent.instance_id,
            execution_id=parent.execution_id,
            name=parent.name,
            task_scheduled_id=child.event_id,
        ),
    )
