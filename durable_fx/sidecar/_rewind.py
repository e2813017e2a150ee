"""Rewind: a failed instance runs on from its last good state.

The Durable Task SDKs implement the history rewrite themselves: sent the
failed history with an ``ExecutionRewound`` new event, the worker answers
with a ``rewindOrchestration`` action holding the clean history (failed
results removed, a new execution id). The sidecar commits that history,
wakes the instance so the SDK replays it and schedules the failed work
again, and rewinds the failed sub-orchestrations it was waiting on (or
starts a purged one again), pointing them at the parent's new execution.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .._history import (
    ExecutionRewound,
    ExecutionStarted,
    HistoryEvent,
    OrchestratorStarted,
    SubOrchestrationInstanceCreated,
)
from .._replay.admission import HistoryState
from .._state import OrchestrationStatus
from ..storage._protocol import Store
from ..storage._records import EpisodeCommit, InstanceRecord, OrchestrationMessage
from ..worker._episode import plan_consume_only
from ..worker._rewind import rewound_record, start_again

__all__ = ["plan_rewind"]


async def plan_rewind(
    store: Store,
    *,
    instance: InstanceRecord,
    rewound_history: list[HistoryEvent] | None,
    consumed: Sequence[str],
    now: datetime,
) -> EpisodeCommit:
    """The commit that replaces a failed history with ``rewound_history``.

    Without a rewritten history (an SDK that does not rewind) the instance
    stays failed and the request is dropped.
    """
    started = next((e for e in rewound_history or () if isinstance(e, ExecutionStarted)), None)
    if rewound_history is None or started is None:
        return plan_consume_only(instance=instance, consumed=consumed)
    execution_id = started.execution_id
    rewound_history = _marked(rewound_history, instance.execution_id)
    reason = next(
        (e.reason for e in reversed(rewound_history) if isinstance(e, ExecutionRewound)), None
    )
    # The wake-up replays the clean history; its OrchestratorStarted is not recorded.
    wake_up = OrchestrationMessage(
        instance.instance_id, OrchestratorStarted(timestamp=now), execution_id
    )
    children = await _rewind_children(store, rewound_history, started, reason, now)
    return EpisodeCommit(
        instance=rewound_record(instance, execution_id, now),
        new_history=rewound_history,
        consumed=list(consumed),
        messages=[wake_up, *children],
        reset_history=True,
    )


def _marked(history: list[HistoryEvent], previous: str) -> list[HistoryEvent]:
    """``history`` whose last rewind names the execution it replaced (``previous``)."""
    for index in range(len(history) - 1, -1, -1):
        event = history[index]
        if isinstance(event, ExecutionRewound):
            marked = event.model_copy(update={"previous_execution_id": previous})
            return [*history[:index], marked, *history[index + 1 :]]
    return history


async def _rewind_children(
    store: Store,
    history: Sequence[HistoryEvent],
    started: ExecutionStarted,
    reason: str | None,
    now: datetime,
) -> list[OrchestrationMessage]:
    """Rewind (or start again, if purged) the failed sub-orchestrations still awaited."""
    awaited = HistoryState.of(history).children
    created = {
        e.event_id: e
        for e in history
        if isinstance(e, SubOrchestrationInstanceCreated) and e.event_id in awaited
    }
    messages = []
    for event in created.values():
        child = await store.get_instance(event.instance_id)
        if child is None:
            messages.append(
                OrchestrationMessage(event.instance_id, start_again(event, started, now))
            )
        elif child.status is OrchestrationStatus.FAILED:
            rewound = ExecutionRewound(
                timestamp=now, reason=reason, parent_execution_id=started.execution_id
            )
            messages.append(OrchestrationMessage(event.instance_id, rewound))
    return messages
