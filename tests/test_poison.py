"""Operators see, requeue and delete poisoned messages, and the work then carries on.

End to end on every store, through the public API: a message that keeps
failing is taken out of circulation, the operator lists it, fixes the cause,
requeues it, and the orchestration finishes with the right result.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import durable_fx
from durable_fx import (
    DurableClient,
    HistoryEvent,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    PoisonedMessage,
    Registry,
    Store,
    Worker,
)
from durable_fx.storage import (
    Accept,
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InstanceQuery,
    InstanceRecord,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
    Page,
)
from tests.support.instances import status_of
from tests.support.instances import wait_until as eventually

WAIT = 20.0
DELIVERIES = 5
"""The stores' default ``max_dequeue_count``."""


def _stop_while_it_hangs(
    make_worker: Callable[..., Worker], runs: list[str], wait_until: Callable[..., None]
) -> None:
    """Start a worker, let it pick up the hanging activity, stop it: one failed delivery."""
    before = len(runs)
    worker = make_worker(shutdown_grace=0.05)
    wait_until(lambda: len(runs) > before)
    worker.stop()


def test_a_poisoned_activity_runs_again_once_requeued(
    registry: Registry,
    client: DurableClient,
    make_worker: Callable[..., Worker],
    wait_until: Callable[..., None],
) -> None:
    fixed = threading.Event()
    runs: list[str] = []

    @registry.activity()
    async def charge(order: str) -> str:
        runs.append(order)
        if not fixed.is_set():
            # A stuck dependency: every worker that runs it gives up on it when stopped.
            await asyncio.Event().wait()
        return f"charged {order}"

    @registry.orchestrator()
    def checkout(ctx: OrchestrationContext, order: str) -> Orchestrator[Any]:
        receipt = yield ctx.call_activity(charge, order)
        return receipt

    instance_id = client.start(checkout, "order-7")
    for _ in range(DELIVERIES):
        _stop_while_it_hangs(make_worker, runs, wait_until)
    wait_until(lambda: client.poisoned() != [])

    [poisoned] = client.poisoned()
    assert (poisoned.queue, poisoned.instance_id) == ("activities", instance_id)
    assert poisoned.dequeue_count == DELIVERIES
    assert poisoned.reason == "the worker stopped"
    assert poisoned.extra["name"] == "charge" and "order-7" in poisoned.body
    assert client.poisoned(instance_id=instance_id) == [poisoned]
    assert client.poisoned(instance_id="someone-else") == []
    state = client.get(instance_id)
    assert state is not None and state.status is OrchestrationStatus.RUNNING

    fixed.set()
    assert client.requeue_poisoned(poisoned.poison_id) == 1
    assert client.poisoned() == []
    make_worker()
    done = client.wait(instance_id, timeout=WAIT)
    assert (done.status, done.output) == (OrchestrationStatus.COMPLETED, "charged order-7")
    assert runs == ["order-7"] * (DELIVERIES + 1)
    assert client.requeue_poisoned([poisoned.poison_id]) == 0, "requeued a second time"


class _FailingCommits:
    """A store whose episode commits fail while ``broken`` is set (its disk is full, say)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.broken = threading.Event()

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        if self.broken.is_set():
            raise OSError("no space left on device")
        return await self.inner.commit_episode(item, commit)

    # -- the rest of the Store protocol, passed through ---------------------------------------

    async def create_instance(
        self,
        message: OrchestrationMessage,
        *,
        replaceable: frozenset[OrchestrationStatus] = frozenset(),
    ) -> None:
        await self.inner.create_instance(message, replaceable=replaceable)

    async def enqueue(self, message: OrchestrationMessage) -> bool:
        return await self.inner.enqueue(message)

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        return await self.inner.lock_orchestrations(
            owner=owner, limit=limit, lease=lease, accept=accept
        )

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        return await self.inner.load_history(instance_id)

    async def abandon_orchestration(
        self, item: OrchestrationWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        # No wait between retries: the test need not sit out DELIVERIES seconds.
        await self.inner.abandon_orchestration(item, reason=reason, retry_after=timedelta(0))

    async def renew_orchestration_lease(
        self, item: OrchestrationWorkItem, lease: timedelta
    ) -> None:
        await self.inner.renew_orchestration_lease(item, lease)

    async def lock_activities(
        self, *, owner: str, limit: int, lease: timedelta
    ) -> LockBatch[ActivityWorkItem]:
        return await self.inner.lock_activities(owner=owner, limit=limit, lease=lease)

    async def complete_activities(self, results: Sequence[ActivityResult]) -> None:
        await self.inner.complete_activities(results)

    async def abandon_activity(
        self, item: ActivityWorkItem, *, reason: str, retry_after: timedelta
    ) -> None:
        await self.inner.abandon_activity(item, reason=reason, retry_after=retry_after)

    async def renew_activity_lease(
        self, item: ActivityWorkItem, lease: timedelta, *, heartbeat: str | None = None
    ) -> None:
        await self.inner.renew_activity_lease(item, lease, heartbeat=heartbeat)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self.inner.get_instance(instance_id)

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        return await self.inner.query_instances(query)

    async def purge_instance(self, instance_id: str) -> bool:
        return await self.inner.purge_instance(instance_id)

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        return await self.inner.purge_idle_instance(instance_id, version)

    async def poisoned_messages(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        return await self.inner.poisoned_messages(instance_id=instance_id)

    async def requeue_poisoned(self, poison_ids: Sequence[str]) -> int:
        return await self.inner.requeue_poisoned(poison_ids)

    async def delete_poisoned(self, poison_ids: Sequence[str]) -> int:
        return await self.inner.delete_poisoned(poison_ids)

    async def wait_for_work(self, timeout: float) -> None:
        await self.inner.wait_for_work(timeout)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def failing(store: Store) -> _FailingCommits:
    return _FailingCommits(store)


@pytest.fixture
def failing_worker(registry: Registry, failing: _FailingCommits) -> Iterator[Callable[[], Worker]]:
    """Starts a worker on the ``failing`` store (after the test registered its functions)."""
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker(registry, failing, max_poll_interval=0.05, shutdown_grace=2.0))
        started[-1].start()
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def test_a_poisoned_orchestration_message_is_applied_once_requeued(
    registry: Registry,
    client: DurableClient,
    failing: _FailingCommits,
    failing_worker: Callable[[], Worker],
    wait_until: Callable[..., None],
) -> None:
    assert isinstance(failing, Store)
    instance_id = _poison_an_approval(
        registry, client, failing, failing_worker, wait_until, "order-8", "yes"
    )
    listed = client.poisoned()
    assert len(listed) == 1, listed
    [poisoned] = listed
    assert (poisoned.queue, poisoned.instance_id) == ("orchestrations", instance_id)
    assert "no space left on device" in poisoned.reason
    assert "Approve" in poisoned.body and "yes" in poisoned.body
    assert poisoned.dequeue_count == DELIVERIES

    failing.broken.clear()
    assert client.requeue_poisoned([poisoned.poison_id, "not-an-id"]) == 1
    done = client.wait(instance_id, timeout=WAIT)
    assert (done.status, done.output) == (OrchestrationStatus.COMPLETED, "order-8: yes")
    full = client.get(instance_id, history=True)
    assert full is not None and full.history is not None
    raised = [e for e in full.history if e.kind == "EventRaised"]
    assert len(raised) == 1, f"the requeued event was applied {len(raised)} times"


def test_a_deleted_poisoned_message_never_runs(
    registry: Registry,
    client: DurableClient,
    failing: _FailingCommits,
    failing_worker: Callable[[], Worker],
    wait_until: Callable[..., None],
) -> None:
    instance_id = _poison_an_approval(
        registry, client, failing, failing_worker, wait_until, "order-9", "a mistake"
    )
    failing.broken.clear()

    [poisoned] = client.poisoned()
    assert client.delete_poisoned(poisoned.poison_id) == 1
    assert client.poisoned() == []
    assert client.delete_poisoned([poisoned.poison_id]) == 0
    client.raise_event(instance_id, "Approve", "yes")
    done = client.wait(instance_id, timeout=WAIT)
    assert done.output == "order-9: yes", "the deleted event ran after all"


def _poison_an_approval(
    registry: Registry,
    client: DurableClient,
    failing: _FailingCommits,
    failing_worker: Callable[[], Worker],
    wait_until: Callable[..., None],
    order: str,
    decision: str,
) -> str:
    """Start an approval and break the store's commits until its "Approve" event is poisoned.

    The store stays broken: the caller clears ``failing.broken`` when it is done looking.
    """

    @registry.orchestrator()
    def approval(ctx: OrchestrationContext, order: str) -> Orchestrator[Any]:
        decision = yield ctx.wait_for_event("Approve")
        return f"{order}: {decision}"

    instance_id = client.start(approval, order)
    failing_worker()
    wait_until(lambda: status_of(client, instance_id) is OrchestrationStatus.RUNNING)
    failing.broken.set()
    client.raise_event(instance_id, "Approve", decision)
    wait_until(lambda: client.poisoned() != [])
    return instance_id


# -- the SQLite file ----------------------------------------------------------------------------


def test_an_older_sqlite_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    created = durable_fx.open_store(f"sqlite:///{path}")
    asyncio.run(created.close())
    # Turn it into a version-1 file: poison ids were plain rowids then, so a
    # deleted row's id could come back for the next poisoned message.
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            DROP TABLE poison;
            CREATE TABLE poison (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, instance_id TEXT,
                body TEXT NOT NULL, reason TEXT NOT NULL, poisoned_at INTEGER NOT NULL,
                dequeue_count INTEGER NOT NULL, extra TEXT NOT NULL DEFAULT '{}');
            INSERT INTO poison VALUES (7, 'activities', 'old', '{}', 'it broke', 0, 5, '{}');
            ALTER TABLE instances DROP COLUMN orch_version;
            ALTER TABLE work_items DROP COLUMN heartbeat_timeout;
            ALTER TABLE work_items DROP COLUMN heartbeat_details;
            ALTER TABLE work_items DROP COLUMN trace_context;
            PRAGMA user_version=1;
            """
        )
    db.close()

    reopened = durable_fx.open_store(f"sqlite:///{path}")
    try:
        [kept] = asyncio.run(reopened.poisoned_messages(instance_id="old"))
        assert (kept.poison_id, kept.reason, kept.dequeue_count) == ("7", "it broke", 5)
        assert asyncio.run(reopened.delete_poisoned(["7"])) == 1
    finally:
        asyncio.run(reopened.close())
    with sqlite3.connect(path) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        (table,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'poison'").fetchone()
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        (last,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'poison'").fetchone()
    db.close()
    assert version == 6 and "AUTOINCREMENT" in table and "poison_instance" in indexes
    assert "instances_status" in indexes, "version 6 counts instances by status from an index"
    assert "used_keys" in indexes, "version 3 remembers event ids (test_event_dedupe.py)"
    assert last == 7, "the next poisoned message could reuse a deleted id"


@pytest.fixture
def sqlite_client(tmp_path: Path) -> Iterator[DurableClient]:
    with DurableClient(f"sqlite:///{tmp_path / 'corrupt.db'}") as opened:
        yield opened


def test_an_undecodable_message_goes_back_as_it_was(
    sqlite_client: DurableClient, tmp_path: Path
) -> None:
    """Requeue puts back exactly what was poisoned: a still-corrupt row is poisoned again."""
    registry = Registry()

    @registry.orchestrator()
    def idle(ctx: OrchestrationContext, _: None) -> Orchestrator[Any]:
        yield ctx.wait_for_event("never")

    instance_id = sqlite_client.start(idle, None, instance_id="damaged")
    with sqlite3.connect(tmp_path / "corrupt.db") as db:
        db.execute(
            "UPDATE inbox SET event_json = '{not json' WHERE instance_id = ?", (instance_id,)
        )
    db.close()
    store = sqlite_client.store
    with Worker(registry, store, max_poll_interval=0.05):
        eventually(lambda: sqlite_client.poisoned() != [])
        [first] = sqlite_client.poisoned()
        assert sqlite_client.requeue_poisoned(first.poison_id) == 1
        eventually(lambda: sqlite_client.poisoned() != [])
    [second] = sqlite_client.poisoned()
    assert second.poison_id != first.poison_id
    assert (second.body, second.extra["key"]) == (first.body, first.extra["key"])
    assert "undecodable" in second.reason
