"""Shorthands the store checks share: a fresh store, messages, episodes.

They drive a store only through the Store protocol, the way the worker does,
so a check reads as the scenario it proves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias, TypeVar

from .._clock import Clock
from .._history import (
    EventRaised,
    ExecutionStarted,
    HistoryEvent,
    ParentInstance,
    TaskCompleted,
)
from .._state import OrchestrationStatus
from ..storage import (
    ActivityInvocation,
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InboxMessage,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Store,
)
from ._clock import ManualClock

__all__ = [
    "LEASE",
    "PAST_LEASE",
    "StoreCheck",
    "StoreFactory",
    "StoreHarness",
    "expect_raises",
    "fresh_store",
    "task_ids",
]

E = TypeVar("E", bound=BaseException)

StoreFactory: TypeAlias = Callable[[Clock], Store]
"""Builds a new, empty store that reads time from the given clock."""

StoreCheck: TypeAlias = Callable[[StoreFactory], Awaitable[None]]
"""One conformance check: builds its own store(s) from the factory."""

LEASE = timedelta(seconds=30)
PAST_LEASE = LEASE + timedelta(seconds=1)
"""How far to advance the clock so that a ``LEASE`` taken now has expired."""


@asynccontextmanager
async def fresh_store(factory: StoreFactory) -> AsyncIterator[StoreHarness]:
    """A new store on a ``ManualClock``, closed on exit."""
    clock = ManualClock()
    store = factory(clock)
    try:
        yield StoreHarness(store, clock)
    finally:
        await store.close()


@dataclass
class StoreHarness:
    """A store under test, its clock, and the steps a worker would take."""

    store: Store
    clock: ManualClock

    # -- messages ---------------------------------------------------------------

    def started(
        self,
        instance_id: str,
        *,
        name: str = "wf",
        execution_id: str = "exec-1",
        input: str | None = None,
        parent: ParentInstance | None = None,
        at: datetime | None = None,
    ) -> ExecutionStarted:
        return ExecutionStarted(
            timestamp=at or self.clock.now(),
            name=name,
            instance_id=instance_id,
            execution_id=execution_id,
            input=input,
            parent=parent,
        )

    def start_message(
        self, instance_id: str, *, visible_at: datetime | None = None, **fields: Any
    ) -> OrchestrationMessage:
        event = self.started(instance_id, **fields)
        return OrchestrationMessage(instance_id, event, visible_at=visible_at)

    def event(
        self,
        instance_id: str,
        name: str = "ping",
        *,
        input: str | None = None,
        key: str = "",
        visible_at: datetime | None = None,
    ) -> OrchestrationMessage:
        raised = EventRaised(timestamp=self.clock.now(), name=name, input=input)
        return OrchestrationMessage(instance_id, raised, visible_at=visible_at, key=key)

    def result(
        self, invocation: ActivityInvocation, value: str | None = None
    ) -> OrchestrationMessage:
        completed = TaskCompleted(
            timestamp=self.clock.now(), task_scheduled_id=invocation.task_id, result=value
        )
        return OrchestrationMessage(
            invocation.instance_id, completed, execution_id=invocation.execution_id
        )

    def invocation(
        self, instance_id: str, task_id: int, *, execution_id: str = "exec-1"
    ) -> ActivityInvocation:
        return ActivityInvocation(
            instance_id, execution_id, task_id, name=f"act-{task_id}", input=f'{{"n": {task_id}}}'
        )

    # -- orchestration steps ----------------------------------------------------

    async def start(
        self,
        instance_id: str,
        *,
        visible_at: datetime | None = None,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
        **fields: Any,
    ) -> ExecutionStarted:
        message = self.start_message(instance_id, visible_at=visible_at, **fields)
        await self.store.create_instance(message, replaceable=replaceable)
        assert isinstance(message.event, ExecutionStarted)
        return message.event

    async def lock(
        self, *, owner: str = "worker-1", limit: int = 100, lease: timedelta = LEASE
    ) -> dict[str, OrchestrationWorkItem]:
        """Lock what the store hands out, by instance id."""
        batch = await self.store.lock_orchestrations(owner=owner, limit=limit, lease=lease)
        items = {item.instance.instance_id: item for item in batch.items}
        handed_out = [item.instance.instance_id for item in batch.items]
        assert len(items) == len(handed_out), f"one lock handed out an instance twice: {handed_out}"
        return items

    async def lock_one(
        self, instance_id: str, *, owner: str = "worker-1", lease: timedelta = LEASE
    ) -> OrchestrationWorkItem:
        """Lock ``instance_id``; other instances handed out with it are released at once."""
        items = await self.lock(owner=owner, lease=lease)
        assert instance_id in items, f"expected {instance_id!r} to be locked, got {sorted(items)}"
        target = items.pop(instance_id)
        await self.release(*items.values())
        return target

    async def release(self, *items: OrchestrationWorkItem) -> None:
        """Abandon work items so that their messages are visible again right away."""
        for item in items:
            await self.store.abandon_orchestration(
                item, reason="released", retry_after=timedelta(0)
            )

    async def commit(
        self,
        item: OrchestrationWorkItem,
        *,
        status: OrchestrationStatus = OrchestrationStatus.RUNNING,
        history: Sequence[HistoryEvent] | None = None,
        consumed: Sequence[str] | None = None,
        activities: Sequence[ActivityInvocation] = (),
        messages: Sequence[OrchestrationMessage] = (),
        reset_history: bool = False,
        cancelled: Sequence[str] = (),
        **fields: Any,
    ) -> str:
        """Commit an episode; by default it consumes and records every message it got."""
        record = dataclasses.replace(
            item.instance, status=status, updated_at=self.clock.now(), **fields
        )
        commit = EpisodeCommit(
            instance=record,
            new_history=[m.event for m in item.messages] if history is None else history,
            consumed=[m.message_id for m in item.messages] if consumed is None else consumed,
            activities=activities,
            messages=messages,
            reset_history=reset_history,
            cancelled=cancelled,
        )
        return await self.store.commit_episode(item, commit)

    async def run_episode(self, instance_id: str, **commit_fields: Any) -> str:
        """Lock ``instance_id`` and commit one episode for it."""
        return await self.commit(await self.lock_one(instance_id), **commit_fields)

    async def inbox(self, instance_id: str) -> list[InboxMessage]:
        """Visible messages of ``instance_id`` (it must be unlocked); counts one delivery."""
        items = await self.lock(owner="inspector")
        await self.release(*items.values())
        return list(items[instance_id].messages) if instance_id in items else []

    # -- activity steps ---------------------------------------------------------

    async def schedule(self, instance_id: str, *task_ids: int) -> list[ActivityInvocation]:
        """Start ``instance_id`` and run an episode that schedules these activities."""
        invocations = [self.invocation(instance_id, task_id) for task_id in task_ids]
        await self.start(instance_id)
        await self.run_episode(instance_id, activities=invocations)
        return invocations

    async def lock_activities(
        self, *, owner: str = "worker-1", limit: int = 100, lease: timedelta = LEASE
    ) -> list[ActivityWorkItem]:
        batch = await self.store.lock_activities(owner=owner, limit=limit, lease=lease)
        return batch.items

    async def complete(self, *pairs: tuple[ActivityWorkItem, str | None]) -> None:
        """Complete work items with these results, in one call."""
        results = [
            ActivityResult(item, self.result(item.invocation, value)) for item, value in pairs
        ]
        await self.store.complete_activities(results)


def task_ids(items: Sequence[ActivityWorkItem]) -> list[tuple[str, int]]:
    """(instance_id, task_id) of each work item, in order."""
    return [(i.invocation.instance_id, i.invocation.task_id) for i in items]


async def expect_raises(expected: type[E], action: Awaitable[object], what: str) -> E:
    """Await ``action`` and return the ``expected`` error it raises; fail if it raises none."""
    try:
        await action
    except expected as error:
        return error
    raise AssertionError(f"{what} did not raise {expected.__name__}")
