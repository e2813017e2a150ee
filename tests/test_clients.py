"""DurableClient and AsyncDurableClient: the same operations, blocking and async."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    InstanceNotFoundError,
    InvalidOperationError,
    OrchestrationContext,
    OrchestrationFailedError,
    OrchestrationState,
    OrchestrationStatus,
    Orchestrator,
    QueryResult,
    Registry,
    Store,
    Worker,
    open_store,
)
from durable_fx.testing import TestEnvironment

WAIT = 20.0


def _register(registry: Registry) -> None:
    @registry.activity()
    def double(x: int) -> int:
        return 2 * x

    @registry.orchestrator()
    def doubler(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        ctx.set_custom_status("waiting")
        factor = yield ctx.wait_for_event("factor")
        doubled = yield ctx.call_activity(double, x)
        return doubled * factor


def _scenario_sync(client: DurableClient, wait_until: Callable[..., Any]) -> dict[str, Any]:
    """Every client operation once, in the order a user would use them."""
    out: dict[str, Any] = {}
    iid = client.start("doubler", 5, instance_id="scenario")
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    client.suspend(iid, "pause")
    wait_until(lambda: client.get(iid).status is OrchestrationStatus.SUSPENDED)  # type: ignore[union-attr]
    client.raise_event(iid, "factor", 3)
    client.resume(iid, "go on")
    out["first"] = client.wait(iid, timeout=WAIT)
    out["history"] = client.get(iid, history=True)
    assert client.restart(iid) == iid
    wait_until(lambda: client.get(iid).custom_status == "waiting")  # type: ignore[union-attr]
    client.terminate(iid, "stop")
    out["terminated"] = client.wait(iid, timeout=WAIT)
    out["query"] = client.query(name="doubler")
    out["purged"] = client.purge(iid)
    out["gone"] = client.get(iid)
    return out


async def _scenario_async(client: AsyncDurableClient) -> dict[str, Any]:
    """The same as ``_scenario_sync``, through the async client."""

    async def until(condition: Callable[[OrchestrationState | None], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while True:
                if condition(await client.get(iid)):
                    return
                await asyncio.sleep(0.01)

    out: dict[str, Any] = {}
    iid = await client.start("doubler", 5, instance_id="scenario")
    await until(lambda s: s is not None and s.custom_status == "waiting")
    await client.suspend(iid, "pause")
    await until(lambda s: s is not None and s.status is OrchestrationStatus.SUSPENDED)
    await client.raise_event(iid, "factor", 3)
    await client.resume(iid, "go on")
    out["first"] = await client.wait(iid, timeout=WAIT)
    out["history"] = await client.get(iid, history=True)
    assert await client.restart(iid) == iid
    await until(lambda s: s is not None and s.custom_status == "waiting")
    await client.terminate(iid, "stop")
    out["terminated"] = await client.wait(iid, timeout=WAIT)
    out["query"] = await client.query(name="doubler")
    out["purged"] = await client.purge(iid)
    out["gone"] = await client.get(iid)
    return out


def _check_scenario(out: dict[str, Any]) -> None:
    first: OrchestrationState = out["first"]
    assert first.status is OrchestrationStatus.COMPLETED, first.failure
    assert (first.instance_id, first.name, first.input, first.output) == (
        "scenario",
        "doubler",
        5,
        30,
    )
    history: OrchestrationState = out["history"]
    assert history.history is not None
    kinds = [e.kind for e in history.history]
    assert kinds[:2] == ["OrchestratorStarted", "ExecutionStarted"]
    assert kinds[-1] == "ExecutionCompleted"
    assert {"ExecutionSuspended", "ExecutionResumed", "EventRaised"} <= set(kinds)
    terminated: OrchestrationState = out["terminated"]
    assert terminated.status is OrchestrationStatus.TERMINATED
    assert terminated.output == "stop"
    assert terminated.execution_id != first.execution_id
    query: QueryResult = out["query"]
    assert [s.instance_id for s in query.items] == ["scenario"]
    assert out["purged"] == 1
    assert out["gone"] is None


def test_sync_client_scenario(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    _register(registry)
    _check_scenario(_scenario_sync(client, wait_until))


def test_async_client_scenario(registry: Registry, worker: Worker, store: Store) -> None:
    _register(registry)

    async def main() -> dict[str, Any]:
        async with AsyncDurableClient(store) as client:
            return await _scenario_async(client)

    _check_scenario(asyncio.run(main()))


def test_async_worker_and_client_on_one_loop(registry: Registry, store: Store) -> None:
    @registry.activity()
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        return (yield ctx.call_activity(fetch, x))

    async def main() -> OrchestrationState:
        async with (
            Worker(registry, store, max_poll_interval=0.05, shutdown_grace=2.0),
            AsyncDurableClient(store) as client,
        ):
            iid = await client.start(orchestrate, 1)
            return await client.wait(iid, timeout=WAIT)

    state = asyncio.run(main())
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 2


def test_wait_times_out(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def forever(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("never")

    iid = client.start(forever)
    with pytest.raises(TimeoutError, match=iid):
        client.wait(iid, timeout=0.1)

    async def wait_async() -> None:
        async with AsyncDurableClient(client.store) as async_client:
            await async_client.wait(iid, timeout=0.1)

    with pytest.raises(TimeoutError, match="still RUNNING"):
        asyncio.run(wait_async())


def test_unknown_instance(client: DurableClient) -> None:
    assert client.get("nobody") is None
    assert client.get("nobody", history=True) is None
    with pytest.raises(InstanceNotFoundError, match="'nobody'") as raised:
        client.raise_event("nobody", "e", 1)
    assert raised.value.instance_id == "nobody"
    assert isinstance(raised.value, LookupError)
    for operation in (
        lambda: client.terminate("nobody"),
        lambda: client.suspend("nobody"),
        lambda: client.resume("nobody"),
        lambda: client.restart("nobody"),
        lambda: client.purge("nobody"),
        lambda: client.wait("nobody", timeout=1),
    ):
        with pytest.raises(InstanceNotFoundError, match="'nobody'"):
            operation()

    async def unknown_async() -> None:
        async with AsyncDurableClient(client.store) as async_client:
            assert await async_client.get("nobody") is None
            with pytest.raises(InstanceNotFoundError):
                await async_client.raise_event("nobody", "e")

    asyncio.run(unknown_async())


def test_operations_on_finished_instances(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext) -> str:
        return "done"

    iid = client.wait(client.start(quick), timeout=WAIT).instance_id
    for operation in (
        lambda: client.raise_event(iid, "e"),
        lambda: client.suspend(iid),
        lambda: client.resume(iid),
    ):
        with pytest.raises(InvalidOperationError, match="COMPLETED"):
            operation()
    client.terminate(iid)  # a no-op on a finished instance
    state = client.get(iid)
    assert state is not None and state.status is OrchestrationStatus.COMPLETED


def test_pending_instance_state(registry: Registry, client: DurableClient) -> None:
    @registry.orchestrator()
    def later(ctx: OrchestrationContext, x: int) -> int:
        return x

    before = datetime.now(UTC)
    iid = client.start(later, 7, start_at=before + timedelta(hours=1))
    state = client.get(iid)
    assert state is not None
    assert state.status is OrchestrationStatus.PENDING
    assert (state.name, state.input, state.output, state.failure) == ("later", 7, None, None)
    assert state.created_at >= before
    assert client.query(status="PENDING").items[0].instance_id == iid


def test_instances_are_counted_by_status(
    registry: Registry, worker: Worker, client: DurableClient, store_kind: str
) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext) -> str:
        return "done"

    @registry.orchestrator()
    def later(ctx: OrchestrationContext) -> str:
        return "later"

    if store_kind == "azure":  # Table storage has no count: it would read every instance
        assert client.count_by_status() is None
        return
    assert client.count_by_status() == {}
    done = [client.start(quick) for _ in range(3)]
    for iid in done:
        client.wait(iid, timeout=WAIT)
    client.start(later, start_at=datetime.now(UTC) + timedelta(hours=1))
    assert client.count_by_status() == {
        OrchestrationStatus.COMPLETED: 3,
        OrchestrationStatus.PENDING: 1,
    }
    client.purge(done[0])
    assert client.count_by_status() == {
        OrchestrationStatus.COMPLETED: 2,
        OrchestrationStatus.PENDING: 1,
    }


def test_clients_opened_by_url_share_the_store(
    registry: Registry, store_kind: str, store_url: str
) -> None:
    if store_kind == "memory":
        pytest.skip("every memory:// URL opens a new, empty store")

    @registry.orchestrator()
    def quick(ctx: OrchestrationContext, x: int) -> int:
        return x * 3

    with (
        Worker(registry, store_url, max_poll_interval=0.05, shutdown_grace=2.0),
        DurableClient(store_url) as client,
    ):
        state = client.wait(client.start(quick, 3), timeout=WAIT)
    assert state.output == 9
    reopened = open_store(store_url)
    try:

        async def read() -> OrchestrationState | None:
            async with AsyncDurableClient(reopened) as again:
                return await again.get(state.instance_id)

        found = asyncio.run(read())
        assert found is not None and found.output == 9
    finally:
        asyncio.run(reopened.close())


# -- typed results: handle() and run() ------------------------------------------------------------


@dataclass
class Bill:
    amount: int
    currency: str


def _register_billing(
    registry: Registry,
) -> Callable[[OrchestrationContext, int], Orchestrator[Bill]]:
    @registry.activity()
    def price(items: int) -> int:
        return 5 * items

    @registry.orchestrator()
    def bill(ctx: OrchestrationContext, items: int) -> Orchestrator[Bill]:
        ctx.set_custom_status("pricing")
        if items < 0:
            yield ctx.wait_for_event("go")  # a bill to steer by hand
        amount: int = yield ctx.call_activity(price, abs(items))
        if amount > 100:
            raise ValueError(f"{amount} is too much")
        return Bill(amount, "EUR")

    return bill


def test_run_returns_the_orchestrators_declared_type(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    bill = _register_billing(registry)
    assert client.run(bill, 3, timeout=WAIT) == Bill(15, "EUR")
    assert client.run("bill", 2, timeout=WAIT, result_type=Bill) == Bill(10, "EUR")
    assert client.run("bill", 1, timeout=WAIT) == {"amount": 5, "currency": "EUR"}

    async def run_async() -> Bill:
        async with AsyncDurableClient(client.store) as async_client:
            return await async_client.run(bill, 4, instance_id="async-bill", timeout=WAIT)

    assert asyncio.run(run_async()) == Bill(20, "EUR")


def test_a_failed_or_terminated_result_raises(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    bill = _register_billing(registry)
    with pytest.raises(OrchestrationFailedError, match="150 is too much") as failed:
        client.run(bill, 30, instance_id="too-much", timeout=WAIT)
    assert (failed.value.instance_id, failed.value.status) == ("too-much", "FAILED")
    assert (failed.value.error_type, failed.value.message) == ("ValueError", "150 is too much")
    assert failed.value.stack_trace is not None

    handle = client.handle(bill, client.start(bill, -1))
    wait_until(lambda: handle.state().custom_status == "pricing")
    handle.terminate("cancelled by the customer")
    with pytest.raises(OrchestrationFailedError, match="terminated: cancelled") as terminated:
        handle.result(timeout=WAIT)
    assert terminated.value.status == "TERMINATED"


def test_a_handle_steers_its_instance_and_returns_its_typed_result(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    bill = _register_billing(registry)
    handle = client.handle(bill, client.start(bill, -2, instance_id="steered"))
    assert handle.id == "steered"
    wait_until(lambda: handle.state().custom_status == "pricing")
    handle.suspend("pause")
    wait_until(lambda: handle.state().status is OrchestrationStatus.SUSPENDED)
    assert handle.raise_event("go", event_id="once")
    assert not handle.raise_event("go", event_id="once")
    handle.resume()
    result = handle.result(timeout=WAIT)
    assert isinstance(result, Bill) and result == Bill(10, "EUR")
    assert handle.wait().status is OrchestrationStatus.COMPLETED
    history = handle.state(history=True).history
    assert history is not None and "ExecutionSuspended" in [e.kind for e in history]
    with pytest.raises(InstanceNotFoundError):
        client.handle(bill, "nobody").state()

    async def by_name() -> Bill:
        async with AsyncDurableClient(client.store) as async_client:
            typed = async_client.handle("bill", "steered", result_type=Bill)
            assert (await typed.state()).status is OrchestrationStatus.COMPLETED
            return await typed.result()

    assert asyncio.run(by_name()) == Bill(10, "EUR")


# -- waiting is push within a process -------------------------------------------------------------


class _StaleReads:
    """A store whose reads of an instance stay at the row they saw once it is frozen.

    A client waiting on a frozen instance can then learn that it ended only from
    the worker in this process, which shares the store object (no read tells it).
    """

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self._frozen: dict[str, Any] = {}
        self.stale_reads: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get_instance(self, instance_id: str) -> Any:
        if instance_id in self._frozen:
            self.stale_reads[instance_id] = self.stale_reads.get(instance_id, 0) + 1
            return self._frozen[instance_id]
        return await self._inner.get_instance(instance_id)

    def freeze(self, instance_id: str) -> None:
        self._frozen[instance_id] = asyncio.run(self._inner.get_instance(instance_id))


def test_a_wait_learns_the_end_from_the_worker_in_this_process(
    registry: Registry, store: Store, wait_until: Callable[..., Any]
) -> None:
    @registry.orchestrator()
    def greets(ctx: OrchestrationContext) -> Orchestrator[str]:
        ctx.set_custom_status("waiting")
        name: str = yield ctx.wait_for_event("name", result_type=str)
        return f"hello {name}"

    async def wait_async(instance_id: str) -> OrchestrationState:
        async with AsyncDurableClient(shared) as async_client:
            return await async_client.wait(instance_id, timeout=WAIT)

    stale = _StaleReads(store)
    shared = cast(Store, stale)
    with (
        Worker(registry, shared, max_poll_interval=0.05, shutdown_grace=2.0),
        DurableClient(shared) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        sync_handle, async_handle = (client.handle(greets, client.start(greets)) for _ in "ab")
        for handle in (sync_handle, async_handle):
            wait_until(lambda h=handle: h.state().custom_status == "waiting")
            stale.freeze(handle.id)
        by_sync = pool.submit(sync_handle.result, timeout=WAIT)
        by_async = pool.submit(asyncio.run, wait_async(async_handle.id))
        for handle in (sync_handle, async_handle):
            # Waiting (it read the frozen row) before the instance can end:
            wait_until(lambda h=handle: stale.stale_reads.get(h.id, 0) > 0)
            handle.raise_event("name", "ada")
        assert by_sync.result() == "hello ada"
        state = by_async.result()
        assert (state.status, state.output) == (OrchestrationStatus.COMPLETED, "hello ada")


def test_handles_and_run_wait_as_their_client_does(registry: Registry) -> None:
    # The test environment's clients skip time while they wait; so do their handles and run.
    @registry.orchestrator()
    def next_day(ctx: OrchestrationContext, hours: int) -> Orchestrator[str]:
        yield ctx.create_timer(timedelta(hours=hours))
        return ctx.current_utc_datetime.isoformat()

    with TestEnvironment(registry) as env:
        first = env.sync_client.run(next_day, 24, timeout=WAIT)
        handle = env.sync_client.handle(next_day, env.sync_client.start(next_day, 48))
        assert handle.result(timeout=WAIT) > first

        async def run_async() -> str:
            return await env.client.run(next_day, 24, timeout=WAIT)

        assert asyncio.run(run_async()) > first
