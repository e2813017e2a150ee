"""DurableClient and AsyncDurableClient: the same operations, blocking and async."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    InstanceNotFoundError,
    InvalidOperationError,
    OrchestrationContext,
    OrchestrationState,
    OrchestrationStatus,
    Orchestrator,
    QueryResult,
    Registry,
    Store,
    Worker,
    open_store,
)

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
