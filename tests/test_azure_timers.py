"""Durable timers on the Azure store: parked work leaves the triggered queues alone.

The Functions scale controller sizes an app by each trigger queue's
ApproximateMessagesCount, hidden messages included. These tests count exactly
that (Azurite's queue properties) while orchestrations wait on long timers, in
host mode (``FakeHost`` plays the Functions host) and with a plain worker, and
check that the timers still fire: a 24-hour receipt timeout with a manual clock,
a 12-second timer in real time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

import durable_fx
from durable_fx import DurableApp, EventTimeoutError, OrchestrationContext, Orchestrator
from durable_fx.queues import encode_body, open_queues
from durable_fx.storage.azure import AzureStore, open_azure_store
from durable_fx.testing import ManualClock
from tests.support.azurite import Azurite, new_hub
from tests.support.fake_host import FakeHost
from tests.support.instances import history_kinds

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

RECEIPT_TIMEOUT = timedelta(hours=24)


@pytest.fixture
def store(azurite: Azurite) -> Iterator[AzureStore]:
    opened = durable_fx.open_store(azurite.connection_string(new_hub()))
    assert isinstance(opened, AzureStore)
    yield opened
    asyncio.run(opened.close())


def build(store: AzureStore) -> DurableApp:
    """An app whose orchestration waits for a receipt for ``minutes`` (the email's wait)."""
    app = DurableApp(store=store)

    @app.orchestrator()
    def await_receipt(ctx: OrchestrationContext, minutes: float) -> Orchestrator[str]:
        try:
            receipt = yield ctx.wait_for_event("receipt", timeout=timedelta(minutes=minutes))
        except EventTimeoutError:
            return "escalated"
        return f"receipt {receipt}"

    return app


def queue_lengths(azurite: Azurite, store: AzureStore) -> dict[str, int]:
    """ApproximateMessagesCount of every queue the app triggers on (what the scaler reads)."""
    names = store.settings.names
    lengths: dict[str, int] = {}
    for queue in (*names.control_queues, names.work_queue):
        client = QueueClient.from_connection_string(azurite.connection_string(), queue)
        with client:
            count = client.get_queue_properties().approximate_message_count
            assert count is not None
            lengths[queue] = count
    return lengths


async def quiet(host: FakeHost, pumps: int = 200) -> None:
    """Pump until a pump finds nothing to run; fail if that never happens."""
    for _ in range(pumps):
        if not await host.pump():
            return
    raise AssertionError(f"the host still had messages to run after {pumps} pumps")


def test_parked_timers_leave_at_most_one_message_per_partition(
    azurite: Azurite, store: AzureStore
) -> None:
    app = build(store)
    names = store.settings.names
    parked = [f"parked-{i:02d}" for i in range(40)]

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        for index, iid in enumerate(parked):
            # Each timer sooner than the one before: every one supersedes its partition's alarm.
            response = await host.start("await_receipt", iid, b"%d" % (600 - index))
            assert response.status_code == 202
            await quiet(host)
        lengths = queue_lengths(azurite, store)
        assert all(lengths[q] <= 1 for q in names.control_partitions), lengths
        assert lengths[names.legacy_control_queue] == 0, lengths
        assert lengths[names.work_queue] == 0, lengths

        # Parked is not lost: a receipt still resumes its instance at once.
        client = app.runtime.client
        for iid in parked[:3]:
            await client.raise_event(iid, "receipt", "delivered")
        for iid in parked[:3]:
            state = await host.run_until_finished(iid)
            assert state.output == "receipt delivered"
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_a_far_timer_fires_in_real_time(store: AzureStore) -> None:
    """12 s is past the index threshold: the alarm, not a wake-up of its own, fires it."""
    app = build(store)

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        started = time.monotonic()
        await host.start("await_receipt", "soon", json.dumps(0.2).encode())
        state = await host.run_until_finished("soon")
        assert state.output == "escalated"
        assert time.monotonic() - started >= 11.0  # the alarm waited for the timer
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def open_clocked(azurite: Azurite, start: datetime) -> tuple[AzureStore, ManualClock]:
    """A store on a manual clock; queue delays capped at zero so the clock alone decides."""
    clock = ManualClock(start)
    opened = open_azure_store(
        azurite.connection_string(new_hub()),
        clock=clock,
        max_message_delay=timedelta(0),
        idle_poll=(0.0, 0.0),
    )
    return opened, clock


@pytest.fixture
def clocked(azurite: Azurite) -> Iterator[tuple[AzureStore, ManualClock]]:
    """``open_clocked`` from now."""
    opened, clock = open_clocked(azurite, datetime.now(UTC))
    yield opened, clock
    asyncio.run(opened.close())


def test_the_receipt_timeout_fires_after_24_hours(
    azurite: Azurite, clocked: tuple[AzureStore, ManualClock]
) -> None:
    store, clock = clocked
    app = build(store)
    minutes = RECEIPT_TIMEOUT.total_seconds() / 60

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("await_receipt", "waiting", json.dumps(minutes).encode())
        await host.start("await_receipt", "answered", json.dumps(minutes).encode())
        await quiet_for(host, rounds=3)
        state = await app.runtime.client.get("waiting")
        assert state is not None and state.status is durable_fx.OrchestrationStatus.RUNNING
        clock.advance(RECEIPT_TIMEOUT - timedelta(minutes=1))
        await app.runtime.client.raise_event("answered", "receipt", "late but in time")
        assert (await host.run_until_finished("answered")).output == "receipt late but in time"
        await quiet_for(host, rounds=3)
        state = await app.runtime.client.get("waiting")
        assert state is not None and state.status is durable_fx.OrchestrationStatus.RUNNING
        # The episodes ran on the app's (real) clock, a few seconds after the store's
        # clock started: two more minutes are past the deadline on either.
        clock.advance(timedelta(minutes=2))
        assert (await host.run_until_finished("waiting")).output == "escalated"
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


async def quiet_for(host: FakeHost, rounds: int) -> None:
    """Pump ``rounds`` times (an alarm capped at zero delay rings on every pump)."""
    for _ in range(rounds):
        await host.pump()


def test_a_timer_of_a_purged_instance_costs_one_look(azurite: Azurite) -> None:
    """The timer's wake-up finds no instance and is dropped at once.

    A wake-up that finds no instance row usually waits (a starter sends it
    before the row); one from a timer must not. The store's clock starts an
    hour behind the app's, so the app's 12 s timer is far for the store (it
    is indexed) and, once the store's clock is moved to just past it, the
    wake-up the alarm sends is seconds old: young enough to be waited for
    (before, it was sent back on every pump).
    """
    store, clock = open_clocked(azurite, datetime.now(UTC) - timedelta(hours=1))
    app = build(store)

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("await_receipt", "gone", json.dumps(0.2).encode())
        await quiet_for(host, rounds=3)
        client = app.runtime.client
        await client.terminate("gone", "no longer wanted")
        await host.run_until_finished("gone")
        assert await client.purge("gone")
        clock.advance(timedelta(hours=1, seconds=30))  # the app's 12 s are over
        control = store.settings.names.control_queue_of("gone")
        before = host.ran[control]
        await quiet(host)  # (queue delays are capped at zero: a wake-up sent back is seen)
        # The alarm's ring and the timer's wake-up; nothing left in the queue after them.
        assert host.ran[control] - before <= 3
        assert queue_lengths(azurite, store)[control] == 0
        assert await client.get("gone") is None
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())
    asyncio.run(store.close())


@pytest.mark.parametrize("body", ['{"p": 99}', '{"p": "00"}', '{"p": true}', '{"p": null}'])
def test_a_malformed_alarm_is_poisoned_with_its_reason(store: AzureStore, body: str) -> None:
    app = build(store)
    names = store.settings.names

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.queues.send(names.control_partition(0), encode_body(body))
        assert await host.pump() == 1
        poisoned = await store.poisoned_messages()
        assert [p.reason for p in poisoned] == [
            'undecodable timer alarm: expected {"p": <partition number>}'
        ]
        assert json.loads(poisoned[0].body) == json.loads(body)
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_a_worker_keeps_parked_timers_out_of_the_queues(
    azurite: Azurite, store: AzureStore
) -> None:
    registry = durable_fx.Registry()

    @registry.orchestrator()
    def nap(ctx: OrchestrationContext, minutes: int) -> Orchestrator[str]:
        yield ctx.create_timer(timedelta(minutes=minutes))
        return "rested"

    names = store.settings.names
    client = durable_fx.DurableClient(store)
    with durable_fx.Worker(registry, store, max_poll_interval=0.05):
        ids = [client.start(nap, 120 - i) for i in range(30)]

        def parked() -> bool:
            return all("TimerCreated" in history_kinds(client, iid) for iid in ids)

        deadline = time.monotonic() + 30
        while not parked():
            assert time.monotonic() < deadline, "the instances never parked"
            time.sleep(0.1)
        time.sleep(1.0)  # let the worker end its sessions
        lengths = queue_lengths(azurite, store)
    assert sum(lengths.values()) <= names.partitions, lengths
    assert all(lengths[q] <= 1 for q in names.control_partitions), lengths


def timer_rows(azurite: Azurite, store: AzureStore) -> list[str]:
    """Row keys of the timer index (``due|instance``), the alarms' rows left out."""
    table = TableClient.from_connection_string(
        azurite.connection_string(), store.settings.names.timers_table
    )
    with table:
        rows = [str(row["RowKey"]) for row in table.list_entities()]
    return [key for key in rows if "|" in key]


def test_an_answered_wait_leaves_no_timer_to_wake_the_instance(
    azurite: Azurite, store: AzureStore
) -> None:
    registry = durable_fx.Registry()

    @registry.orchestrator()
    def await_receipt(ctx: OrchestrationContext) -> Orchestrator[str]:
        receipt = yield ctx.wait_for_event("receipt", timeout=timedelta(hours=24))
        return f"receipt {receipt}"

    client = durable_fx.DurableClient(store)
    with durable_fx.Worker(registry, store, max_poll_interval=0.05):
        ids = [client.start(await_receipt) for _ in range(3)]
        deadline = time.monotonic() + 30
        while len(timer_rows(azurite, store)) < len(ids):  # parked: indexed when idle
            assert time.monotonic() < deadline, timer_rows(azurite, store)
            time.sleep(0.1)
        for iid in ids:
            client.raise_event(iid, "receipt", "delivered")
        for iid in ids:
            assert client.wait(iid, timeout=30).output == "receipt delivered"
        deadline = time.monotonic() + 10
        while timer_rows(azurite, store):  # removed right after the commit that cancels
            assert time.monotonic() < deadline, timer_rows(azurite, store)
            time.sleep(0.1)


class PauseAfterWakeUp(AsyncHTTPPolicy[Any, Any]):
    """Holds a sender between the wake-up it sends and the row it then writes.

    Senders put the wake-up first, so a receiver may look before the message
    it wakes for is there. Once armed with a queue, the first message sent to
    it pauses its sender until ``go`` is set: by the test, or when a receiver
    of this store deletes or hides a message of that queue (it looked and
    decided). The store runs this on its own loop thread, hence threading events.
    """

    def __init__(self) -> None:
        super().__init__()
        self.queue = ""
        self.sent = threading.Event()
        self.go = threading.Event()
        self.settled = ""
        """How a receiver settled a message of the queue during the pause (DELETE or PUT)."""

    def arm(self, queue: str) -> None:
        self.queue = queue

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        response = await self.next.send(request)
        http, messages = request.http_request, f"/{self.queue}/messages"
        if not self.queue:
            return response
        settles = http.method in ("DELETE", "PUT") and f"{messages}/" in http.url
        if self.sent.is_set() and not self.settled and settles:
            self.settled = http.method
            self.go.set()
        if not self.sent.is_set() and http.method == "POST" and messages in http.url:
            self.sent.set()
            await asyncio.to_thread(self.go.wait, 30)
        return response


def test_a_receipt_overtaken_by_its_wake_up_still_resumes_a_parked_instance(
    azurite: Azurite, store: AzureStore
) -> None:
    """The host invokes the wake-up before the receipt is written, a day's timer pending."""
    app = build(store)
    hook = PauseAfterWakeUp()
    sender = open_azure_store(azurite.connection_string(store.settings.hub), policies=[hook])

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("await_receipt", "parked", b"1440")
        await quiet(host)
        hook.arm(store.settings.names.control_queue_of("parked"))
        client = durable_fx.AsyncDurableClient(sender)
        raised = asyncio.create_task(client.raise_event("parked", "receipt", "delivered"))
        assert await asyncio.to_thread(hook.sent.wait, 30)
        assert await host.pump() == 1  # the wake-up alone: its receipt is not written yet
        hook.go.set()
        await raised
        state = await host.run_until_finished("parked")
        assert state.output == "receipt delivered"
        await host.queues.close()
        await sender.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_a_worker_resumes_a_parked_instance_whose_wake_up_overtook_its_receipt(
    azurite: Azurite,
) -> None:
    hook = PauseAfterWakeUp()
    store = open_azure_store(
        azurite.connection_string(new_hub()), idle_poll=(0.05, 0.2), policies=[hook]
    )
    registry = durable_fx.Registry()

    @registry.orchestrator()
    def await_receipt(ctx: OrchestrationContext, minutes: float) -> Orchestrator[str]:
        receipt = yield ctx.wait_for_event("receipt", timeout=timedelta(minutes=minutes))
        return f"receipt {receipt}"

    client = durable_fx.DurableClient(store)
    with durable_fx.Worker(registry, store, max_poll_interval=0.05):
        iid = client.start(await_receipt, 1440, instance_id="parked")
        deadline = time.monotonic() + 30
        while "TimerCreated" not in history_kinds(client, iid):
            assert time.monotonic() < deadline, "the instance never parked"
            time.sleep(0.1)
        time.sleep(1.0)  # let the worker end its session
        hook.arm(store.settings.names.control_queue_of(iid))
        client.raise_event(iid, "receipt", "delivered")
        assert hook.settled  # the worker looked at the wake-up before the receipt was written
        state = client.wait(iid, timeout=20)
    assert state is not None and state.output == "receipt delivered", state
    asyncio.run(store.close())
