"""The durable queue triggers on the Azure store, driven the way the Functions host drives them.

``FakeHost`` plays the host: it receives from the hub's control queues (every
partition's and the legacy one) and its work-item queue, decodes Base64,
builds each ``func.QueueMessage`` with azure-functions' converter from the
trigger metadata, calls the indexed function by keyword,
and deletes the message on success (or releases it on failure). Nothing else
polls: between invocations the app must make no requests at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import durable_fx
from durable_fx import DurableApp, OrchestrationContext, Orchestrator
from durable_fx.bindings import MessageRejected
from durable_fx.hosting import queue_message
from durable_fx.queues import QueuedMessage, decode_body, encode_body, open_queues
from durable_fx.storage.azure import AzureStore
from tests.support.azurite import Azurite, new_hub
from tests.support.fake_host import FakeHost

pytestmark = [pytest.mark.azurite, pytest.mark.slow]


@pytest.fixture
def store(azurite: Azurite) -> Iterator[AzureStore]:
    opened = durable_fx.open_store(azurite.connection_string(new_hub()))
    assert isinstance(opened, AzureStore)
    yield opened
    asyncio.run(opened.close())


def build(store: AzureStore, calls: list[str]) -> DurableApp:
    app = DurableApp(store=store)

    @app.activity()
    def record(word: str) -> str:
        calls.append(word)
        return word.upper()

    @app.orchestrator()
    def flow(ctx: OrchestrationContext, word: str) -> Orchestrator[str]:
        first = yield ctx.call_activity(record, word)
        if word == "sleepy":
            yield ctx.create_timer(timedelta(seconds=2))
        second = yield ctx.call_activity(record, word + "!")
        return f"{first} {second}"

    return app


def test_the_host_path_runs_orchestrations_and_makes_no_requests_when_idle(
    store: AzureStore,
) -> None:
    calls: list[str] = []
    app = build(store, calls)
    names = store.settings.names
    assert app.settings.control_queues == names.control_partitions
    assert app.settings.legacy_control_queue == names.legacy_control_queue

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        assert (await host.start("flow", "run-1", b'"go"')).status_code == 202
        state = await host.run_until_finished("run-1")
        assert state.output == "GO GO!"
        assert calls == ["go", "go!"]
        assert host.gone == []  # every message was still there for the host to delete
        before = store.requests.total
        await asyncio.sleep(1.5)  # no invocations: the host is idle, so is durable_fx
        assert store.requests.total == before
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_the_host_drains_wake_ups_left_on_the_legacy_control_queue(store: AzureStore) -> None:
    """A hub made before partitions: ``dfx_control`` runs what waits on ``<hub>-control``."""
    calls: list[str] = []
    app = build(store, calls)
    names = store.settings.names
    legacy = names.legacy_control_queue

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        assert (await host.start("flow", "legacy-1", b'"old"')).status_code == 202
        # Its wake-up as a store before partitions sent it: on the one control queue.
        (sent,) = await host.queues.receive(
            names.control_queue_of("legacy-1"), limit=8, visibility=timedelta(minutes=1)
        )
        await host.queues.delete(sent)
        await host.queues.send(legacy, encode_body(json.dumps({"h": "legacy-1"})))
        state = await host.run_until_finished("legacy-1")
        assert state.output == "OLD OLD!" and calls == ["old", "old!"]
        # The legacy message ran once; everything after went to the instance's partition.
        assert host.ran[legacy] == 1
        assert host.ran[names.control_queue_of("legacy-1")] >= 1
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_a_timer_leaves_a_delayed_wake_up(store: AzureStore) -> None:
    calls: list[str] = []
    app = build(store, calls)

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("flow", "sleepy-1", b'"sleepy"')

        async def reserved() -> bool:
            return calls == ["sleepy"]

        await host.run_until(reserved)
        while await host.pump():
            pass  # the episode after the activity: it starts the timer
        started = time.monotonic()
        await host.run_until_finished("sleepy-1")
        assert time.monotonic() - started >= 1.0  # the wake-up waited for the timer
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_concurrent_wake_ups_for_one_instance_run_it_once_each_step(store: AzureStore) -> None:
    calls: list[str] = []
    app = build(store, calls)

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("flow", "twice", b'"x"')
        control = store.settings.names.control_queue_of("twice")
        for _ in range(3):  # extra wake-ups for the same instance, as retries would leave
            await host.queues.send(control, encode_body('{"h": "twice"}'))
        state = await host.run_until_finished("twice")
        assert state.output == "X X!"
        assert calls == ["x", "x!"]
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_malformed_messages_are_poisoned_with_their_reason(store: AzureStore) -> None:
    app = build(store, [])

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.queues.send(app.settings.control_queues[2], encode_body("not a wake-up"))
        await host.queues.send(app.settings.work_queue, encode_body('{"w": 1}'))
        while await host.pump():
            pass
        poisoned = await store.poisoned_messages()
        reasons = sorted(p.reason for p in poisoned)
        assert reasons[0].startswith("undecodable control message")
        assert reasons[1] == "undecodable work item message"
        # The control message's record names the partition queue it came from.
        (control,) = [p for p in poisoned if p.queue == "orchestrations"]
        copies = await host.queues.receive(
            f"{app.settings.control_queues[2]}-poison", limit=8, visibility=timedelta(0)
        )
        assert [json.loads(decode_body(c.text))["id"] for c in copies] == [control.poison_id]
        assert host.gone == []
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_a_redelivered_work_item_whose_result_is_recorded_does_not_run_again(
    store: AzureStore,
) -> None:
    calls: list[str] = []
    app = build(store, calls)

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        await host.start("flow", "again", b'"once"')
        control = store.settings.names.control_queue_of("again")
        work = app.settings.work_queue
        hold = timedelta(minutes=1)
        while not (items := await host.queues.receive(work, limit=1, visibility=timedelta(0))):
            for message in await host.queues.receive(control, limit=16, visibility=hold):
                await host.handlers[control](msg=queue_message(message, decode_body(message.text)))
                await host.queues.delete(message)
        (item,) = items
        first = queue_message(item, decode_body(item.text))
        await host.handlers[work](msg=first)
        # The host lost track (a crash before its delete): the message comes back.
        redelivered = queue_message(
            type(item)(**{**_fields(item), "dequeue_count": 2}), decode_body(item.text)
        )
        await host.handlers[work](msg=redelivered)
        assert calls == ["once"]
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def test_the_work_item_function_leaves_its_message_to_the_host(store: AzureStore) -> None:
    """Whether it runs the activity, finds a copy held or the result recorded, or poisons
    the item, the function only returns: the host's delete is the one that deletes."""
    calls: list[str] = []
    app = DurableApp(store=store)

    @app.activity()
    def slow(word: str) -> str:
        time.sleep(0.3)  # long enough for a second copy to arrive while this one runs
        calls.append(word)
        return word.upper()

    @app.orchestrator()
    def once(ctx: OrchestrationContext, word: str) -> Orchestrator[str]:
        result: str = yield ctx.call_activity(slow, word)
        return result

    work = app.settings.work_queue
    hold = timedelta(minutes=1)

    async def next_item(host: FakeHost, instance_id: str) -> QueuedMessage:
        await host.start("once", instance_id, json.dumps(instance_id).encode())
        while not (items := await host.queues.receive(work, limit=1, visibility=hold)):
            for queue in app.settings.control_queues:
                for message in await host.queues.receive(queue, limit=16, visibility=hold):
                    await host.invoke(message)
        return items[0]

    async def scenario() -> None:
        host = FakeHost(app, open_queues(store))
        # A second copy of a task (a put whose response was lost) arrives while it runs.
        item = await next_item(host, "copied")
        await host.queues.send(work, item.text)
        (copy,) = await host.queues.receive(work, limit=1, visibility=hold)
        await asyncio.gather(host.invoke(item), host.invoke(copy))
        assert calls == ["copied"]
        assert host.gone == []
        # The result is recorded, but the host lost track and delivers the message again.
        item = await next_item(host, "recorded")
        await host.handlers[work](msg=queue_message(item, decode_body(item.text)))
        again = await host.queues.update_visibility(item, timedelta(0))
        assert again is not None, "the function deleted the host's message"
        (redelivered,) = await host.queues.receive(work, limit=1, visibility=hold)
        await host.invoke(redelivered)
        assert calls == ["copied", "recorded"]
        # Delivered once more than the store allows: poisoned, and deleted by the host.
        item = await next_item(host, "spent")
        for _ in range(app.runtime.host_config.queues.max_dequeue_count):
            await host.queues.update_visibility(item, timedelta(0))
            (item,) = await host.queues.receive(work, limit=1, visibility=hold)
        await host.invoke(item)
        (poisoned,) = await store.poisoned_messages(instance_id="spent")
        assert poisoned.reason.startswith("delivered 5 times")
        assert calls == ["copied", "recorded"]
        assert host.gone == []
        await host.queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())


def _fields(message: Any) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__slots__}


def test_a_queue_of_another_account_is_left_to_the_host_to_poison(store: AzureStore) -> None:
    app = build(store, [])

    @app.event_queue(
        queue_name="elsewhere",
        event_name="E",
        instance_id=lambda body: body["id"],
        connection="OtherStorage",
    )
    def other(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @app.event_queue(queue_name="local", event_name="E", instance_id=lambda body: body["id"])
    def local(body: dict[str, Any]) -> dict[str, Any]:
        return body

    functions = {f.get_function_name(): f.get_user_function() for f in app.get_functions()}
    now = datetime.now(UTC)
    raw = QueuedMessage("elsewhere", "m1", "r", encode_body("not json"), 1, now, now)

    async def scenario() -> None:
        # The store's account is not that queue's: the host retries it and poisons it.
        with pytest.raises(MessageRejected, match="not valid JSON"):
            await functions["other"](msg=queue_message(raw, b"not json"))
        await functions["local"](msg=queue_message(raw, b"not json"))
        queues = open_queues(store)
        (poisoned,) = await queues.receive("local-poison", limit=5, visibility=timedelta(0))
        assert "not valid JSON" in json.loads(decode_body(poisoned.text))["reason"]
        await queues.close()

    asyncio.run(scenario())
    asyncio.run(app.runtime.aclose())
