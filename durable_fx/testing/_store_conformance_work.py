"""Store checks for activity work items and for poisoning what keeps failing."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from .._history import TaskCompleted
from ..storage import ActivityResult
from ._store_harness import (
    LEASE,
    PAST_LEASE,
    StoreCheck,
    StoreFactory,
    StoreHarness,
    fresh_store,
    task_ids,
)

__all__ = ["WORK_CHECKS"]

_MAX_ROUNDS = 50
"""Deliveries after which a store that never poisons fails the poison checks."""


async def _results(h: StoreHarness, instance_id: str) -> list[tuple[int, str | None]]:
    """(task id, result) of the TaskCompleted messages in an instance's inbox."""
    events = [m.event for m in await h.inbox(instance_id)]
    return [(e.task_scheduled_id, e.result) for e in events if isinstance(e, TaskCompleted)]


# -- activities ---------------------------------------------------------------


async def check_activity_lock_lease_and_expiry(factory: StoreFactory) -> None:
    """A work item goes to one worker at a time, and to another once its lease expires."""
    async with fresh_store(factory) as h:
        (invocation,) = await h.schedule("a", 1)
        first = await h.lock_activities(owner="w1")
        assert [i.invocation for i in first] == [invocation], f"locked: {first}"
        assert first[0].dequeue_count == 1
        assert await h.lock_activities(owner="w2") == [], "a leased work item was handed out twice"
        h.clock.advance(LEASE - timedelta(seconds=1))
        assert await h.lock_activities(owner="w2") == [], "a lease expired early"
        h.clock.advance(timedelta(seconds=2))
        second = await h.lock_activities(owner="w2")
        assert [i.invocation for i in second] == [invocation], "an expired lease was not retaken"
        assert second[0].dequeue_count == 2
        assert second[0].lock_token != first[0].lock_token, "lock tokens must be unique per lock"


async def check_completed_activity_delivers_result_once(factory: StoreFactory) -> None:
    """A completed work item's result lands in the inbox; the item never comes back."""
    async with fresh_store(factory) as h:
        (invocation,) = await h.schedule("a", 1)
        (item,) = await h.lock_activities()
        result = h.result(invocation, '{"ok": true}')
        await h.store.complete_activities([ActivityResult(item, result)])
        assert await h.lock_activities() == [], "a completed work item is still pending"
        h.clock.advance(timedelta(hours=1))
        assert await h.lock_activities() == [], "a completed work item came back"
        (message,) = (await h.lock_one("a")).messages
        assert message.event == result.event, message
        assert message.execution_id == invocation.execution_id


async def check_late_completion_after_lease_loss_is_dropped(factory: StoreFactory) -> None:
    """A result from a worker that lost its lease is dropped; the current holder's counts."""
    async with fresh_store(factory) as h:
        await h.schedule("a", 1)
        (lost,) = await h.lock_activities(owner="w1")
        h.clock.advance(PAST_LEASE)
        (held,) = await h.lock_activities(owner="w2")
        await h.complete((lost, '"late"'))
        assert await _results(h, "a") == [], "a result from a lost lease was delivered"
        await h.complete((held, '"fresh"'))
        assert await _results(h, "a") == [(1, '"fresh"')]
        await h.run_episode("a")  # consume the result
        await h.complete((lost, '"late"'))
        await h.complete((held, '"twice"'))
        assert await _results(h, "a") == [], "a second completion of one item was delivered"


async def check_complete_activities_in_batch(factory: StoreFactory) -> None:
    """One complete_activities call delivers every current result and drops only stale ones."""
    async with fresh_store(factory) as h:
        await h.schedule("a", 1, 2)
        await h.schedule("b", 3)
        held = await h.lock_activities(lease=timedelta(hours=1))
        assert sorted(task_ids(held)) == [("a", 1), ("a", 2), ("b", 3)]
        await h.store.enqueue(h.event("b"))
        await h.run_episode("b", activities=[h.invocation("b", 4)])
        (lost,) = await h.lock_activities(owner="w1", lease=timedelta(seconds=10))
        h.clock.advance(timedelta(seconds=11))
        (taken,) = await h.lock_activities(owner="w2")
        await h.complete(*[(i, f'"r{i.invocation.task_id}"') for i in held], (lost, '"stale"'))
        assert await _results(h, "a") == [(1, '"r1"'), (2, '"r2"')]
        assert await _results(h, "b") == [(3, '"r3"')]
        await h.complete((taken, '"r4"'))
        assert await _results(h, "b") == [(3, '"r3"'), (4, '"r4"')]


async def check_duplicate_activities_scheduled_once(factory: StoreFactory) -> None:
    """An activity already pending for (instance, execution, task) is not scheduled again."""
    async with fresh_store(factory) as h:
        invocation = h.invocation("a", 1)
        await h.start("a")
        await h.run_episode("a", activities=[invocation, invocation])
        await h.store.enqueue(h.event("a"))
        await h.run_episode("a", activities=[invocation])
        items = await h.lock_activities()
        assert [i.invocation for i in items] == [invocation], f"work items: {items}"


async def check_abandoned_activity_retries_after_delay(factory: StoreFactory) -> None:
    """An abandoned work item returns after retry_after; a stale abandon is ignored."""
    async with fresh_store(factory) as h:
        (invocation,) = await h.schedule("a", 1)
        (item,) = await h.lock_activities(owner="w1")
        await h.store.abandon_activity(item, reason="boom", retry_after=timedelta(seconds=10))
        batch = await h.store.lock_activities(owner="w2", limit=10, lease=LEASE)
        due = h.clock.now() + timedelta(seconds=10)
        assert (batch.items, batch.next_due) == ([], due), f"retry not delayed: {batch}"
        h.clock.advance(timedelta(seconds=9))
        assert await h.lock_activities(owner="w2") == [], "an abandoned item came back early"
        h.clock.advance(timedelta(seconds=1))
        (again,) = await h.lock_activities(owner="w2")
        assert (again.invocation, again.dequeue_count) == (invocation, 2)
        await h.store.abandon_activity(item, reason="late", retry_after=timedelta(0))
        assert await h.lock_activities(owner="w3") == [], "a stale abandon released the lease"


async def check_renewed_activity_lease_holds(factory: StoreFactory) -> None:
    """renew_activity_lease keeps a work item from other workers for the new lease."""
    async with fresh_store(factory) as h:
        await h.schedule("a", 1)
        (item,) = await h.lock_activities(owner="w1")
        h.clock.advance(timedelta(seconds=20))
        await h.store.renew_activity_lease(item, LEASE)
        h.clock.advance(timedelta(seconds=20))
        assert await h.lock_activities(owner="w2") == [], "a renewed lease expired early"
        h.clock.advance(timedelta(seconds=11))
        assert len(await h.lock_activities(owner="w2")) == 1, "a renewed lease never expired"


async def check_heartbeat_details_reach_the_next_delivery(factory: StoreFactory) -> None:
    """Details saved with a renewal come with the item when its lease expires (a crash)."""
    async with fresh_store(factory) as h:
        await h.start("a")
        scheduled = dataclasses.replace(
            h.invocation("a", 1), heartbeat_timeout=30.0, heartbeat_details='{"rows": 10}'
        )
        await h.run_episode("a", activities=[scheduled])
        (item,) = await h.lock_activities(owner="w1")
        assert item.invocation == scheduled, f"scheduled {scheduled}, locked {item.invocation}"
        await h.store.renew_activity_lease(item, LEASE, heartbeat='{"rows": 500}')
        await h.store.renew_activity_lease(item, LEASE)  # nothing new: the details stay
        h.clock.advance(PAST_LEASE)
        (again,) = await h.lock_activities(owner="w2")
        assert again.invocation.heartbeat_details == '{"rows": 500}', again.invocation
        assert again.invocation.heartbeat_timeout == 30.0, again.invocation


# -- poison -------------------------------------------------------------------


async def check_orchestration_messages_poisoned_after_max_deliveries(factory: StoreFactory) -> None:
    """A message that never gets a successful episode is poisoned and blocks nothing else."""
    async with fresh_store(factory) as h:
        for instance_id in ("bad", "good"):
            await h.start(instance_id)
        for item in (await h.lock()).values():
            await h.commit(item)
        await h.store.enqueue(h.event("bad", "crashes-the-worker"))
        deliveries = 0
        for tick in range(_MAX_ROUNDS):
            await h.store.enqueue(h.event("good", f"tick-{tick}"))
            items = await h.lock()
            assert "good" in items, f"a failing message blocked another instance (round {tick})"
            await h.commit(items.pop("good"))
            if "bad" not in items:
                break
            deliveries += 1
            assert [m.dequeue_count for m in items["bad"].messages] == [deliveries]
            h.clock.advance(PAST_LEASE)  # the worker died: no commit, no abandon
        else:
            raise AssertionError(f"a message delivered {_MAX_ROUNDS} times was never poisoned")

        (poisoned,) = await h.store.poisoned_messages()
        summary = (poisoned.queue, poisoned.instance_id, poisoned.dequeue_count)
        assert summary == ("orchestrations", "bad", deliveries), summary
        assert str(deliveries) in poisoned.reason, f"reason should say how often: {poisoned}"
        assert poisoned.body and poisoned.poisoned_at == h.clock.now(), poisoned
        await h.store.enqueue(h.event("bad", "after"))
        item = await h.lock_one("bad")
        assert [m.dequeue_count for m in item.messages] == [1], "the instance stayed blocked"


async def check_abandoned_orchestration_poisoned_with_reason(factory: StoreFactory) -> None:
    """An episode abandoned max_dequeue_count times poisons its messages with the reason."""
    async with fresh_store(factory) as h:
        await h.start("a")
        reason = "SerializationError: cannot decode the input"
        deliveries = 0
        while "a" in (items := await h.lock()):
            deliveries += 1
            assert deliveries < _MAX_ROUNDS, f"abandoned {_MAX_ROUNDS} times, never poisoned"
            await h.store.abandon_orchestration(items["a"], reason=reason, retry_after=timedelta(0))
        (poisoned,) = await h.store.poisoned_messages()
        summary = (poisoned.queue, poisoned.instance_id, poisoned.reason, poisoned.dequeue_count)
        assert summary == ("orchestrations", "a", reason, deliveries), summary
        assert await h.store.get_instance("a") is not None, "poisoning removed the instance"


async def check_activities_poisoned_after_max_deliveries(factory: StoreFactory) -> None:
    """A work item that never completes is poisoned, with the reason, and blocks nothing else."""
    async with fresh_store(factory) as h:
        await h.schedule("bad", 1)
        await h.start("good")
        deliveries = 0
        for tick in range(_MAX_ROUNDS):
            await h.store.enqueue(h.event("good", f"tick-{tick}"))
            await h.run_episode("good", activities=[h.invocation("good", tick)])
            items = await h.lock_activities()
            good = [i for i in items if i.invocation.instance_id == "good"]
            assert len(good) == 1, f"a failing work item blocked others (round {tick}): {items}"
            await h.complete((good[0], None))
            if len(items) == 1:
                break
            deliveries += 1
            assert [i.dequeue_count for i in items if i not in good] == [deliveries]
            h.clock.advance(PAST_LEASE)  # the worker died mid-activity
        else:
            raise AssertionError(f"a work item delivered {_MAX_ROUNDS} times was never poisoned")
        (poisoned,) = await h.store.poisoned_messages()
        summary = (poisoned.queue, poisoned.instance_id, poisoned.dequeue_count)
        assert summary == ("activities", "bad", deliveries), summary
        assert str(deliveries) in poisoned.reason, f"reason should say how often: {poisoned}"

        await h.schedule("abandoned", 1)
        for _ in range(_MAX_ROUNDS):
            items = [i for i in await h.lock_activities() if i.invocation.instance_id != "good"]
            if not items:
                break
            await h.store.abandon_activity(
                items[0], reason="TimeoutError", retry_after=timedelta(0)
            )
        poisoned_list = await h.store.poisoned_messages()
        assert len(poisoned_list) == 2, f"expected a second poisoned item: {poisoned_list}"
        last = poisoned_list[1]
        assert (last.queue, last.instance_id, last.reason) == (
            "activities",
            "abandoned",
            "TimeoutError",
        )


WORK_CHECKS: list[StoreCheck] = [
    check_activity_lock_lease_and_expiry,
    check_completed_activity_delivers_result_once,
    check_late_completion_after_lease_loss_is_dropped,
    check_complete_activities_in_batch,
    check_duplicate_activities_scheduled_once,
    check_abandoned_activity_retries_after_delay,
    check_renewed_activity_lease_holds,
    check_heartbeat_details_reach_the_next_delivery,
    check_orchestration_messages_poisoned_after_max_deliveries,
    check_abandoned_orchestration_poisoned_with_reason,
    check_activities_poisoned_after_max_deliveries,
]
