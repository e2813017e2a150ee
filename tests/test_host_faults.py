"""Host mode under storage faults and crashes: no instance is stranded, nothing poisoned.

``Host`` (``tests/support/host_faults.py``) plays the Functions host as its
``QueueProcessor`` does; its own requests do not fail, the app's store gets
the faults.

The targeted tests each break one step of an invocation; the soak at the end
breaks every kind of request at random, crashes invocations between steps and
takes storage away for a while.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import HttpRequest

from durable_fx import (
    AsyncDurableClient,
    DurableApp,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
)
from durable_fx.queues import open_queues
from durable_fx.storage.azure import AzureStore, _transient, open_azure_store
from durable_fx.storage.azure._settings import partition_of
from tests.support.azure_faults import Fail, result_transaction
from tests.support.azurite import Azurite, new_hub
from tests.support.host_faults import (
    KILL_POINTS,
    MAX_DEQUEUE_COUNT,
    Host,
    Instance,
    Outage,
    chain_instance,
    soak,
)
from tests.support.workers import assert_history_consistent

pytestmark = [pytest.mark.azurite]

_QUICK_ATTEMPTS = 3
NO_GUARD_IN_TIME = timedelta(minutes=2)
"""A lease so long that an invocation's guard (due after it) cannot be what rescues the
instance within a test's timeout: what is tested must."""


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store gives up on a failing request after 3 quick tries instead of ~6 s."""
    monkeypatch.setattr(_transient, "_ATTEMPTS", _QUICK_ATTEMPTS)
    monkeypatch.setattr(_transient, "_MAX_DELAY", 0.1)


class Chain:
    """An app on a fresh hub whose ``chain`` runs three ``step`` activities in a row."""

    def __init__(self, azurite: Azurite, *policies: Any, lease: timedelta | None = None) -> None:
        url = azurite.connection_string(new_hub())
        self.store: AzureStore = open_azure_store(url, policies=list(policies))
        # The test's own view of the hub, on storage that does not fail.
        self.monitor: AzureStore = open_azure_store(url)
        self.client = AsyncDurableClient(self.monitor)
        self.app = app = DurableApp(store=self.store)
        if lease is not None:
            app.runtime.settings = dataclasses.replace(app.runtime.settings, lease=lease)
        self.host = Host([Instance(app)], open_queues(self.store))
        self.steps: list[int] = []
        self.before_step: Callable[[int], None] = lambda n: None

        @app.activity()
        def step(n: int) -> int:
            self.before_step(n)
            self.steps.append(n)
            return n + 1

        @app.orchestrator()
        def chain(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
            for _ in range(3):
                n = yield ctx.call_activity(step, n)
            return n

        self.chain = chain

    async def start(self, instance_id: str, n: int = 0) -> str:
        return await self.client.start(self.chain, n, instance_id=instance_id)

    async def finish(self, instance_id: str, timeout: float) -> None:
        """Run until ``instance_id`` completed; check its output and history."""
        client = self.client

        async def finished() -> bool:
            state = await client.get(instance_id)
            return state is not None and state.status.is_terminal

        await self.host.run_until(finished, timeout)
        state = await client.get(instance_id, history=True)
        assert state is not None and state.status is OrchestrationStatus.COMPLETED, state
        assert state.output == 3
        assert_history_consistent(state)

    async def close(self) -> None:
        await self.host.close()
        await self.store.close()
        await self.monitor.close()


def _body(request: HttpRequest) -> bytes:
    body = request.body
    return body if isinstance(body, bytes) else b""


def work_put(request: HttpRequest, _: bytes) -> bool:
    """A message sent to the work-item queue."""
    return request.method == "POST" and "-workitems/messages" in request.url


_RELEASE = re.compile(rb"PATCH [^\n]*RowKey='i'\)[^{]*\{[^}]*\"Owner\":\"\"")


def release_merge(request: HttpRequest, _: bytes) -> bool:
    """The merge that ends an invocation's ownership of an instance (``Owner`` cleared)."""
    return request.url.endswith("$batch") and _RELEASE.search(_body(request)) is not None


@pytest.mark.usefixtures("quick_retries")
def test_work_that_could_not_be_sent_after_a_commit_is_sent_again(azurite: Azurite) -> None:
    """Every try of the work item's put failed after its episode committed. There is no
    guard under the host: the invocation must not succeed (it did, and the host deleted
    the only wake-up: the instance waited for an activity that was never sent)."""
    fail = Fail(work_put, after=False, times=_QUICK_ATTEMPTS)
    chain = Chain(azurite, fail, lease=NO_GUARD_IN_TIME)

    async def scenario() -> None:
        await chain.start("unsent")
        await chain.finish("unsent", timeout=30)
        assert fail.hits == _QUICK_ATTEMPTS
        assert chain.steps == [0, 1, 2]
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("quick_retries")
def test_a_failed_take_over_leaves_no_session_that_looks_busy(azurite: Azurite) -> None:
    """The put failed after the commit, and again when the next invocation took the
    instance over and re-sent the work. That session used to stay registered, so every
    later wake-up in this process found the instance "busy" and bounced, once a second,
    for as long as the process lived."""
    fail = Fail(work_put, after=False, times=2 * _QUICK_ATTEMPTS)
    chain = Chain(azurite, fail, lease=NO_GUARD_IN_TIME)

    async def scenario() -> None:
        await chain.start("twice")
        await chain.finish("twice", timeout=30)
        assert fail.hits == 2 * _QUICK_ATTEMPTS
        assert chain.steps == [0, 1, 2]
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("quick_retries")
def test_a_failed_release_leaves_no_session_that_looks_busy(azurite: Azurite) -> None:
    """An invocation that ends without an episode (it took the instance over to send
    again the work whose put had failed) gives the instance up with a merge of its own;
    that merge failed every try. The session used to stay registered, and every later
    wake-up for the instance bounced forever."""
    unsent = Fail(work_put, after=False, times=_QUICK_ATTEMPTS)
    fail = Fail(release_merge, after=False, times=_QUICK_ATTEMPTS)
    chain = Chain(azurite, unsent, fail, lease=NO_GUARD_IN_TIME)

    async def scenario() -> None:
        await chain.start("unreleased")
        await chain.finish("unreleased", timeout=30)
        assert fail.hits == _QUICK_ATTEMPTS
        assert chain.steps == [0, 1, 2]
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())


class Gate(AsyncHTTPPolicy[Any, Any]):
    """Holds every request that ``match``es until ``open`` is set (from any thread)."""

    def __init__(self, match: Callable[[HttpRequest, bytes], bool]) -> None:
        self.match = match
        self.open = threading.Event()
        self.reached = threading.Event()
        """Set once a request is held."""

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        if self.match(request.http_request, b""):
            self.reached.set()
            await asyncio.to_thread(self.open.wait, 30)
        return await self.next.send(request)


def test_a_wake_up_taken_before_its_result_landed_is_not_used_up(azurite: Azurite) -> None:
    """The work-item function used to send the instance's wake-up before writing the
    result. A control invocation that took the wake-up in between found the work row
    but no result, ran nothing and released the instance; the result then landed with
    no wake-up left, and the instance waited forever."""
    gate = Gate(result_transaction)
    chain = Chain(azurite, gate)
    host = chain.host
    work = chain.app.settings.work_queue

    async def scenario() -> None:
        await chain.start("early")
        while not (items := await host.queues.receive(work, limit=1, visibility=host.hold)):
            await host.pump()  # the first episode: it schedules step 0
        running = asyncio.ensure_future(host.process(items[0]))
        assert await asyncio.to_thread(gate.reached.wait, 10)
        # Any wake-up there is now is taken before the result lands (and looked at once
        # more 2 s later, as a wake-up that may have overtaken its message is).
        until = time.monotonic() + 3
        while time.monotonic() < until:
            await host.pump()
            await asyncio.sleep(0.05)
        gate.open.set()
        await running
        await chain.finish("early", timeout=15)
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("quick_retries")
def test_a_storage_outage_poisons_no_message(azurite: Azurite) -> None:
    """Storage is gone for 6 s when the start's wake-up arrives, and again while the first
    work item records its result. Each invocation that meets it hands a delayed copy of its
    message on and succeeds, so the host's delivery count never climbs (it used to fail
    each delivery, and the host poisoned the message after five of them)."""
    outage = Outage()
    chain = Chain(azurite, outage.policy())

    def step_zero_meets_an_outage(n: int) -> None:
        if not chain.steps:
            outage.begin(6)

    chain.before_step = step_zero_meets_an_outage

    async def scenario() -> None:
        await chain.start("outage")
        outage.begin(6)  # the start's wake-up arrives while storage is away
        await chain.finish("outage", timeout=40)
        assert outage.refused > 0
        # The first run's result was never recorded: the handed-on copy ran it again.
        assert chain.steps.count(0) >= 2 and sorted(set(chain.steps)) == [0, 1, 2]
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_an_instance_that_dies_mid_invocation_moves_again_after_the_lease(
    azurite: Azurite, point: str
) -> None:
    """The app instance dies during the second step (see ``KILL_POINTS``); the host
    holds the message it was running for 10 minutes. The invocation's guard has the
    orchestration taken over and the step sent again once the lease (2 s here) is over."""
    url = azurite.connection_string(new_hub())
    lease = timedelta(seconds=2)
    first = chain_instance(url, KILL_POINTS[point], lease=lease)
    host = Host(
        [first],
        open_queues(first.app.runtime.store),
        hold=timedelta(minutes=10),
        restart=lambda: chain_instance(url, lease=lease),
    )
    monitor = open_azure_store(url)
    client = AsyncDurableClient(monitor)

    async def scenario() -> None:
        await client.start("chain", 0, instance_id="dies")

        async def finished() -> bool:
            state = await client.get("dies")
            return state is not None and state.status.is_terminal

        await host.run_until(finished, timeout=30, check_every=0.1)
        assert first.dead and len(host.deaths) == 1
        state = await client.get("dies", history=True)
        assert state is not None and state.output == 3
        assert_history_consistent(state)
        await host.close()
        await monitor.close()

    asyncio.run(scenario())


def test_a_wake_up_on_its_last_delivery_is_carried_on_not_left_to_be_poisoned(
    azurite: Azurite,
) -> None:
    """Four deliveries of the start's wake-up died with their instances (the host's hold
    ran out each time). Had the fifth died too, the host would have poisoned the wake-up
    unread on the sixth; so the fifth hands a fresh copy on first. (A wake-up whose
    episodes really crash every instance is poisoned by its inbox row's count.)"""
    url = azurite.connection_string(new_hub())
    lease = timedelta(seconds=2)
    first = chain_instance(url, lease=lease)
    host = Host(
        [first],
        open_queues(first.app.runtime.store),
        hold=timedelta(seconds=2),
        restart=lambda: chain_instance(url, lease=lease),
    )
    monitor = open_azure_store(url)
    client = AsyncDurableClient(monitor)
    control = first.app.settings.control_queues[partition_of("last", first.app.settings.partitions)]

    async def scenario() -> None:
        await client.start("chain", 0, instance_id="last")
        for _ in range(MAX_DEQUEUE_COUNT - 1):
            (died,) = await host.queues.receive(control, limit=1, visibility=host.hold)
            await host.queues.update_visibility(died, timedelta(0))
        (fifth,) = await host.queues.receive(control, limit=1, visibility=host.hold)
        assert fifth.dequeue_count == MAX_DEQUEUE_COUNT
        assert first.killer is not None
        KILL_POINTS["control-after-takeover"](first.killer)  # the next commit dies
        await host.process(fifth)

        async def finished() -> bool:
            state = await client.get("last")
            return state is not None and state.status.is_terminal

        await host.run_until(finished, timeout=30, check_every=0.1)
        assert host.poisoned == []
        state = await client.get("last", history=True)
        assert state is not None and state.output == 3
        assert_history_consistent(state)
        await host.close()
        await monitor.close()

    asyncio.run(scenario())


def test_one_hundred_orchestrations_survive_faults_kills_and_an_outage(azurite: Azurite) -> None:
    """Two app instances under the host; 7 % of their storage requests fail (half after they
    applied), one request in 250 kills its process (before or after it applied; the host
    holds that process's messages until their hold runs out), storage is gone for 10 s,
    and the host loses 2 % of its deletes. Every job completes with its result, each
    activity result once in its history, nothing is poisoned, and once the faults stop
    every queue of the hub runs empty: no wake-up keeps coming back."""
    figures = asyncio.run(soak(azurite))
    print(json.dumps(figures.summary()))
    assert figures.stuck == [], json.dumps(figures.stuck, indent=1)
    assert figures.wrong_outputs == []
    assert figures.completed == figures.orchestrations == 100
    for state in figures.states:
        assert_history_consistent(state)
    assert figures.host_poisoned == [] and figures.store_poisoned == 0, figures.host_poisoned_fates
    assert figures.seconds_to_settle is not None, f"{figures.messages_left} messages left"
    assert figures.gone == 0
    # The faults did happen.
    assert figures.faults_before and figures.faults_after and figures.outage_refused
    assert figures.kills
