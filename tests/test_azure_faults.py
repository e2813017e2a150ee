"""The Azure store under single, targeted storage faults, on Azurite.

Each test loses the response of one kind of request (the service applied it,
the client cannot tell) or fails it outright, and checks that nothing is
stranded or slowed down to the idle back-off. The broad soak with random
faults is ``test_azure_store.test_one_hundred_orchestrations_survive_failing_storage_calls``.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.rest import HttpRequest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    OrchestrationStatus,
    StoreBusyError,
    Worker,
)
from durable_fx.storage.azure import AzureStore, open_azure_store
from tests.apps.steps_app import fan_out, registry, three_steps
from tests.support.azure_faults import Fail, Match, result_transaction
from tests.support.azurite import Azurite, new_hub
from tests.support.workers import assert_history_consistent

pytestmark = [pytest.mark.azurite]


_CONTROL_MESSAGES = re.compile(r"-control(-\d\d)?/messages$")
"""The messages of any control queue: a partition's (``-control-NN``) or the legacy one."""


def receive_with_messages(queue: re.Pattern[str]) -> Match:
    def match(request: HttpRequest, body: bytes) -> bool:
        path = request.url.split("?")[0]
        return (
            request.method == "GET" and queue.search(path) is not None and b"<QueueMessage>" in body
        )

    return match


def control_put(request: HttpRequest, _: bytes) -> bool:
    """A message sent to a control queue."""
    return (
        request.method == "POST" and _CONTROL_MESSAGES.search(request.url.split("?")[0]) is not None
    )


def _store(azurite: Azurite, hub: str, *policies: Any, **options: Any) -> AzureStore:
    return open_azure_store(azurite.connection_string(hub), policies=list(policies), **options)


def _run_three_steps(client: DurableClient, count: int, timeout: float) -> None:
    ids = [client.start(three_steps, n, instance_id=f"i-{n}") for n in range(count)]
    for n, iid in enumerate(ids):
        state = client.wait(iid, timeout=timeout)
        assert state.status is OrchestrationStatus.COMPLETED, (iid, state.status, state.failure)
        assert state.output == n + 3
        full = client.get(iid, history=True)
        assert full is not None
        assert_history_consistent(full)


def test_a_result_recorded_with_a_lost_response_still_reaches_its_owner(
    azurite: Azurite,
) -> None:
    """The result transaction applied, its response was lost, and the retry found the work
    row gone: the owning session must read its inbox before ending, or nobody ever would
    (it used to end the session and delete the guard, leaving the result stranded)."""
    fail = Fail(result_transaction, after=True)
    store = _store(azurite, new_hub(), fail)
    try:
        with Worker(registry, store, lease=timedelta(seconds=30)), DurableClient(store) as client:
            # A 30 s lease: a stranded instance cannot be rescued by its guard in time.
            _run_three_steps(client, 1, timeout=15)
        assert fail.hits == 1
    finally:
        asyncio.run(store.close())


def test_a_lost_response_costs_no_sdk_back_off(azurite: Azurite) -> None:
    """The SDK's own retry waited 15 s and more before retrying a lost response, stalling
    the store's single loop; the store retries at once (and knows what a retry means)."""
    fail = Fail(control_put, after=True)
    store = _store(azurite, new_hub(), fail)
    try:
        with DurableClient(store) as client:
            t0 = time.monotonic()
            client.start(three_steps, 1, instance_id="lost-put")  # its wake-up's put is lost
            assert time.monotonic() - t0 < 3.0
            assert client.get("lost-put") is not None
        assert fail.hits == 1
    finally:
        asyncio.run(store.close())


def test_a_wake_up_received_with_a_lost_response_is_polled_for_again(azurite: Azurite) -> None:
    """A receive that applied without an answer hides messages under receipts nobody saw:
    the store polls again when they come back instead of after its idle back-off."""
    hub = new_hub()
    fail = Fail(receive_with_messages(_CONTROL_MESSAGES), after=True)
    # Idle polls every 60 s at the soonest: only the expected return can find the wake-up.
    worker = _store(azurite, hub, fail, idle_poll=(60.0, 60.0))
    starter = _store(azurite, hub)
    lease = timedelta(seconds=2)

    async def scenario() -> None:
        await AsyncDurableClient(starter).start(three_steps, 1, instance_id="lost-receive")
        first = await worker.lock_orchestrations(owner="w", limit=8, lease=lease)
        assert first.items == [] and fail.hits == 1
        assert first.next_due is not None, "nothing tells the worker to look again"
        wait = (first.next_due - datetime.now(UTC)).total_seconds()
        assert wait <= lease.total_seconds() + 0.5
        await asyncio.sleep(max(wait, 0) + 0.2)
        second = await worker.lock_orchestrations(owner="w", limit=8, lease=lease)
        assert [i.instance.instance_id for i in second.items] == ["lost-receive"]

    try:
        asyncio.run(scenario())
    finally:
        asyncio.run(worker.close())
        asyncio.run(starter.close())


@pytest.mark.slow
def test_work_items_that_could_not_be_sent_after_a_commit_are_sent_again(
    azurite: Azurite,
) -> None:
    """Storage refused every try of a work item's put after its episode committed: the
    store gives the instance up, and its guard's wake-up has it taken over and the work
    re-sent from the committed rows (it used to wait for a result that could never come)."""

    def work_put(request: HttpRequest, _: bytes) -> bool:
        return request.method == "POST" and "-workitems/messages" in request.url

    # Every attempt of the two queued items' puts (each gives up after 8).
    fail = Fail(work_put, after=False, times=16)
    store = _store(azurite, new_hub(), fail)
    lease = timedelta(seconds=2)
    try:
        # Two activity slots: of the four items, two are held here and two are queued.
        with (
            Worker(registry, store, lease=lease, max_concurrent_activities=2),
            DurableClient(store) as client,
        ):
            iid = client.start(fan_out, 4, instance_id="fan")
            state = client.wait(iid, timeout=40)
            assert state.status is OrchestrationStatus.COMPLETED, state.failure
            assert state.output == sum(range(1, 5))
            full = client.get(iid, history=True)
            assert full is not None
            assert_history_consistent(full)
        assert fail.hits == 16
    finally:
        asyncio.run(store.close())


def test_storage_failing_past_the_retries_is_busy_and_a_retry_goes_through(
    azurite: Azurite,
) -> None:
    """Every try of one event's write fails: the caller gets StoreBusyError (HTTP 503 with
    Retry-After at the entry points), not the SDK's error (a 500); sent again, it lands once."""
    armed = [False]
    fail = Fail(lambda _request, _body: armed[0], after=False, times=8)
    store = _store(azurite, new_hub(), fail)
    try:
        with DurableClient(store) as client:
            iid = client.start(three_steps, 1, instance_id="busy")
            armed[0] = True
            with pytest.raises(StoreBusyError, match="Azure Storage kept failing"):
                client.raise_event(iid, "nudge", 1, event_id="e-1")
            assert fail.hits == 8
            assert client.raise_event(iid, "nudge", 1, event_id="e-1") is True
            assert client.raise_event(iid, "nudge", 1, event_id="e-1") is False
    finally:
        asyncio.run(store.close())
