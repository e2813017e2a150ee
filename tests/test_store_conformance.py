"""Every store passes every check of the conformance suite (durable_fx.testing)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

import durable_fx.testing
from durable_fx import ConflictError
from durable_fx._clock import Clock
from durable_fx._history import ExecutionStarted
from durable_fx.storage import (
    EpisodeCommit,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Store,
    open_store,
)
from durable_fx.storage.memory import MemoryStore
from durable_fx.testing import STORE_CHECKS, ManualClock, StoreCheck, StoreFactory, check_store
from tests.support.azurite import Azurite, new_hub


@pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda check: check.__name__)
def test_store_conformance(store_factory: StoreFactory, check: StoreCheck) -> None:
    async def run() -> None:
        await check(store_factory)

    asyncio.run(run())


def test_check_store_runs_every_check_on_fresh_stores() -> None:
    built: list[Store] = []

    def factory(clock: Clock) -> Store:
        built.append(MemoryStore(clock=clock))
        return built[-1]

    asyncio.run(check_store(factory))
    assert len(built) >= len(STORE_CHECKS)
    assert len({id(store) for store in built}) == len(built)


def test_check_store_names_the_failing_check() -> None:
    class NoPurge(MemoryStore):
        async def purge_instance(self, instance_id: str) -> bool:
            return False

    with pytest.raises(AssertionError) as failure:
        asyncio.run(check_store(lambda clock: NoPurge(clock=clock)))
    notes = "\n".join(getattr(failure.value, "__notes__", []))
    failed = [check for check in STORE_CHECKS if f"in store check {check.__name__}:" in notes]
    assert len(failed) == 1 and str(failed[0].__doc__) in notes, notes


def test_store_checks_are_named_documented_and_unique() -> None:
    names = [check.__name__ for check in STORE_CHECKS]
    assert len(names) == len(set(names))
    for check in STORE_CHECKS:
        assert check.__name__.startswith("check_")
        assert check.__doc__ and "\n" not in check.__doc__.strip(), check.__name__


def test_testing_exports_are_sorted_and_public() -> None:
    exported = durable_fx.testing.__all__
    assert exported == sorted(exported, key=lambda name: (not name.isupper(), name))
    assert durable_fx.testing.ManualClock.__module__ == "durable_fx.testing"


def test_memory_store_satisfies_the_protocol() -> None:
    assert isinstance(MemoryStore(), Store)
    assert isinstance(open_store("memory://"), MemoryStore)


class TestManualClock:
    def test_starts_at_a_fixed_utc_time(self) -> None:
        assert ManualClock().now() == datetime(2024, 1, 1, tzinfo=UTC)
        assert ManualClock().now().tzinfo is UTC

    def test_starts_where_told_in_utc(self) -> None:
        start = datetime(2030, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2)))
        clock = ManualClock(start)
        assert clock.now() == start
        assert clock.now().utcoffset() == timedelta(0)

    def test_moves_only_when_advanced(self) -> None:
        clock = ManualClock()
        before = clock.now()
        assert clock.now() == before
        assert clock.advance(timedelta(minutes=1)) == before + timedelta(minutes=1)
        assert clock.advance(1.5) == before + timedelta(minutes=1, seconds=1.5)
        assert clock.now() == before + timedelta(minutes=1, seconds=1.5)

    def test_rejects_naive_start_and_going_back(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            ManualClock(datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="forward"):
            ManualClock().advance(-1)


# -- Azure: two processes on one task hub ---------------------------------------------------
#
# The checks above use one store object, so on Azure they prove the lock this
# process keeps. Another process goes by the instance row's ownership instead.

_LEASE = timedelta(seconds=30)


@pytest.mark.azurite
def test_azure_renewal_keeps_an_instance_from_another_process(azurite: Azurite) -> None:
    """A renewal pushes the row's ownership out, so the other process waits for the new
    lease, not the first; once it has taken over, a renewal from the first steals nothing."""
    from durable_fx.storage.azure import open_azure_store

    clock = ManualClock()
    url = azurite.connection_string(new_hub())
    # Queue delays capped at zero: wake-ups come back at once and the clock decides.
    first, second = (
        open_azure_store(url, clock=clock, max_message_delay=timedelta(0), idle_poll=(0.0, 0.0))
        for _ in range(2)
    )

    async def lock(store: Store, owner: str) -> list[OrchestrationWorkItem]:
        batch = await store.lock_orchestrations(owner=owner, limit=10, lease=_LEASE)
        return batch.items

    async def scenario() -> None:
        started = ExecutionStarted(
            timestamp=clock.now(), name="wf", instance_id="x", execution_id="exec-1"
        )
        await first.create_instance(OrchestrationMessage("x", started))
        (held,) = await lock(first, "first")
        # A received wake-up stays hidden for at least a second of real time (the
        # queue's minimum); the other process can see it only after that.
        await asyncio.sleep(1.1)
        clock.advance(timedelta(seconds=20))
        await first.renew_orchestration_lease(held, _LEASE)
        clock.advance(timedelta(seconds=20))
        assert await lock(second, "second") == [], "taken over after the first lease"
        clock.advance(timedelta(seconds=11))
        (taken,) = await lock(second, "second")
        await first.renew_orchestration_lease(held, timedelta(hours=1))
        with pytest.raises(ConflictError):
            await first.commit_episode(held, _commit(held))
        await second.commit_episode(taken, _commit(taken))

    async def run() -> None:
        try:
            await scenario()
        finally:
            await asyncio.gather(first.close(), second.close())

    asyncio.run(run())


def _commit(item: OrchestrationWorkItem) -> EpisodeCommit:
    """An episode that records the messages it got and changes nothing else."""
    return EpisodeCommit(
        instance=item.instance,
        new_history=[message.event for message in item.messages],
        consumed=[message.message_id for message in item.messages],
    )
