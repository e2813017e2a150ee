"""Partitioned control queues on Azurite: the count, where wake-ups go, what a worker polls.

An instance's wake-ups go to ``<hub>-control-NN``, NN = FNV-1a of its id
modulo the hub's partition count (``DURABLE_FX_PARTITIONS``, 4 by default,
fixed per hub by its ``hub.json``). Workers poll every partition and the
legacy ``<hub>-control`` of hubs made before partitions, which still drains.
The Functions side (one function per partition, the legacy drain under the
host) is in ``test_bindings_azure`` and ``test_bindings_indexing``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient, QueueServiceClient

from durable_fx import AsyncDurableClient, DurableApp, DurableClient, OrchestrationStatus, Worker
from durable_fx.bindings import FunctionsSettings
from durable_fx.storage.azure import AzureStore, PartitionCountError, open_azure_store
from durable_fx.storage.azure._poller import ControlPolls
from durable_fx.storage.azure._settings import HubNames, partition_of, settings_from_url
from tests.apps.steps_app import registry, three_steps
from tests.support.azurite import Azurite, new_hub

WAIT = 60.0
DEV = "UseDevelopmentStorage=true"


# -- the count (no network) ----------------------------------------------------------------------


def test_the_count_comes_from_the_argument_else_the_url_else_the_setting() -> None:
    env = {"DURABLE_FX_PARTITIONS": "8"}
    assert settings_from_url(DEV, environ={}).partitions == 4
    assert settings_from_url(DEV, environ=env).partitions == 8
    assert settings_from_url(f"{DEV};Partitions=2", environ=env).partitions == 2
    assert settings_from_url(f"{DEV};Partitions=2", partitions=16, environ=env).partitions == 16
    assert settings_from_url("azure://acct?partitions=3", environ=env).partitions == 3
    names = settings_from_url(DEV, environ=env).names
    assert names.control_partitions[-1] == "durablefx-control-07"
    # The app reads the same places, so its functions bind to the store's queues.
    assert FunctionsSettings.from_environment(env).partitions == 8
    assert FunctionsSettings.from_environment({}).partitions == 4
    app = FunctionsSettings.from_environment(env, store_url=f"{DEV};Partitions=2")
    assert app.control_queues == ("durablefx-control-00", "durablefx-control-01")


@pytest.mark.parametrize("bad", ["0", "17", "-1", "four", "2.5"])
def test_a_bad_count_is_refused_naming_where_it_came_from(bad: str) -> None:
    allowed = "must be a whole number from 1 to 16"
    with pytest.raises(ValueError, match=f"DURABLE_FX_PARTITIONS {allowed}"):
        settings_from_url(DEV, environ={"DURABLE_FX_PARTITIONS": bad})
    with pytest.raises(ValueError, match=f"partitions option {allowed}"):
        settings_from_url(f"{DEV};Partitions={bad}", environ={})
    with pytest.raises(ValueError, match=f"partitions option {allowed}"):
        settings_from_url(f"azure://acct?partitions={bad}", environ={})
    with pytest.raises(ValueError, match=f"DURABLE_FX_PARTITIONS {allowed}"):
        FunctionsSettings.from_environment({"DURABLE_FX_PARTITIONS": bad})


def test_an_instances_partition_is_fnv1a_of_its_id() -> None:
    # FNV-1a (32 bit) of "a" is 0xE40C292C; of "" the offset basis 0x811C9DC5.
    assert partition_of("a", 1 << 16) == 0x292C
    assert partition_of("", 1 << 16) == 0x9DC5
    names = HubNames.of("shop", 16)
    assert names.control_queue_of("a") == "shop-control-12"  # 0xE40C292C % 16
    assert {partition_of(f"order-{n}", 4) for n in range(40)} == {0, 1, 2, 3}


def test_an_app_binds_to_its_stores_partitions_and_refuses_a_store_with_others() -> None:
    two = open_azure_store(f"{DEV};TaskHub=shop", partitions=2)  # opening makes no requests
    four = open_azure_store(f"{DEV};TaskHub=shop", partitions=4)
    try:
        app = DurableApp(store=two)
        functions = {str(f.get_function_name()) for f in app.get_functions()}
        assert {f for f in functions if f.startswith("dfx_control")} == {
            "dfx_control_00",
            "dfx_control_01",
            "dfx_control",
        }
        with pytest.raises(ValueError, match="the store has 4 control partitions but the app"):
            app.use_store(four)
        app.use_store(two)
    finally:
        asyncio.run(two.close())
        asyncio.run(four.close())


# -- which queue polls --------------------------------------------------------------------------


def _next_timed(polls: ControlPolls) -> tuple[str, ...]:
    """The next round the back-off chooses (it is due every few milliseconds here)."""
    while not (round_ := polls.due()).timed:
        pass
    polls.polled(round_, found=False)
    return round_.queues


def test_every_timed_poll_takes_every_control_queue() -> None:
    # A message another process sent to any partition is found within one back-off
    # interval, however many partitions there are (it used to be one queue per step:
    # up to (partitions + 1) intervals, 400 s with 4 partitions).
    queues = ("q0", "q1", "q2")
    polls = ControlPolls(queues, (0.001, 0.001))
    assert [_next_timed(polls) for _ in range(4)] == [queues] * 4
    while not (round_ := polls.due()).timed:
        pass
    polls.polled(round_, found=True)
    assert _next_timed(polls) == queues


def test_a_queue_this_process_sent_to_is_polled_alone() -> None:
    polls = ControlPolls(("q0", "q1", "q2"), (3600.0, 3600.0))
    polls.polled(polls.due(), found=False)  # the first sweep; the next is an hour away
    assert polls.due().queues == ()
    polls.kick("q2")
    assert polls.kicked
    round_ = polls.due()
    assert (round_.queues, round_.timed) == (("q2",), False)
    polls.polled(round_, found=True)
    assert polls.due().queues == () and not polls.kicked
    polls.expect("q1", timedelta(0))
    polls.expect("q0", timedelta(hours=1))
    assert polls.due().queues == ("q1",)
    next_expected = polls.next_expected()
    assert next_expected is not None and next_expected > 3000


# -- on Azurite ---------------------------------------------------------------------------------


class Receives(SansIOHTTPPolicy[Any, Any]):
    """Notes the queue of every receive request (a GET of messages that is not a peek)."""

    def __init__(self) -> None:
        self.queues: list[str] = []

    def on_request(self, request: PipelineRequest[Any]) -> None:
        http = request.http_request
        path = urlsplit(http.url).path
        if http.method == "GET" and path.endswith("/messages") and "peekonly" not in http.url:
            self.queues.append(path.split("/")[-2])


def _open(azurite: Azurite, hub: str, **options: Any) -> AzureStore:
    return open_azure_store(azurite.connection_string(hub), **options)


@pytest.fixture
def hub() -> str:
    return new_hub()


@pytest.fixture
def starter(azurite: Azurite, hub: str) -> Iterator[AzureStore]:
    """A store that only starts and raises (it never polls: not a worker)."""
    store = _open(azurite, hub)
    yield store
    asyncio.run(store.close())


def _peek(azurite: Azurite, queue: str) -> list[str]:
    """The visible messages of ``queue``, decoded (left where they are)."""
    with QueueClient.from_connection_string(azurite.connection_string(), queue) as client:
        return [base64.b64decode(m.content).decode() for m in client.peek_messages(32)]


def _send_legacy(azurite: Azurite, queue: str, body: dict[str, Any], delay: int = 0) -> None:
    """A message written the way stores before partitions wrote it (Base64 JSON)."""
    text = base64.b64encode(json.dumps(body).encode()).decode()
    with QueueClient.from_connection_string(azurite.connection_string(), queue) as client:
        client.send_message(text, visibility_timeout=delay, time_to_live=-1)


def _clear(azurite: Azurite, queue: str) -> None:
    with QueueClient.from_connection_string(azurite.connection_string(), queue) as client:
        client.clear_messages()


def _ids_in_every_partition(count: int, prefix: str) -> list[str]:
    """Instance ids, one per partition, in partition order."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < count:
        found.setdefault(partition_of(f"{prefix}-{n}", count), f"{prefix}-{n}")
        n += 1
    return [found[p] for p in range(count)]


@pytest.mark.azurite
def test_wake_ups_go_to_the_instances_partition_and_every_queue_exists(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    names = starter.settings.names
    ids = _ids_in_every_partition(4, "start")

    async def start_all() -> None:
        client = AsyncDurableClient(starter)
        for iid in ids:
            await client.start(three_steps, 1, instance_id=iid)

    asyncio.run(start_all())
    for partition, iid in enumerate(ids):
        queue = names.control_partition(partition)
        assert queue == names.control_queue_of(iid)
        assert [json.loads(text)["h"] for text in _peek(azurite, queue)] == [iid]
    assert _peek(azurite, names.legacy_control_queue) == []

    service = QueueServiceClient.from_connection_string(azurite.connection_string())
    made = {q.name for q in service.list_queues(name_starts_with=f"{hub}-")}
    carriers = {*names.control_partitions, names.legacy_control_queue, names.work_queue}
    assert made == carriers | {f"{q}-poison" for q in carriers}
    container = ContainerClient.from_connection_string(azurite.connection_string(), names.container)
    with container:
        assert json.loads(container.download_blob("hub.json").readall()) == {"partitions": 4}


@pytest.mark.azurite
def test_a_hub_keeps_the_partition_count_it_was_set_up_with(azurite: Azurite, hub: str) -> None:
    first, other, same = (_open(azurite, hub, partitions=n) for n in (2, 4, 2))

    async def scenario() -> None:
        assert await first.get_instance("nobody") is None  # sets the hub up: 2 partitions
        with pytest.raises(PartitionCountError) as refused:
            await other.get_instance("nobody")
        message = str(refused.value)
        assert "set up with 2 partitions" in message and "with 4 partitions" in message
        assert (refused.value.recorded, refused.value.configured) == (2, 4)
        with pytest.raises(PartitionCountError):  # and again: it is not cached as set up
            await other.get_instance("nobody")
        assert await same.get_instance("nobody") is None

    try:
        asyncio.run(scenario())
    finally:
        for store in (first, other, same):
            asyncio.run(store.close())
    service = QueueServiceClient.from_connection_string(azurite.connection_string())
    made = {q.name for q in service.list_queues(name_starts_with=f"{hub}-control-")}
    partitions = {f"{hub}-control-0{i}{tail}" for i in (0, 1) for tail in ("", "-poison")}
    assert made == {*partitions, f"{hub}-control-poison"}, "no queues of the refused count"


@pytest.mark.azurite
def test_of_two_first_setups_with_different_counts_one_wins(azurite: Azurite, hub: str) -> None:
    stores = [_open(azurite, hub, partitions=n) for n in (3, 5)]

    async def scenario() -> None:
        outcomes = await asyncio.gather(
            *(s.get_instance("nobody") for s in stores), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, PartitionCountError)]
        assert len(refused) == 1 and outcomes.count(None) == 1, outcomes

    try:
        asyncio.run(scenario())
    finally:
        for store in stores:
            asyncio.run(store.close())


@pytest.mark.azurite
def test_an_unreadable_hub_record_is_refused_not_overwritten(azurite: Azurite, hub: str) -> None:
    names = HubNames.of(hub)
    with ContainerClient.from_connection_string(
        azurite.connection_string(), names.container
    ) as container:
        container.create_container()
        container.upload_blob("hub.json", b"not json")

    store = _open(azurite, hub)

    async def scenario() -> None:
        with pytest.raises(PartitionCountError, match="has no valid partition count"):
            await store.get_instance("nobody")

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(store.close())
    with ContainerClient.from_connection_string(
        azurite.connection_string(), names.container
    ) as container:
        assert container.download_blob("hub.json").readall() == b"not json"


@pytest.mark.azurite
def test_a_worker_runs_what_another_process_starts_in_every_partition(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    worker_store = _open(azurite, hub, idle_poll=(0.05, 0.5))
    ids = _ids_in_every_partition(4, "elsewhere") + [f"more-{n}" for n in range(8)]
    try:
        with Worker(registry, worker_store), DurableClient(starter) as client:
            for iid in ids:
                client.start(three_steps, 1, instance_id=iid)
            for iid in ids:
                state = client.wait(iid, timeout=WAIT)
                assert (state.status, state.output) == (OrchestrationStatus.COMPLETED, 4)
    finally:
        asyncio.run(worker_store.close())


@pytest.mark.azurite
def test_every_idle_round_polls_every_queue_so_work_from_elsewhere_waits_one_step(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    receives = Receives()
    store = _open(azurite, hub, idle_poll=(0.05, 0.05), policies=[receives])
    names = store.settings.names
    everything = set(names.control_queues)
    rounds = len(everything)
    lease = timedelta(seconds=30)

    async def lock_until(receive_count: int) -> list[str]:
        found: list[str] = []
        while len(receives.queues) < receive_count:
            batch = await store.lock_orchestrations(owner="w", limit=8, lease=lease)
            found += [item.instance.instance_id for item in batch.items]
            await asyncio.sleep(0.01)
        return found

    async def scenario() -> None:
        # Each call that polls at all (the back-off fell due) polls every queue.
        polled: list[set[str]] = []
        while len(polled) < 4:
            mark = len(receives.queues)
            await store.lock_orchestrations(owner="w", limit=8, lease=lease)
            if len(receives.queues) > mark:
                polled.append(set(receives.queues[mark:]))
            await asyncio.sleep(0.01)
        assert polled == [everything] * 4
        # Another process starts an instance in partition 2: the next round finds it.
        iid = _ids_in_every_partition(4, "late")[2]
        await AsyncDurableClient(starter).start(three_steps, 1, instance_id=iid)
        mark = len(receives.queues)
        found: list[str] = []
        while not found:
            found = await lock_until(len(receives.queues) + 1)
        assert found == [iid]
        # The round under way when it was sent may have passed partition 2 already;
        # the next one finds it (the old rotation took up to rounds + 1 rounds).
        assert len(receives.queues) - mark < 2 * rounds, "found by the next round"

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(store.close())


@pytest.mark.azurite
def test_a_wake_up_this_worker_sends_is_polled_for_on_its_queue_alone(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    receives = Receives()
    # Timed polls an hour apart: only the wake-up this process sends makes it look again.
    store = _open(azurite, hub, idle_poll=(3600.0, 3600.0), policies=[receives])
    iid = "waits-for-approval"
    lease = timedelta(seconds=30)

    async def scenario() -> None:
        await store.lock_orchestrations(owner="w", limit=8, lease=lease)  # the first sweep
        # Started elsewhere after that sweep: its wake-up waits for the next timed poll.
        await AsyncDurableClient(starter).start(three_steps, 1, instance_id=iid)
        mark = len(receives.queues)
        assert (await store.lock_orchestrations(owner="w", limit=8, lease=lease)).items == []
        assert receives.queues[mark:] == []
        # This worker sends it a message: it looks at that partition at once, only there.
        await AsyncDurableClient(store).raise_event(iid, "approved", "ana")
        batch = await store.lock_orchestrations(owner="w", limit=8, lease=lease)
        assert [item.instance.instance_id for item in batch.items] == [iid]
        # (A receive that finds messages asks once more, to fill its batch.)
        assert set(receives.queues[mark:]) == {store.settings.names.control_queue_of(iid)}

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(store.close())


@pytest.mark.azurite
def test_a_worker_drains_wake_ups_left_on_the_legacy_control_queue(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    """A hub made before partitions: its wake-ups wait on ``<hub>-control``, some delayed."""
    names = starter.settings.names
    ids = ["old-now", "old-later"]
    with DurableClient(starter) as client:
        for iid in ids:
            client.start(three_steps, 1, instance_id=iid)
    for queue in names.control_partitions:
        _clear(azurite, queue)  # as if the old store had sent them...
    _send_legacy(azurite, names.legacy_control_queue, {"h": "old-now"})  # ...here
    _send_legacy(azurite, names.legacy_control_queue, {"h": "old-later"}, delay=2)
    worker_store = _open(azurite, hub, idle_poll=(0.05, 0.5))
    try:
        with Worker(registry, worker_store), DurableClient(starter) as client:
            for iid in ids:
                state = client.wait(iid, timeout=WAIT)
                assert (state.status, state.output) == (OrchestrationStatus.COMPLETED, 4)
    finally:
        asyncio.run(worker_store.close())


@pytest.mark.azurite
def test_poisoned_control_messages_name_their_partition_and_go_back_there(
    azurite: Azurite, hub: str, starter: AzureStore
) -> None:
    names = starter.settings.names
    store = _open(azurite, hub, max_dequeue_count=1)
    lease = timedelta(seconds=30)
    iid = _ids_in_every_partition(4, "poisoned")[1]

    async def scenario() -> None:
        client = AsyncDurableClient(store)
        await client.start(three_steps, 1, instance_id=iid)
        # An undecodable wake-up on partition 3, and an episode that fails its one delivery.
        _send_legacy(azurite, names.control_partition(3), {"not": "a wake-up"})
        deadline = time.monotonic() + WAIT
        items: list[Any] = []
        while not items:
            assert time.monotonic() < deadline
            items = (await store.lock_orchestrations(owner="w", limit=8, lease=lease)).items
        for item in items:
            await store.abandon_orchestration(item, reason="broken", retry_after=timedelta(0))
        poisoned = await client.poisoned()
        by_instance = {p.instance_id: p for p in poisoned}
        assert set(by_instance) == {None, iid}
        copies = {
            queue: [json.loads(t)["id"] for t in _peek(azurite, f"{queue}-poison")]
            for queue in names.control_queues
        }
        assert copies[names.control_partition(3)] == [by_instance[None].poison_id]
        assert copies[names.control_partition(1)] == [by_instance[iid].poison_id]
        assert sum(len(c) for c in copies.values()) == 2

        # Requeued (by another process: this one owns the instance and would keep the event
        # to itself): the undecodable one to the queue it came from, a wake-up to the partition.
        _clear(azurite, names.control_partition(1))  # the guard of the abandoned episode
        elsewhere = AsyncDurableClient(starter)
        assert await elsewhere.requeue_poisoned([p.poison_id for p in poisoned]) == 2
        assert _peek(azurite, names.control_partition(3)) == ['{"not": "a wake-up"}']
        assert [json.loads(t)["h"] for t in _peek(azurite, names.control_partition(1))] == [iid]

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(store.close())
