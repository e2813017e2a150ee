"""Damaged rows in the SQLite file: each is quarantined with its reason, and the worker goes on.

The file is edited directly, as disk damage or a careless manual fix would.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import durable_fx
from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Worker,
)
from tests.support.instances import history_kinds, wait_until

WAIT = 20.0


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "damaged.db"


@pytest.fixture
def store(database: Path) -> Iterator[durable_fx.Store]:
    opened = durable_fx.open_store(f"sqlite:///{database}")
    yield opened
    asyncio.run(opened.close())


@pytest.fixture
def client(store: durable_fx.Store) -> Iterator[DurableClient]:
    with DurableClient(store) as opened:
        yield opened


@pytest.fixture
def app() -> Registry:
    registry = Registry()

    @registry.activity()
    def echo(value: str) -> str:
        return value

    @registry.orchestrator()
    def echo_once(ctx: OrchestrationContext, value: str) -> Orchestrator[Any]:
        return (yield ctx.call_activity(echo, value))

    @registry.orchestrator()
    def echo_then_wait(ctx: OrchestrationContext, value: str) -> Orchestrator[Any]:
        first = yield ctx.call_activity(echo, value)
        second = yield ctx.wait_for_event("go")
        return [first, second]

    return registry


def _damage(database: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(database) as connection:
        changed = connection.execute(sql, params).rowcount
    assert changed >= 1, "the damage hit no row"


def _worker(app: Registry, store: durable_fx.Store, **options: Any) -> Worker:
    options.setdefault("max_poll_interval", 0.05)
    return Worker(app, store, **options)


def test_an_undecodable_message_is_poisoned_and_other_work_goes_on(
    app: Registry, store: durable_fx.Store, client: DurableClient, database: Path
) -> None:
    damaged = client.start("echo_once", "a", instance_id="damaged")
    _damage(database, "UPDATE inbox SET event_json = '{not json' WHERE instance_id = ?", damaged)

    with _worker(app, store):
        healthy = client.start("echo_once", "b")
        assert client.wait(healthy, timeout=WAIT).output == "b"
        wait_until(lambda: bool(asyncio.run(store.poisoned_messages())))

    [poisoned] = asyncio.run(store.poisoned_messages())
    assert poisoned.instance_id == damaged
    assert "undecodable" in poisoned.reason
    assert "{not json" in poisoned.body


def test_a_corrupt_history_row_fails_its_instance_with_the_reason(
    app: Registry, store: durable_fx.Store, client: DurableClient, database: Path
) -> None:
    with _worker(app, store):
        waiting = client.start("echo_then_wait", "a")
        wait_until(lambda: "TaskCompleted" in history_kinds(client, waiting))

    _damage(
        database,
        "UPDATE history SET event_json = ? WHERE instance_id = ? AND seq = 1",
        '{"kind": "Nonsense"}',
        waiting,
    )
    with _worker(app, store):  # a new worker has nothing cached: it must read the history
        client.raise_event(waiting, "go", "now")
        state = client.wait(waiting, timeout=WAIT)
        assert state.status is OrchestrationStatus.FAILED
        assert state.failure is not None
        assert "history is corrupt" in state.failure.message
        healthy = client.start("echo_once", "b")
        assert client.wait(healthy, timeout=WAIT).output == "b"


def test_a_work_item_with_broken_input_fails_its_task_not_the_worker(
    app: Registry, store: durable_fx.Store, client: DurableClient, database: Path
) -> None:
    with _worker(app, store, max_concurrent_activities=0):  # schedules, never runs activities
        instance_id = client.start("echo_once", "a")
        wait_until(lambda: "TaskScheduled" in history_kinds(client, instance_id))
    _damage(
        database, "UPDATE work_items SET input = '{\"broken' WHERE instance_id = ?", instance_id
    )

    with _worker(app, store):
        state = client.wait(instance_id, timeout=WAIT)
        assert state.status is OrchestrationStatus.FAILED
        assert state.failure is not None
        assert "SerializationError" in state.failure.message
        assert "invalid json" in state.failure.message.lower()
        healthy = client.start("echo_once", "b")
        assert client.wait(healthy, timeout=WAIT).output == "b"
