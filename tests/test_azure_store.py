"""The Azure store on a real Azurite: payloads, big episodes, faults, costs, and settings.

The conformance suite and every end-to-end test of the core also run on
Azurite (the ``azure`` store kind in conftest); this module covers what only
the Azure store has.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy

from durable_fx import (
    DurableClient,
    OrchestrationStatus,
    Worker,
    open_store,
)
from durable_fx.storage.azure import AzureStore, FaultInjector, open_azure_store
from durable_fx.storage.azure._settings import HubNames, settings_from_url
from tests.apps.steps_app import big_payload, fan_out, large_output, registry, three_steps
from tests.support.azurite import Azurite, new_hub
from tests.support.workers import assert_history_consistent

WAIT = 60.0


# -- connection settings (no network) ----------------------------------------------------------

KEY = "a2V5"  # any base64 text; nothing here connects


class TestSettings:
    def test_development_storage_points_at_azurite(self) -> None:
        settings = settings_from_url("UseDevelopmentStorage=true", environ={})
        assert settings.account == "devstoreaccount1"
        assert settings.endpoint("queue") == "http://127.0.0.1:10001/devstoreaccount1"
        assert settings.endpoint("table") == "http://127.0.0.1:10002/devstoreaccount1"
        assert settings.account_key and settings.hub == "durablefx"

    def test_account_key_connection_string(self) -> None:
        url = (
            f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={KEY};"
            "EndpointSuffix=core.windows.net"
        )
        settings = settings_from_url(url, environ={})
        assert settings.endpoint("blob") == "https://acme.blob.core.windows.net"
        assert settings.account_key == KEY and not settings.use_identity
        assert "AccountKey" not in repr(settings) and KEY not in repr(settings)

    def test_explicit_endpoints_sas_and_task_hub(self) -> None:
        url = (
            "AccountName=acme;SharedAccessSignature=sv=1&sig=x;"
            "QueueEndpoint=http://q.example/acme/;TableEndpoint=http://t.example/acme;"
            "BlobEndpoint=http://b.example/acme;TaskHub=Orders2"
        )
        settings = settings_from_url(url, environ={})
        assert settings.endpoint("queue") == "http://q.example/acme"
        assert settings.sas_token == "sv=1&sig=x" and settings.account_key is None
        assert settings.hub == "orders2"

    def test_hub_argument_beats_url_beats_environment(self) -> None:
        env = {"DURABLE_FX_HUB": "fromenv"}
        url = "UseDevelopmentStorage=true;TaskHub=fromurl"
        assert settings_from_url(url, hub="fromarg", environ=env).hub == "fromarg"
        assert settings_from_url(url, environ=env).hub == "fromurl"
        assert settings_from_url("UseDevelopmentStorage=true", environ=env).hub == "fromenv"

    def test_hub_names_are_valid_for_every_service(self) -> None:
        names = HubNames.of("MyApp1")
        assert names.table == "myapp1state"
        assert names.legacy_control_queue == "myapp1-control"
        assert names.control_partitions == tuple(f"myapp1-control-0{i}" for i in range(4))
        assert len(names.poison(names.work_queue)) <= 63
        longest = HubNames.of("a" * 40, 16)
        assert len(longest.work_queue) <= 56 and len(longest.poison(longest.work_queue)) <= 63
        assert all(len(longest.poison(q)) <= 63 for q in longest.control_queues)

    @pytest.mark.parametrize("bad", ["ab", "has-dash", "9lives", "x" * 41, "spa ce"])
    def test_bad_hub_names_say_what_is_allowed(self, bad: str) -> None:
        with pytest.raises(ValueError, match="letters and digits"):
            HubNames.of(bad)

    @pytest.mark.parametrize(
        ("url", "complaint"),
        [
            ("AccountKey=abc", "no AccountName"),
            ("AccountName=acme", "neither AccountKey"),
            ("AccountName=acme;AccountKey=k;garbage", "malformed"),
            ("AccountName=acme;AccountKey=k;DefaultEndpointsProtocol=ftp", "http or https"),
            ("azure://Bad_Name", "invalid storage account name"),
            ("azure://acme?colour=blue", "unknown azure:// parameters"),
            ("azure://", "AzureWebJobsStorage__accountName"),
        ],
    )
    def test_bad_connection_strings_say_what_is_wrong(self, url: str, complaint: str) -> None:
        with pytest.raises(ValueError, match=complaint) as error:
            settings_from_url(url, environ={})
        assert "AccountKey=k" not in str(error.value)

    def test_azure_url_uses_identity(self) -> None:
        settings = settings_from_url("azure://acme?hub=billing&client_id=abc", environ={})
        assert settings.use_identity and not settings.managed_identity
        assert settings.client_id == "abc" and settings.hub == "billing"
        assert settings.endpoint("table") == "https://acme.table.core.windows.net"

    def test_functions_identity_settings(self) -> None:
        env = {
            "AzureWebJobsStorage__accountName": "acme",
            "AzureWebJobsStorage__queueServiceUri": "https://acme.queue.core.usgovcloudapi.net/",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "1111-2222",
        }
        settings = settings_from_url("azure://", environ=env)
        assert settings.managed_identity and settings.client_id == "1111-2222"
        assert settings.endpoint("queue") == "https://acme.queue.core.usgovcloudapi.net"
        assert settings.endpoint("blob") == "https://acme.blob.core.windows.net"

    def test_service_uris_alone_name_the_account(self) -> None:
        env = {
            f"AzureWebJobsStorage__{s}ServiceUri": f"https://acme.{s}.core.windows.net"
            for s in ("blob", "queue", "table")
        }
        assert settings_from_url("azure://", environ=env).account == "acme"

    def test_settings_build_clients_without_network(self) -> None:
        from azure.identity.aio import ManagedIdentityCredential

        from durable_fx.storage.azure._resources import Resources

        env = {
            "AzureWebJobsStorage__accountName": "acme",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "cid",
        }
        settings = settings_from_url("azure://?hub=shop", environ=env)

        async def build() -> None:
            resources = Resources(settings, [])
            try:
                assert isinstance(resources._credential, ManagedIdentityCredential)
                assert resources.table.table_name == "shopstate"
                assert resources.queues["shop-control"].url.startswith("https://acme.queue.")
                assert resources.container.container_name == "shop-payloads"
            finally:
                await resources.close()

        asyncio.run(build())

    def test_default_store_url_picks_identity_settings(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from durable_fx.storage import default_store_url

        monkeypatch.delenv("DURABLE_FX_STORE", raising=False)
        monkeypatch.delenv("AzureWebJobsStorage", raising=False)
        monkeypatch.setenv("AzureWebJobsStorage__accountName", "acme")
        assert default_store_url() == "azure://"


def test_a_sqlite_only_process_never_imports_the_azure_sdk(tmp_path: Any) -> None:
    code = (
        "import sys, asyncio, durable_fx\n"
        f"store = durable_fx.open_store('sqlite:///{tmp_path / 'x.db'}')\n"
        "asyncio.run(store.close())\n"
        "assert not [m for m in sys.modules if m.startswith('azure')], 'azure imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a worker and a client on Azurite ---------------------------------------------------------


@pytest.fixture
def azure_url(azurite: Azurite) -> str:
    return azurite.connection_string(new_hub())


@pytest.fixture
def azure_store(azure_url: str) -> Iterator[AzureStore]:
    store = open_store(azure_url)
    assert isinstance(store, AzureStore)
    yield store
    asyncio.run(store.close())


async def _blob_names(store: AzureStore, prefix: str) -> list[str]:
    hub = store._hub

    async def names() -> list[str]:
        return [b.name async for b in hub.resources.container.list_blobs(name_starts_with=prefix)]

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(names(), store._portal.loop))


@pytest.mark.azurite
@pytest.mark.parametrize("size", [1_000_000, 10_000_000], ids=["1MB", "10MB"])
def test_large_inputs_and_outputs_go_to_blobs_and_purge_deletes_them(
    azure_store: AzureStore, size: int
) -> None:
    text = "é" * (size // 2)  # two UTF-8 bytes each: size bytes
    with Worker(registry, azure_store), DurableClient(azure_store) as client:
        iid = client.start(big_payload, text, instance_id="big")
        state = client.wait(iid, timeout=WAIT)
        assert state.status is OrchestrationStatus.COMPLETED, state.failure
        assert state.output == text + "!!!?"
        assert state.input == text
        history = client.get(iid, history=True)
        assert history is not None and history.history is not None
        assert_history_consistent(history)
        assert asyncio.run(_blob_names(azure_store, "big/")), "nothing was offloaded"
        assert client.purge(iid)
        assert asyncio.run(_blob_names(azure_store, "big/")) == [], "purge left payload blobs"


@pytest.mark.azurite
@pytest.mark.slow
def test_episode_beyond_one_transaction_commits_whole(azure_store: AzureStore) -> None:
    """A 5,000-activity fan-out (far over 100 rows per transaction) and a 3 MB output."""
    with Worker(registry, azure_store), DurableClient(azure_store) as client:
        wide = client.start(fan_out, 5000, instance_id="wide")
        big = client.start(large_output, 3_000_000, instance_id="bigout")
        state = client.wait(wide, timeout=240)
        assert state.status is OrchestrationStatus.COMPLETED, state.failure
        assert state.output == sum(range(1, 5001))
        history = client.get(wide, history=True)
        assert history is not None
        assert_history_consistent(history)
        kinds = [e.kind for e in history.history or []]
        assert kinds.count("TaskScheduled") == kinds.count("TaskCompleted") == 5000
        out = client.wait(big, timeout=WAIT)
        assert out.status is OrchestrationStatus.COMPLETED and out.output == "x" * 3_000_000


@pytest.mark.azurite
@pytest.mark.slow
def test_one_hundred_orchestrations_survive_failing_storage_calls(azure_url: str) -> None:
    """7% of requests fail, half after the service applied them; results stay exact."""
    faults = FaultInjector(0.07, seed=7)
    store = open_azure_store(azure_url, policies=[faults])
    try:
        with Worker(registry, store, lease=_seconds(5)), DurableClient(store) as client:
            ids = [client.start(three_steps, n, instance_id=f"f-{n:03d}") for n in range(100)]
            for n, iid in enumerate(ids):
                state = client.wait(iid, timeout=120)
                assert state.status is OrchestrationStatus.COMPLETED, (iid, state.failure)
                assert state.output == n + 3
            faults.enabled = False
            for iid in ids:
                full = client.get(iid, history=True)
                assert full is not None
                assert_history_consistent(full)
        assert faults.failed_before > 20 and faults.failed_after > 20, vars(faults)
    finally:
        asyncio.run(store.close())


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


@pytest.mark.azurite
def test_requests_per_activity_and_an_idle_store(azure_store: AzureStore) -> None:
    """Counted by the store's pipeline policy: a small W1, then nothing while idle."""
    with Worker(registry, azure_store), DurableClient(azure_store) as client:
        warm = client.start(three_steps, 0)
        client.wait(warm, timeout=WAIT)
        before = azure_store.requests.total
        ids = [client.start(three_steps, n) for n in range(20)]
        for iid in ids:
            client.wait(iid, timeout=WAIT)
        used = azure_store.requests.total - before
    # The client's waits poll get_instance: count them out by bounding generously.
    assert used / 60 <= 8, f"{used} requests for 60 activities"
    idle = azure_store.requests.total
    time.sleep(1.0)
    assert azure_store.requests.total == idle, "a store with no calls made requests"


@pytest.mark.parametrize("pause", [0.0, 0.002, 0.01])
def test_closing_settles_the_calls_in_flight(azure_url: str, pause: float) -> None:
    # A fresh hub: the first calls wait for its table, queues and container.
    # Closing meanwhile lets them finish (or refuses those not begun), rather
    # than stranding them on a stopped loop, where their callers saw a bare
    # CancelledError and their tasks and HTTP sessions were left open.
    async def call_then_close() -> list[object]:
        store = open_store(azure_url)
        calls = [asyncio.ensure_future(store.get_instance(f"i-{n}")) for n in range(8)]
        await asyncio.sleep(pause)
        await store.close()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(call_then_close())
    assert all(o is None or isinstance(o, RuntimeError) for o in outcomes), outcomes


class _Hang(AsyncHTTPPolicy[Any, Any]):
    """Holds every request until cancelled; counts the ones unwound."""

    def __init__(self) -> None:
        self.unwound = 0

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        try:
            await asyncio.Event().wait()
        finally:
            self.unwound += 1
        raise AssertionError("unreachable")


def test_closing_unwinds_the_store_work_its_callers_gave_up_on(azure_url: str) -> None:
    # The caller stops waiting; the hub's first set-up (shared by every call, so no
    # caller's cancel stops it) still hangs on storage. Closing must unwind it too:
    # left pending on the stopped loop, its requests' connections stayed open until
    # the garbage collector found them ("unclosed transport").
    hang = _Hang()

    async def give_up_then_close() -> None:
        store = open_azure_store(azure_url, policies=[hang])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.get_instance("i-1"), 0.2)
        await store.close()

    asyncio.run(give_up_then_close())
    assert hang.unwound >= 1


class _RefuseContainerHangQueues(_Hang):
    """The container's creation is refused for good; each queue's creation hangs."""

    def __init__(self, queue_port: int) -> None:
        super().__init__()
        self._queues = f":{queue_port}/"

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        if http.method == "PUT" and "restype=container" in http.url:
            raise ClientAuthenticationError("test: this identity may not create containers")
        if http.method == "PUT" and self._queues in http.url:
            return await super().send(request)
        return await self.next.send(request)


def test_a_failed_first_set_up_stops_its_other_requests(azurite: Azurite) -> None:
    # The container cannot be made, so the hub's set-up fails; the queues' creations
    # still in flight stop with it rather than retry on in the background.
    policy = _RefuseContainerHangQueues(azurite.queue_port)

    async def first_call() -> int:
        store = open_azure_store(azurite.connection_string(new_hub()), policies=[policy])
        try:
            with pytest.raises(ClientAuthenticationError):
                await store.get_instance("i-1")
            return policy.unwound
        finally:
            await store.close()

    assert asyncio.run(first_call()) >= 4  # every partition's control queue, at least
