"""Host mode under storage faults and crashes: no instance is stranded, nothing poisoned.

``Host`` plays the Functions host as ``QueueProcessor`` does (reference: the
review's Q3): it receives from every control partition, the legacy control
queue and the work-item queue, hides each message while its function runs
(renewing the hold), deletes it on success, releases it for ``retry_after`` on
a failure and copies it to ``<queue>-poison`` after ``maxDequeueCount`` failed
deliveries (or without invoking, once delivered more often than that). Its own
requests do not fail; the app's store gets the faults.

The targeted tests each break one step of an invocation; the soak at the end
breaks every kind of request at random, crashes invocations between steps and
takes storage away for a while.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import HttpRequest

from durable_fx import AsyncDurableClient, DurableApp, OrchestrationContext, OrchestrationStatus
from durable_fx.hosting import queue_message
from durable_fx.queues import QueueBackend, QueuedMessage, decode_body, open_queues
from durable_fx.storage.azure import AzureStore, _transient, open_azure_store
from tests.apps.harness import assert_history_consistent
from tests.azurite import Azurite, new_hub
from tests.test_azure_faults import Fail

pytestmark = [pytest.mark.azurite]

MAX_DEQUEUE_COUNT = 5
"""host.json's ``maxDequeueCount`` (the host's default)."""


class Host:
    """Receives the hub's messages and invokes the app's queue functions by the host's rules.

    Args:
        app: The app whose ``dfx_control_NN`` / ``dfx_work_items`` functions to invoke.
        queues: The host's own queue client (reliable).
        hold: How long a received message stays hidden (renewed while it runs).
        retry_after: host.json's ``visibilityTimeout``: the hold after a failure.
    """

    def __init__(
        self,
        app: DurableApp,
        queues: QueueBackend,
        *,
        hold: timedelta = timedelta(minutes=10),
        retry_after: timedelta = timedelta(seconds=0.5),
    ) -> None:
        functions = {f.get_function_name(): f for f in app.get_functions()}
        durable = [n for n in functions if n.startswith("dfx_control") or n == "dfx_work_items"]
        self.handlers: dict[str, Callable[..., Any]] = {
            functions[name].get_trigger().queue_name: functions[name].get_user_function()
            for name in durable
        }
        self.app = app
        self.queues = queues
        self.hold = hold
        self.retry_after = retry_after
        self.invocations: Counter[str] = Counter()
        self.failures: list[str] = []
        """``"<queue>: <error>"`` for each invocation that raised."""
        self.poisoned: list[str] = []
        """Queues of the messages the host moved to a poison queue."""
        self.gone: list[str] = []
        """Messages already gone when the host deleted them after a success."""

    async def pump(self) -> int:
        """One receive per queue; runs the messages concurrently; returns how many."""
        received: list[QueuedMessage] = []
        for queue in self.handlers:
            received += await self.queues.receive(queue, limit=16, visibility=self.hold)
        await asyncio.gather(*(self.process(message) for message in received))
        return len(received)

    async def process(self, message: QueuedMessage) -> None:
        """Invoke one received message and settle it as ``QueueProcessor`` does."""
        if message.dequeue_count > MAX_DEQUEUE_COUNT:
            await self._poison(message)
            return
        self.invocations[message.queue] += 1
        renewal = asyncio.ensure_future(self._renew(message))
        try:
            await self.invoke(message)
        except Exception as error:
            self.failures.append(f"{message.queue}: {type(error).__name__}: {error}")
            latest = await _stop(renewal, message)
            if message.dequeue_count >= MAX_DEQUEUE_COUNT:
                await self._poison(latest)
            else:
                await self.queues.update_visibility(latest, self.retry_after)
            return
        if not await self.queues.delete(await _stop(renewal, message)):
            self.gone.append(message.id)

    async def invoke(self, message: QueuedMessage) -> None:
        """Call the message's function (what the host's worker does)."""
        handler = self.handlers[message.queue]
        await handler(msg=queue_message(message, decode_body(message.text)))

    async def _renew(self, message: QueuedMessage) -> QueuedMessage:
        latest = message
        try:
            while True:
                await asyncio.sleep(self.hold.total_seconds() / 2)
                renewed = await self.queues.update_visibility(latest, self.hold)
                if renewed is None:
                    return latest
                latest = renewed
        except asyncio.CancelledError:
            return latest

    async def _poison(self, message: QueuedMessage) -> None:
        self.poisoned.append(message.queue)
        await self.queues.poison(message, "failed too often")

    async def run_until(self, done: Callable[[], Any], timeout: float) -> None:
        """Pump until ``await done()``; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not await done():
            assert time.monotonic() < deadline, (
                f"not done after {timeout} s; host failures: {self.failures[-5:]}"
            )
            if not await self.pump():
                await asyncio.sleep(0.05)


async def _stop(renewal: asyncio.Task[QueuedMessage], message: QueuedMessage) -> QueuedMessage:
    renewal.cancel()
    try:
        return await renewal
    except asyncio.CancelledError:
        return message


class Outage(AsyncHTTPPolicy[Any, Any]):
    """Every request fails before it leaves while the outage lasts (``begin(seconds)``)."""

    def __init__(self) -> None:
        self.until = 0.0
        self.refused = 0

    def begin(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        if time.monotonic() < self.until:
            self.refused += 1
            raise ServiceRequestError("test: storage is unreachable")
        return await self.next.send(request)


_QUICK_ATTEMPTS = 3


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store gives up on a failing request after 3 quick tries instead of ~6 s."""
    monkeypatch.setattr(_transient, "_ATTEMPTS", _QUICK_ATTEMPTS)
    monkeypatch.setattr(_transient, "_MAX_DELAY", 0.1)


class Chain:
    """An app on a fresh hub whose ``chain`` runs three ``step`` activities in a row."""

    def __init__(self, azurite: Azurite, *policies: Any, hold: timedelta | None = None) -> None:
        url = azurite.connection_string(new_hub())
        self.store: AzureStore = open_azure_store(url, policies=list(policies))
        # The test's own view of the hub, on storage that does not fail.
        self.monitor: AzureStore = open_azure_store(url)
        self.client = AsyncDurableClient(self.monitor)
        self.app = app = DurableApp(store=self.store)
        options = {} if hold is None else {"hold": hold}
        self.host = Host(app, open_queues(self.store), **options)
        self.steps: list[int] = []
        self.before_step: Callable[[int], None] = lambda n: None

        @app.activity()
        def step(n: int) -> int:
            self.before_step(n)
            self.steps.append(n)
            return n + 1

        @app.orchestrator()
        def chain(ctx: OrchestrationContext, n: int) -> Generator[Any, Any, int]:
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
        await self.host.queues.close()
        await self.app.runtime.aclose()
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
    chain = Chain(azurite, fail)

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
    chain = Chain(azurite, fail)

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
    """The merge that ends the invocation's ownership failed every try; the session used
    to stay registered, and every later wake-up for the instance bounced forever."""
    fail = Fail(release_merge, after=False, times=_QUICK_ATTEMPTS)
    chain = Chain(azurite, fail)

    async def scenario() -> None:
        await chain.start("unreleased")
        await chain.finish("unreleased", timeout=30)
        assert fail.hits == _QUICK_ATTEMPTS
        assert chain.steps == [0, 1, 2]
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
    chain = Chain(azurite, outage)

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
        assert chain.steps[:2] == [0, 0] and chain.steps[2:] == [1, 2]
        assert chain.host.failures == [] and chain.host.poisoned == []
        await chain.close()

    asyncio.run(scenario())
