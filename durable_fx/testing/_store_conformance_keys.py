"""Store checks for id reuse (``create_instance(replaceable=)``) and remembered message keys.

A start refuses an existing instance unless its status is named replaceable;
``enqueue`` remembers every key it accepted until the instance is purged or
replaced, refuses new events to a finished instance and a rewind to any but
a failed one (which it sets RUNNING). Each rule holds
under concurrency: the check and the write are one step in the store.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from .._errors import InstanceExistsError, InvalidOperationError
from .._history import EventRaised, ExecutionRewound, TimerFired
from .._state import OrchestrationStatus
from ..storage import OrchestrationMessage
from ..storage._records import timer_key
from ._store_harness import StoreCheck, StoreFactory, StoreHarness, expect_raises, fresh_store

__all__ = ["KEY_CHECKS"]

_FINISHED = (
    OrchestrationStatus.COMPLETED,
    OrchestrationStatus.FAILED,
    OrchestrationStatus.TERMINATED,
)


async def _finish(h: StoreHarness, instance_id: str, status: OrchestrationStatus) -> None:
    """Start ``instance_id`` and run it to ``status`` in one episode."""
    await h.start(instance_id)
    await h.run_episode(instance_id, status=status)


async def _raised(h: StoreHarness, instance_id: str) -> list[str | None]:
    """Inputs of the EventRaised messages ``instance_id`` holds (pending, unlocked)."""
    return [m.event.input for m in await h.inbox(instance_id) if isinstance(m.event, EventRaised)]


async def check_create_refuses_finished_instance_by_default(factory: StoreFactory) -> None:
    """With no replaceable status, a finished instance is kept: InstanceExistsError, no change."""
    async with fresh_store(factory) as h:
        for status in _FINISHED:
            instance_id = f"kept-{status.value.lower()}"
            await _finish(h, instance_id, status)
            before = await h.store.get_instance(instance_id)
            history = await h.store.load_history(instance_id)
            error = await expect_raises(
                InstanceExistsError,
                h.start(instance_id, execution_id="exec-2"),
                f"re-creating a {status.value} instance with no replaceable status",
            )
            assert (error.instance_id, str(error.status)) == (instance_id, status.value), error
            assert await h.store.get_instance(instance_id) == before, "a refused create wrote"
            assert await h.store.load_history(instance_id) == history, "history changed"


async def check_create_replaces_only_named_statuses(factory: StoreFactory) -> None:
    """``replaceable`` names the finished statuses replaced; others, and running ones, stay."""
    failed_only = frozenset({OrchestrationStatus.FAILED})
    async with fresh_store(factory) as h:
        await _finish(h, "done", OrchestrationStatus.COMPLETED)
        await _finish(h, "broken", OrchestrationStatus.FAILED)
        await h.start("busy")
        everything = frozenset(OrchestrationStatus)
        await expect_raises(
            InstanceExistsError,
            h.start("done", execution_id="exec-2", replaceable=failed_only),
            "re-creating a COMPLETED instance when only FAILED is replaceable",
        )
        await expect_raises(
            InstanceExistsError,
            h.start("busy", execution_id="exec-2", replaceable=everything),
            "re-creating a PENDING instance (never replaceable)",
        )
        await h.start("broken", execution_id="exec-2", replaceable=failed_only)
        record = await h.store.get_instance("broken")
        assert record is not None
        assert (record.status, record.execution_id) == (OrchestrationStatus.PENDING, "exec-2")


async def check_concurrent_creates_of_one_id_start_it_once(factory: StoreFactory) -> None:
    """Of concurrent creates of one id, new or finished, exactly one succeeds."""
    finished = frozenset(_FINISHED)
    async with fresh_store(factory) as h:
        await _finish(h, "old", OrchestrationStatus.COMPLETED)
        for instance_id, replaceable in (("new", frozenset()), ("old", finished)):
            starts = [
                h.start(instance_id, execution_id=f"exec-{n}", replaceable=replaceable)
                for n in range(8)
            ]
            outcomes = await asyncio.gather(*starts, return_exceptions=True)
            won = [o for o in outcomes if not isinstance(o, BaseException)]
            lost = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(won) == 1, f"{len(won)} of 8 concurrent creates of {instance_id!r} won"
            assert all(isinstance(e, InstanceExistsError) for e in lost), lost
            record = await h.store.get_instance(instance_id)
            assert record is not None and record.execution_id == won[0].execution_id, record
            inbox = await h.inbox(instance_id)
            assert [m.event for m in inbox] == won, f"inbox of {instance_id!r}: {inbox}"


async def check_enqueue_remembers_keys_after_consumption(factory: StoreFactory) -> None:
    """A key enqueued once is refused (False) after its message was consumed, keyless never."""
    async with fresh_store(factory) as h:
        await h.start("a")
        assert await h.store.enqueue(h.event("a", "go", input="1", key="event:k")) is True
        assert await h.store.enqueue(h.event("a", "go", input="2", key="event:k")) is False
        await h.run_episode("a")  # consumes the start and the first copy
        again = await h.store.enqueue(h.event("a", "go", input="3", key="event:k"))
        assert again is False, "a consumed key was accepted again"
        assert await h.store.enqueue(h.event("a", "go", input="4")) is True
        assert await h.store.enqueue(h.event("a", "go", input="4")) is True
        assert await _raised(h, "a") == ["4", "4"], "keyless events must all arrive"


async def check_enqueue_to_finished_instance(factory: StoreFactory) -> None:
    """A finished instance refuses a new key (InvalidOperationError); a used one answers False."""
    async with fresh_store(factory) as h:
        for status in _FINISHED:
            instance_id = f"over-{status.value.lower()}"
            await h.start(instance_id)
            await h.store.enqueue(h.event(instance_id, "go", key="event:seen"))
            # A fresh history (continue-as-new) is the same instance: keys stay.
            await h.run_episode(instance_id, status=status, reset_history=True)
            duplicate = await h.store.enqueue(h.event(instance_id, "go", key="event:seen"))
            assert duplicate is False, f"a used key on a {status.value} instance was accepted"
            for key in ("event:new", ""):
                refused = h.store.enqueue(h.event(instance_id, "go", key=key))
                await expect_raises(
                    InvalidOperationError, refused, f"a new event to a {status.value} instance"
                )
            assert await h.inbox(instance_id) == [], "a refused message was stored"
            # Refused keys were not remembered: they are refused again, not "duplicates".
            refused = h.store.enqueue(h.event(instance_id, "go", key="event:new"))
            await expect_raises(InvalidOperationError, refused, "the refused key again")


async def check_a_rewind_is_accepted_only_by_a_failed_instance(factory: StoreFactory) -> None:
    """A rewind sets a FAILED instance RUNNING (updated now) in its step; of two, one wins."""

    def rewind(instance_id: str) -> OrchestrationMessage:
        return OrchestrationMessage(instance_id, ExecutionRewound(timestamp=h.clock.now()))

    async with fresh_store(factory) as h:
        for status in (OrchestrationStatus.COMPLETED, OrchestrationStatus.TERMINATED):
            await _finish(h, f"over-{status.value}", status)
            refused = h.store.enqueue(rewind(f"over-{status.value}"))
            await expect_raises(InvalidOperationError, refused, f"a rewind of {status.value}")
        await h.start("running")
        await expect_raises(
            InvalidOperationError, h.store.enqueue(rewind("running")), "a rewind of a RUNNING one"
        )
        await _finish(h, "failed", OrchestrationStatus.FAILED)
        failed = await h.store.get_instance("failed")
        assert failed is not None
        h.clock.advance(1)
        answers = await asyncio.gather(
            h.store.enqueue(rewind("failed")),
            h.store.enqueue(rewind("failed")),
            return_exceptions=True,
        )
        accepted = [a for a in answers if a is True]
        refusals = [a for a in answers if isinstance(a, InvalidOperationError)]
        assert len(accepted) == len(refusals) == 1, f"two rewinds at once: {answers}"
        record = await h.store.get_instance("failed")
        assert record is not None and record.status is OrchestrationStatus.RUNNING, record
        # A waiting client tells a late notice of the failure from the rewound run's end by it.
        assert record.updated_at > failed.updated_at, "the rewind left updated_at behind"
        rewinds = [m for m in await h.inbox("failed") if isinstance(m.event, ExecutionRewound)]
        assert len(rewinds) == 1, rewinds


async def check_a_commit_cancels_pending_timers_by_key(factory: StoreFactory) -> None:
    """``EpisodeCommit.cancelled`` deletes those pending messages: they never wake the instance."""
    async with fresh_store(factory) as h:
        await h.start("a")
        later = h.clock.now() + timedelta(hours=1)
        timers = [
            OrchestrationMessage(
                "a",
                TimerFired(timestamp=later, timer_id=n, fire_at=later),
                execution_id="exec-1",
                visible_at=later,
            )
            for n in (1, 2)
        ]
        await h.run_episode("a", messages=timers)
        await h.store.enqueue(h.event("a", "go"))
        await h.run_episode("a", cancelled=[timer_key("exec-1", 1)])
        h.clock.advance(timedelta(hours=2))
        [item] = (await h.lock(owner="after")).values()
        fired = [m.event for m in item.messages if isinstance(m.event, TimerFired)]
        assert [e.timer_id for e in fired] == [2], f"after cancelling timer 1: {fired}"


async def check_purge_and_replace_forget_keys(factory: StoreFactory) -> None:
    """A purged or replaced instance starts with no remembered keys."""
    async with fresh_store(factory) as h:
        for forget in ("purge", "replace"):
            instance_id = f"forget-{forget}"
            await h.start(instance_id)
            await h.store.enqueue(h.event(instance_id, "go", key="event:k"))
            await h.run_episode(instance_id, status=OrchestrationStatus.COMPLETED)
            if forget == "purge":
                assert await h.store.purge_instance(instance_id)
                await h.start(instance_id, execution_id="exec-2")
            else:
                await h.start(instance_id, execution_id="exec-2", replaceable=frozenset(_FINISHED))
            fresh = await h.store.enqueue(h.event(instance_id, "go", input="new", key="event:k"))
            assert fresh is True, f"the key survived a {forget}"
            assert await _raised(h, instance_id) == ["new"]


async def check_concurrent_enqueues_of_one_key_add_one_message(factory: StoreFactory) -> None:
    """Of 20 concurrent enqueues with one key, exactly one returns True and one message lands."""
    async with fresh_store(factory) as h:
        await h.start("a")
        await h.run_episode("a")
        sends = [
            h.store.enqueue(h.event("a", "go", input=str(n), key="event:once")) for n in range(20)
        ]
        added = await asyncio.gather(*sends)
        assert sorted(added) == [False] * 19 + [True], f"enqueue answers: {added}"
        raised = await _raised(h, "a")
        assert raised == [str(added.index(True))], f"inbox holds {raised}"


KEY_CHECKS: list[StoreCheck] = [
    check_create_refuses_finished_instance_by_default,
    check_create_replaces_only_named_statuses,
    check_concurrent_creates_of_one_id_start_it_once,
    check_enqueue_remembers_keys_after_consumption,
    check_enqueue_to_finished_instance,
    check_a_rewind_is_accepted_only_by_a_failed_instance,
    check_a_commit_cancels_pending_timers_by_key,
    check_purge_and_replace_forget_keys,
    check_concurrent_enqueues_of_one_key_add_one_message,
]
"""Checks of id reuse and remembered keys, in order."""
