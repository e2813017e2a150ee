"""Queue backends keep the Azure Storage queue semantics the Functions host relies on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from durable_fx.queues import (
    MemoryQueues,
    QueueBackend,
    SqliteQueues,
    decode_body,
    encode_body,
    open_queues,
    poison_queue_of,
    validate_queue_name,
)
from durable_fx.testing import ManualClock
from tests.support.azurite import Azurite

SECOND = timedelta(seconds=1)


@pytest.fixture(params=["memory", "sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def queues_and_clock(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[QueueBackend, ManualClock | None]]:
    """A backend, and the manual clock it reads (none: Azurite keeps real time)."""
    clock = ManualClock()
    backend: QueueBackend
    if request.param == "memory":
        backend = MemoryQueues(clock=clock)
    elif request.param == "sqlite":
        backend = SqliteQueues(tmp_path / "q.db", clock=clock)
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        backend, clock = open_queues(azurite.connection_string()), None
    yield backend, clock
    asyncio.run(backend.close())


@pytest.fixture
def queues(queues_and_clock: tuple[QueueBackend, ManualClock | None]) -> QueueBackend:
    return queues_and_clock[0]


@pytest.fixture
def let_time_pass(
    queues_and_clock: tuple[QueueBackend, ManualClock | None],
) -> Callable[[timedelta], Awaitable[None]]:
    """Move the backend's clock on (Azurite's: sleep)."""
    clock = queues_and_clock[1]

    async def let_pass(delta: timedelta) -> None:
        if clock is None:
            await asyncio.sleep(delta.total_seconds())
        else:
            clock.advance(delta)

    return let_pass


@pytest.fixture
def name() -> str:
    return "q" + uuid.uuid4().hex[:12]


def test_messages_come_back_in_order_counted_and_hidden(queues: QueueBackend, name: str) -> None:
    async def scenario() -> None:
        for n in range(3):
            await queues.send(name, encode_body(f"m{n}"))
        first = await queues.receive(name, limit=2, visibility=timedelta(seconds=30))
        assert [decode_body(m.text) for m in first] == [b"m0", b"m1"]
        assert [m.dequeue_count for m in first] == [1, 1]
        rest = await queues.receive(name, limit=5, visibility=timedelta(seconds=30))
        assert [decode_body(m.text) for m in rest] == [b"m2"]
        assert await queues.receive(name, limit=5, visibility=SECOND) == []
        released = await queues.update_visibility(first[0], timedelta(0))
        assert released is not None
        again = await queues.receive(name, limit=5, visibility=timedelta(seconds=30))
        assert [(decode_body(m.text), m.dequeue_count) for m in again] == [(b"m0", 2)]
        assert not await queues.delete(first[0])  # an old pop receipt no longer counts
        assert await queues.delete(again[0])
        assert not await queues.delete(again[0])

    asyncio.run(scenario())


def test_a_delayed_message_waits(
    queues: QueueBackend, name: str, let_time_pass: Callable[[timedelta], Awaitable[None]]
) -> None:
    async def scenario() -> None:
        await queues.send(name, "later", delay=timedelta(seconds=1))
        assert await queues.receive(name, limit=1, visibility=SECOND) == []
        await let_time_pass(timedelta(seconds=1.3))
        assert [m.text for m in await queues.receive(name, limit=1, visibility=SECOND)] == ["later"]

    asyncio.run(scenario())


def test_poison_moves_the_original_text(queues: QueueBackend, name: str) -> None:
    async def scenario() -> None:
        await queues.send(name, "%%% raw %%%")
        (message,) = await queues.receive(name, limit=1, visibility=timedelta(seconds=30))
        assert await queues.poison(message, "too many tries")
        assert await queues.receive(name, limit=1, visibility=SECOND) == []
        (poisoned,) = await queues.receive(name + "-poison", limit=1, visibility=SECOND)
        assert poisoned.text == "%%% raw %%%"
        assert poisoned.reason in ("too many tries", None)  # Azure queues cannot keep it

    asyncio.run(scenario())


def test_queue_rules() -> None:
    assert validate_queue_name("orders-1") == "orders-1"
    for bad in ["ab", "Orders", "a--b", "-ab", "ab-", "a" * 64]:
        with pytest.raises(ValueError, match="queue name"):
            validate_queue_name(bad)
    assert poison_queue_of("orders") == "orders-poison"
    assert poison_queue_of("orders-poison") is None
    assert poison_queue_of("a" * 57) is None
    assert decode_body(encode_body("héllo")) == "héllo".encode()
    assert decode_body("plain", "none") == b"plain"
    with pytest.raises(ValueError, match="Base64"):
        decode_body("not base64!")
