"""Messages the Functions host poisons are listed, requeued and deleted like the store's own.

``Host`` plays the Functions host on the hub's two queues as the reference
describes it: it receives, decodes Base64 and invokes ``dfx_control`` or
``dfx_work_items``; it deletes the message on success; a failed delivery is
released, and after ``maxDequeueCount`` deliveries the message's original text
(still Base64) is copied to ``<queue>-poison`` and the message deleted, with
no word to durable_fx. The instance then waits until the poison list adopts
the message and an operator requeues it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.storage.queue import QueueClient

import durable_fx
from durable_fx import (
    AsyncDurableClient,
    DurableApp,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
)
from durable_fx.hosting import queue_message
from durable_fx.queues import QueueBackend, QueuedMessage, decode_body, encode_body, open_queues
from durable_fx.storage._delivered import DeliveredMessage
from durable_fx.storage.azure import AzureStore, HubNames, open_azure_store
from durable_fx.storage.azure._settings import partition_of
from tests.support.azurite import Azurite, new_hub

pytestmark = [pytest.mark.azurite]

MAX_DEQUEUE_COUNT = 5
"""host.json's ``maxDequeueCount`` (the host's default, and the store's)."""
HOLD = timedelta(minutes=5)


class Host:
    """Receives the hub's messages, invokes the app's queue functions, poisons as the host does."""

    def __init__(self, app: DurableApp, queues: QueueBackend) -> None:
        functions: dict[str, Any] = {str(f.get_function_name()): f for f in app.get_functions()}
        self.app = app
        self.queues = queues
        settings = app.settings
        self.controls = (*settings.control_queues, settings.legacy_control_queue)
        self.work = settings.work_queue
        durable = [n for n in functions if n.startswith("dfx_control") or n == "dfx_work_items"]
        self.handlers: dict[str, Callable[..., Any]] = {
            functions[name].get_trigger().queue_name: functions[name].get_user_function()
            for name in durable
        }

    def control_of(self, instance_id: str) -> str:
        """The control queue (partition) of ``instance_id``."""
        settings = self.app.settings
        return settings.control_queues[partition_of(instance_id, settings.partitions)]

    async def deliver_control(self) -> int:
        """One receive from every control queue; returns how many messages there were."""
        return sum([await self.deliver(queue) for queue in self.controls])

    async def deliver(self, queue: str) -> int:
        """One receive from ``queue``; invoke each message; returns how many there were."""
        received = await self.queues.receive(queue, limit=16, visibility=HOLD)
        for message in received:
            body = decode_body(message.text)
            try:
                await self.handlers[queue](msg=queue_message(message, body))
            except Exception:
                await self.failed(message)
                raise
            await self.queues.delete(message)
        return len(received)

    async def failed(self, message: QueuedMessage) -> None:
        """A delivery that failed: retry it, or after too many move it to the poison queue."""
        if message.dequeue_count >= MAX_DEQUEUE_COUNT:
            await self.queues.poison(message, "failed")  # the original text, then a delete
        else:
            await self.queues.update_visibility(message, timedelta(0))

    async def receive_one(self, queue: str) -> QueuedMessage:
        """The one message of ``queue``, held as an invocation would hold it."""
        for _ in range(200):
            received = await self.queues.receive(queue, limit=1, visibility=HOLD)
            if received:
                return received[0]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no message in {queue}")

    async def settle(self) -> None:
        """Deliver until both queues have nothing visible."""
        while await self.deliver_control() + await self.deliver(self.work):
            pass

    async def run_until_finished(self, instance_id: str) -> durable_fx.OrchestrationState:
        client = self.app.runtime.client
        for _ in range(600):
            state = await client.get(instance_id)
            if state is not None and state.status.is_terminal:
                return state
            if not await self.deliver_control() + await self.deliver(self.work):
                await asyncio.sleep(0.05)
        raise AssertionError(f"{instance_id} never finished")

    async def count(self, queue: str) -> int:
        """Visible messages of ``queue`` (received and released at once)."""
        received = await self.queues.receive(queue, limit=32, visibility=timedelta(seconds=1))
        for message in received:
            await self.queues.update_visibility(message, timedelta(0))
        return len(received)


class Scenario:
    """An app on a fresh hub: ``charge`` runs once per call, ``checkout`` waits for approval."""

    def __init__(self, store: AzureStore) -> None:
        self.store = store
        self.runs: list[str] = []
        self.app = app = DurableApp(store=store)
        self.host = Host(app, open_queues(store))
        self.client: AsyncDurableClient = app.runtime.client

        @app.activity()
        def charge(order: str) -> str:
            self.runs.append(order)
            return f"charged {order}"

        @app.orchestrator()
        def pay(ctx: OrchestrationContext, order: str) -> Orchestrator[str]:
            receipt: str = yield ctx.call_activity(charge, order)
            return receipt

        @app.orchestrator()
        def approve(ctx: OrchestrationContext, order: str) -> Orchestrator[str]:
            who: str = yield ctx.wait_for_event("approved")
            return f"{order} approved by {who}"

        self.charge, self.pay, self.approve = charge, pay, approve

    @property
    def names(self) -> HubNames:
        return self.store.settings.names

    async def close(self) -> None:
        await self.host.queues.close()
        await self.app.runtime.aclose()

    async def work_item_poisoned_by_the_host(self, order: str) -> str:
        """Start ``pay``; its work item then fails every delivery until the host poisons it."""
        host = self.host
        instance_id = await self.client.start(self.pay, order, instance_id=f"pay-{order}")
        while await host.deliver_control():
            pass  # the first episode: it schedules the activity
        for _ in range(MAX_DEQUEUE_COUNT):
            # Each worker dies mid-activity before completing it (killed, timed out).
            await host.failed(await host.receive_one(host.work))
        assert self.runs == []
        return instance_id


@pytest.fixture
def store(azurite: Azurite) -> Iterator[AzureStore]:
    opened = open_azure_store(azurite.connection_string(new_hub()))
    yield opened
    asyncio.run(opened.close())


def test_a_work_item_the_host_poisoned_is_listed_and_runs_once_requeued(
    store: AzureStore,
) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        instance_id = await s.work_item_poisoned_by_the_host("order-7")
        work_poison = f"{s.names.work_queue}-poison"
        assert await s.host.count(work_poison) == 1

        [poisoned] = await s.client.poisoned()
        assert (poisoned.queue, poisoned.instance_id) == ("activities", instance_id)
        assert poisoned.reason == (
            f"the Functions host moved it to {work_poison} after {MAX_DEQUEUE_COUNT} deliveries"
        )
        assert poisoned.dequeue_count == MAX_DEQUEUE_COUNT
        assert poisoned.extra["name"] == "charge" and "order-7" in poisoned.body
        assert await s.host.count(work_poison) == 0, "adopted: the queue message is gone"
        assert await s.client.poisoned() == [poisoned]
        state = await s.client.get(instance_id)
        assert state is not None and state.status is OrchestrationStatus.RUNNING

        assert await s.client.requeue_poisoned(poisoned.poison_id) == 1
        assert await s.client.poisoned() == []
        done = await s.host.run_until_finished(instance_id)
        assert (done.status, done.output) == (OrchestrationStatus.COMPLETED, "charged order-7")
        assert s.runs == ["order-7"]
        assert await s.client.requeue_poisoned([poisoned.poison_id]) == 0
        await s.close()

    asyncio.run(scenario())


def test_a_wake_up_the_host_poisoned_wakes_its_instance_once_requeued(
    store: AzureStore, azurite: Azurite
) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        host = s.host
        instance_id = await s.client.start(s.approve, "order-8", instance_id="approve-8")
        await host.settle()  # the first episode: it waits for the event
        await s.client.raise_event(instance_id, "approved", "ana")
        for _ in range(MAX_DEQUEUE_COUNT):
            # A worker takes the instance over (which counts a delivery of the event)
            # and dies before the episode commits: the host sees a failed invocation.
            message = await host.receive_one(host.control_of(instance_id))
            await _take_over_and_die(azurite, store, message)
            await host.failed(message)
        assert await host.count(host.control_of(instance_id)) == 0, "nothing left to wake it"

        [poisoned] = await s.client.poisoned(instance_id=instance_id)
        control_poison = f"{host.control_of(instance_id)}-poison"
        assert (poisoned.queue, poisoned.instance_id) == ("orchestrations", instance_id)
        assert poisoned.reason == (
            f"the Functions host moved it to {control_poison} after {MAX_DEQUEUE_COUNT} deliveries"
        )
        assert poisoned.extra["kind"] == "wake-up"
        assert await host.count(control_poison) == 0

        assert await s.client.requeue_poisoned([poisoned.poison_id]) == 1
        done = await host.run_until_finished(instance_id)
        assert (done.status, done.output) == (
            OrchestrationStatus.COMPLETED,
            "order-8 approved by ana",
        )
        assert await s.client.poisoned() == [], "the event was not poisoned on the way"
        await s.close()

    asyncio.run(scenario())


async def _take_over_and_die(azurite: Azurite, store: AzureStore, message: QueuedMessage) -> None:
    """A worker process that takes the instance a wake-up names, then dies holding it."""
    doomed = open_azure_store(azurite.connection_string(store.settings.names.hub))
    delivered = DeliveredMessage(
        message.id,
        message.pop_receipt,
        decode_body(message.text).decode(),
        message.dequeue_count,
        message.inserted_at,
    )
    # A lease that runs out at once: the next delivery need not wait for the dead owner.
    assert await doomed.accept_wake_up(delivered, lease=timedelta(milliseconds=1)) is not None
    await doomed.close()  # no release: the process is gone


class DiesBeforeDeleting(AsyncHTTPPolicy[Any, Any]):
    """The process dies when it would delete a message of ``queue`` (the request never leaves).

    It notes the message and its pop receipt, so the test can let the lease run out.
    """

    def __init__(self, queue: str) -> None:
        self.pattern = re.compile(rf"/{re.escape(queue)}/messages/([^?]+)\?popreceipt=([^&]+)")
        self.died: list[tuple[str, str]] = []

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        found = self.pattern.search(http.url)
        if http.method == "DELETE" and found and not self.died:
            self.died.append((found[1], unquote(found[2])))
            raise RuntimeError("test: the process died")
        return await self.next.send(request)


def test_a_crash_between_the_row_and_the_delete_lists_the_message_once(
    store: AzureStore, azurite: Azurite
) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        instance_id = await s.work_item_poisoned_by_the_host("order-9")
        work_poison = f"{s.names.work_queue}-poison"
        dies = DiesBeforeDeleting(work_poison)
        crashing = open_azure_store(azurite.connection_string(s.names.hub), policies=[dies])
        [first] = await crashing.poisoned_messages()  # its row went in, the delete did not
        await crashing.close()
        assert len(dies.died) == 1

        # The dead process's short hold on the message runs out: it is visible again.
        message_id, receipt = dies.died[0]
        now = datetime.now(UTC)
        held = QueuedMessage(work_poison, message_id, receipt, "", 1, now, now)
        assert await s.host.queues.update_visibility(held, timedelta(0)) is not None
        assert await s.host.count(work_poison) == 1

        assert await s.client.poisoned() == [first], "adopted again, listed once"
        assert await s.host.count(work_poison) == 0, "and this time deleted"
        assert await s.client.requeue_poisoned([first.poison_id]) == 1
        done = await s.host.run_until_finished(instance_id)
        assert done.output == "charged order-9" and s.runs == ["order-9"]
        await s.close()

    asyncio.run(scenario())


def _stored(azurite: Azurite, queue: str) -> int:
    """Messages in ``queue``, hidden ones included."""
    with QueueClient.from_connection_string(azurite.connection_string(), queue) as client:
        return int(client.get_queue_properties().approximate_message_count or 0)


def test_the_stores_own_copies_are_not_adopted(store: AzureStore, azurite: Azurite) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        host = s.host
        control = s.names.control_partition(1)
        control_poison = f"{control}-poison"
        # The store poisons an undecodable wake-up itself: a row and a copy.
        await host.queues.send(control, encode_body("not a wake-up"))
        await host.settle()
        [own] = await s.client.poisoned()
        assert own.reason.startswith("undecodable control message")
        assert await s.client.poisoned() == [own]
        assert _stored(azurite, control_poison) == 1, "its copy stays for tools that watch"

        # Next to a message the host poisoned, the copy is received but still not adopted.
        await host.queues.send(control_poison, encode_body('{"h": "nobody"}'))
        listed = await s.client.poisoned()
        assert len(listed) == 2 and own in listed
        assert await s.client.poisoned() == listed
        adopted = next(p for p in listed if p != own)
        assert adopted.instance_id == "nobody" and adopted.extra["kind"] == "wake-up"

        # Deleting the store's row still deletes its copy (its row has the new receipt),
        # hidden as it is by the adoption pass.
        assert await s.client.delete_poisoned([own.poison_id]) == 1
        assert _stored(azurite, control_poison) == 0
        assert await s.client.requeue_poisoned([adopted.poison_id]) == 0, "no such instance"
        assert await s.client.delete_poisoned([adopted.poison_id]) == 1
        assert await s.client.poisoned() == []
        await s.close()

    asyncio.run(scenario())


def test_a_body_that_is_not_base64_is_adopted_as_it_is(store: AzureStore) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        work_poison = f"{s.names.work_queue}-poison"
        # The host moves a body it cannot decode to the poison queue without invoking anything.
        await s.host.queues.send(work_poison, "not base64 {")
        [poisoned] = await s.client.poisoned()
        assert poisoned.instance_id is None and poisoned.body == "not base64 {"
        assert poisoned.reason.endswith("its body is not Base64")
        assert await s.host.count(work_poison) == 0
        await s.close()

    asyncio.run(scenario())


def test_adoption_looks_past_a_page_of_copies(store: AzureStore, azurite: Azurite) -> None:
    async def scenario() -> None:
        s = Scenario(store)
        # The legacy control queue's poison queue (a hub made before partitions) is adopted too.
        control_poison = f"{s.names.legacy_control_queue}-poison"
        # More copies (as Queues.poison writes them) than one peek or receive returns,
        # and behind them a wake-up the host poisoned.
        for n in range(40):
            copy = {"reason": "test", "message": f"m{n}", "id": f"pcopy{n}"}
            await s.host.queues.send(control_poison, encode_body(json.dumps(copy)))
        await s.host.queues.send(control_poison, encode_body('{"h": "late"}'))
        [adopted] = await s.client.poisoned()
        assert adopted.instance_id == "late"
        assert await s.client.poisoned() == [adopted]
        assert _stored(azurite, control_poison) == 40, "the copies stay"
        await s.close()

    asyncio.run(scenario())
