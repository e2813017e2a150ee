"""Event ids dedupe for the life of the instance (every store), through the public client.

``raise_event(..., event_id=)`` returns True when the event was raised and False
for a duplicate: pending, already handled, or sent to an instance that has
finished since. The HTTP level (the management API's ``Idempotency-Key`` and
``?eventId=``) is in ``test_security_data_loss.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    InstanceNotFoundError,
    InvalidOperationError,
    OrchestrationContext,
    Orchestrator,
    Registry,
    Store,
    Worker,
)

WAIT = 20.0


def _register(registry: Registry) -> None:
    @registry.orchestrator()
    def collector(ctx: OrchestrationContext, count: int) -> Orchestrator[Any]:
        """Collect ``count`` events named "item", then wait for "stop"."""
        items = []
        for _ in range(count):
            items.append((yield ctx.wait_for_event("item")))
        yield ctx.wait_for_event("stop")
        return items


def _raised(client: DurableClient, instance_id: str, name: str) -> list[Any]:
    state = client.get(instance_id, history=True)
    assert state is not None and state.history is not None
    return [e.input for e in state.history if e.kind == "EventRaised" and e.name == name]


def test_an_event_id_is_raised_once_even_after_it_was_handled(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., None]
) -> None:
    _register(registry)
    client.start("collector", 2, instance_id="c")
    assert client.raise_event("c", "item", 1, event_id="first") is True
    wait_until(lambda: _raised(client, "c", "item") == ["1"])
    # Handled: a redelivery with the same id is a duplicate, not a second item.
    assert client.raise_event("c", "item", 1, event_id="first") is False
    assert client.raise_event("c", "item", 2, event_id="second") is True
    assert client.raise_event("c", "stop") is True
    assert client.wait("c", timeout=WAIT).output == [1, 2]
    assert _raised(client, "c", "item") == ["1", "2"]


def test_twenty_concurrent_raises_of_one_event_id_raise_it_once(
    registry: Registry, worker: Worker, client: DurableClient, store: Store
) -> None:
    _register(registry)
    client.start("collector", 1, instance_id="burst")

    async def burst() -> list[bool]:
        async with AsyncDurableClient(store) as racer:
            raises = [racer.raise_event("burst", "item", n, event_id="once") for n in range(20)]
            return await asyncio.gather(*raises)

    answers = asyncio.run(burst())
    assert sorted(answers) == [False] * 19 + [True], answers
    client.raise_event("burst", "stop")
    assert client.wait("burst", timeout=WAIT).output == [answers.index(True)]
    assert len(_raised(client, "burst", "item")) == 1


def test_a_finished_instance_refuses_new_events_and_ignores_repeats(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    _register(registry)
    client.start("collector", 0, instance_id="over")
    assert client.raise_event("over", "stop", event_id="stop-1") is True
    client.wait("over", timeout=WAIT)
    # A redelivered webhook for a finished instance is a duplicate, not an error...
    assert client.raise_event("over", "stop", event_id="stop-1") is False
    # ...but a new event cannot be delivered any more: say so rather than drop it.
    for event_id in ("stop-2", None):
        with pytest.raises(InvalidOperationError, match="it is COMPLETED"):
            client.raise_event("over", "stop", event_id=event_id)
    with pytest.raises(InstanceNotFoundError):
        client.raise_event("nobody", "stop", event_id="x")
    assert _raised(client, "over", "stop") == [None]


def test_purging_forgets_event_ids(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    _register(registry)
    client.start("collector", 0, instance_id="reborn")
    client.raise_event("reborn", "stop", event_id="k")
    client.wait("reborn", timeout=WAIT)
    assert client.purge("reborn") == 1
    client.start("collector", 0, instance_id="reborn")
    assert client.raise_event("reborn", "stop", event_id="k") is True
    client.wait("reborn", timeout=WAIT)


def test_a_version_2_sqlite_file_learns_to_remember_event_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v2.db'}"
    with DurableClient(url) as client:
        client.start("collector", 1, instance_id="old")
    # Make it a file of the layout before remembered keys (schema version 2).
    with sqlite3.connect(tmp_path / "v2.db") as db:
        db.executescript(
            "DROP TABLE used_keys; ALTER TABLE instances DROP COLUMN orch_version;"
            " ALTER TABLE work_items DROP COLUMN heartbeat_timeout;"
            " ALTER TABLE work_items DROP COLUMN heartbeat_details;"
            " ALTER TABLE work_items DROP COLUMN trace_context;"
            " PRAGMA user_version=2;"
        )
    db.close()
    with DurableClient(url) as client:
        assert client.raise_event("old", "item", 1, event_id="e") is True
        assert client.raise_event("old", "item", 1, event_id="e") is False
    with sqlite3.connect(tmp_path / "v2.db") as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    db.close()
    assert version == 6
