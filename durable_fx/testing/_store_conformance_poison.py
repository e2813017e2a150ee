"""Store checks for the poison list: listing, requeueing and deleting poisoned messages."""

from __future__ import annotations

from datetime import timedelta

from .._history import EventRaised, TaskCompleted
from ..storage import PoisonedMessage
from ._store_harness import StoreCheck, StoreFactory, StoreHarness, fresh_store

__all__ = ["POISON_CHECKS"]

_MAX_ROUNDS = 50
"""Deliveries after which a store that never poisons fails these checks."""


async def _poison_event(h: StoreHarness, instance_id: str, name: str, key: str) -> PoisonedMessage:
    """Start ``instance_id``, send it event ``name``, abandon its episodes until it is poisoned."""
    await h.start(instance_id)
    await h.run_episode(instance_id)
    await h.store.enqueue(h.event(instance_id, name, input='"data"', key=key))
    for _ in range(_MAX_ROUNDS):
        items = await h.lock()
        if instance_id not in items:
            break
        await h.release(*items.values())
    else:
        raise AssertionError(f"a message abandoned {_MAX_ROUNDS} times was never poisoned")
    return await _only_poisoned(h, instance_id)


async def _poison_work(h: StoreHarness, instance_id: str, task_id: int) -> PoisonedMessage:
    """Schedule one activity for ``instance_id`` and abandon it until it is poisoned."""
    await h.schedule(instance_id, task_id)
    for _ in range(_MAX_ROUNDS):
        items = await h.lock_activities()
        if not items:
            break
        for item in items:
            await h.store.abandon_activity(item, reason="it crashed", retry_after=timedelta(0))
    else:
        raise AssertionError(f"a work item abandoned {_MAX_ROUNDS} times was never poisoned")
    return await _only_poisoned(h, instance_id)


async def _only_poisoned(h: StoreHarness, instance_id: str) -> PoisonedMessage:
    listed = await h.store.poisoned_messages(instance_id=instance_id)
    assert len(listed) == 1, f"expected one poisoned message of {instance_id!r}: {listed}"
    return listed[0]


async def check_poisoned_messages_listed_with_ids(factory: StoreFactory) -> None:
    """Each poisoned message has a stable poison id of its own; the list filters by instance."""
    async with fresh_store(factory) as h:
        message = await _poison_event(h, "a", "ping", "k1")
        work = await _poison_work(h, "b", 1)
        assert message.poison_id and work.poison_id, f"missing poison ids: {message}, {work}"
        assert message.poison_id != work.poison_id, "two poisoned messages share an id"
        listed = await h.store.poisoned_messages()
        assert [p.poison_id for p in listed] == [message.poison_id, work.poison_id], listed
        again = await h.store.poisoned_messages()
        assert again == listed, "listing twice gave different ids or records"
        assert (message.queue, work.queue) == ("orchestrations", "activities")
        assert await h.store.poisoned_messages(instance_id="nobody") == []


async def check_requeued_inbox_message_runs_once(factory: StoreFactory) -> None:
    """A requeued inbox message makes its instance runnable again and is applied once."""
    async with fresh_store(factory) as h:
        poisoned = await _poison_event(h, "a", "ping", "k1")
        assert "a" not in await h.lock(), "a poisoned message still made its instance runnable"
        assert await h.store.requeue_poisoned([poisoned.poison_id]) == 1
        assert await h.store.poisoned_messages() == [], "a requeued message is still listed"
        item = await h.lock_one("a")
        events = [m.event for m in item.messages]
        assert [m.dequeue_count for m in item.messages] == [1], "the delivery count was not reset"
        assert len(events) == 1 and isinstance(events[0], EventRaised), events
        assert (events[0].name, events[0].input) == ("ping", '"data"'), events[0]
        await h.commit(item)
        assert await h.store.requeue_poisoned([poisoned.poison_id]) == 0, "requeued twice"
        assert await h.inbox("a") == [], "a requeued message came back after its episode"

        # Under its original key: a copy pending meanwhile is not doubled.
        again = await _poison_event(h, "c", "ping", "k2")
        await h.store.enqueue(h.event("c", "ping", input='"data"', key="k2"))
        assert await h.store.requeue_poisoned([again.poison_id]) == 1
        assert len(await h.inbox("c")) == 1, "a requeued message was doubled by its key"


async def check_requeued_work_item_runs_again(factory: StoreFactory) -> None:
    """A requeued work item can be locked again, its delivery count reset, and completes once."""
    async with fresh_store(factory) as h:
        poisoned = await _poison_work(h, "a", 7)
        assert await h.lock_activities() == [], "a poisoned work item is still handed out"
        assert await h.store.requeue_poisoned([poisoned.poison_id]) == 1
        assert await h.store.poisoned_messages() == [], "a requeued work item is still listed"
        (item,) = await h.lock_activities()
        assert item.invocation == h.invocation("a", 7), item.invocation
        assert item.dequeue_count == 1, f"the delivery count was not reset: {item.dequeue_count}"
        await h.complete((item, '"done"'))
        assert await h.lock_activities() == [], "a completed requeued item came back"
        events = [m.event for m in await h.inbox("a")]
        results = [(e.task_scheduled_id, e.result) for e in events if isinstance(e, TaskCompleted)]
        assert results == [(7, '"done"')], f"results in the inbox: {events}"


async def check_deleted_poisoned_messages_are_gone(factory: StoreFactory) -> None:
    """Deleted poisoned messages leave for good, ids are never reused, unknown ids are ignored."""
    async with fresh_store(factory) as h:
        unknown = ["no-such-id", "12345678", "p0"]
        assert await h.store.requeue_poisoned(unknown) == 0
        assert await h.store.delete_poisoned(unknown) == 0
        assert await h.store.delete_poisoned([]) == 0
        first = await _poison_event(h, "a", "ping", "k1")
        second = await _poison_work(h, "b", 1)
        deleted = await h.store.delete_poisoned([first.poison_id, *unknown, first.poison_id])
        assert deleted == 1, f"deleted {deleted}, expected 1"
        listed = await h.store.poisoned_messages()
        assert [p.poison_id for p in listed] == [second.poison_id], listed
        assert await h.store.requeue_poisoned([first.poison_id]) == 0, "a deleted message came back"
        assert await h.store.delete_poisoned([first.poison_id]) == 0
        assert "a" not in await h.lock(), "a deleted message still ran"
        third = await _poison_event(h, "c", "ping", "k3")
        assert third.poison_id not in (first.poison_id, second.poison_id), "a poison id was reused"


async def check_requeue_for_a_purged_instance_keeps_it_listed(factory: StoreFactory) -> None:
    """A poisoned message whose instance is gone is not requeued; it stays listed to delete."""
    async with fresh_store(factory) as h:
        message = await _poison_event(h, "a", "ping", "k1")
        work = await _poison_work(h, "b", 1)
        for instance_id in ("a", "b"):
            assert await h.store.purge_instance(instance_id)
        ids = [message.poison_id, work.poison_id]
        assert await h.store.requeue_poisoned(ids) == 0, "requeued to an instance that is gone"
        assert [p.poison_id for p in await h.store.poisoned_messages()] == ids
        assert await h.store.get_instance("a") is None, "a requeue re-created a purged instance"
        assert await h.lock_activities() == [], "a requeue scheduled work for a purged instance"
        assert await h.store.delete_poisoned(ids) == 2


POISON_CHECKS: list[StoreCheck] = [
    check_poisoned_messages_listed_with_ids,
    check_requeued_inbox_message_runs_once,
    check_requeued_work_item_runs_again,
    check_deleted_poisoned_messages_are_gone,
    check_requeue_for_a_purged_instance_keeps_it_listed,
]
