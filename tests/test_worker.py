"""The Worker's lifecycle: the ways to run it, stopping, and releasing work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

import durable_fx
from durable_fx import OrchestrationContext, OrchestrationStatus, Orchestrator, Registry, Worker


def test_a_stop_requested_before_the_worker_runs_is_honoured(
    registry: Registry, store: durable_fx.Store
) -> None:
    worker = Worker(registry, store, max_poll_interval=0.05)
    worker.request_stop()
    finished = threading.Event()

    def run() -> None:
        asyncio.run(worker.run())
        finished.set()

    threading.Thread(target=run, daemon=True).start()
    assert finished.wait(10), "run() ignored a stop requested before it started"


def test_async_with_runs_work_on_the_current_loop(
    registry: Registry, store: durable_fx.Store
) -> None:
    @registry.activity()
    async def double(value: int) -> int:
        return value * 2

    @registry.orchestrator()
    def doubled(ctx: OrchestrationContext, value: int) -> Orchestrator[Any]:
        return (yield ctx.call_activity(double, value))

    async def scenario() -> Any:
        async with Worker(registry, store, max_poll_interval=0.05):
            client = durable_fx.AsyncDurableClient(store)
            instance_id = await client.start(doubled, 21)
            return await client.wait(instance_id, timeout=20)

    state = asyncio.run(scenario())
    assert state.status is OrchestrationStatus.COMPLETED
    assert state.output == 42


def test_stop_releases_a_running_activity_for_another_worker(
    registry: Registry,
    store: durable_fx.Store,
    client: durable_fx.DurableClient,
    make_worker: Callable[..., Worker],
    wait_until: Callable[..., None],
) -> None:
    started = threading.Event()
    release = threading.Event()

    @registry.activity()
    async def slow(_: None) -> str:
        started.set()
        # The flag is set from the test's thread; an asyncio.Event could not be.
        while not release.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return "finished"

    @registry.orchestrator()
    def waits_on_slow(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(slow, None))

    first = make_worker(shutdown_grace=0.1)
    instance_id = client.start(waits_on_slow)
    assert started.wait(20)
    first.stop()  # the grace period ends before the activity does: its lease is released
    release.set()
    make_worker()
    state = client.wait(instance_id, timeout=20)
    assert state.output == "finished"


def test_an_unknown_orchestrator_fails_with_its_start_in_the_history(
    client: durable_fx.DurableClient, worker: Worker
) -> None:
    instance_id = client.start("no_such_orchestrator", {"x": 1})
    state = client.wait(instance_id, timeout=20)
    assert state.status is OrchestrationStatus.FAILED
    detailed = client.get(instance_id, history=True)
    assert detailed is not None and detailed.history is not None
    kinds = [event.kind for event in detailed.history]
    assert kinds == ["OrchestratorStarted", "ExecutionStarted", "ExecutionCompleted"]


@pytest.mark.parametrize("way", ["context manager", "start/stop"])
def test_sync_lifecycles_stop_cleanly(
    registry: Registry, store: durable_fx.Store, way: str
) -> None:
    @registry.orchestrator()
    def noop(ctx: OrchestrationContext) -> str:
        return "ok"

    if way == "context manager":
        with Worker(registry, store, max_poll_interval=0.05), durable_fx.DurableClient(store) as c:
            assert c.wait(c.start(noop), timeout=20).output == "ok"
    else:
        worker = Worker(registry, store, max_poll_interval=0.05)
        worker.start()
        with durable_fx.DurableClient(store) as c:
            assert c.wait(c.start(noop), timeout=20).output == "ok"
        worker.stop()
        worker.stop()  # a second stop is harmless


def test_a_started_worker_cannot_be_started_twice(
    registry: Registry, store: durable_fx.Store
) -> None:
    with (
        Worker(registry, store, max_poll_interval=0.05) as worker,
        pytest.raises(RuntimeError, match="this worker is already started"),
    ):
        worker.start()


def test_a_stopped_worker_says_it_cannot_run_again(
    registry: Registry, store: durable_fx.Store
) -> None:
    worker = Worker(registry, store, max_poll_interval=0.05)
    worker.start()
    worker.stop()
    # It closed what it owned; a silent second run would stop at once or fail later.
    with pytest.raises(RuntimeError, match="cannot run again: create a new one"):
        worker.start()

    async def run_again() -> None:
        await worker.run()

    with pytest.raises(RuntimeError, match="cannot run again"):
        asyncio.run(run_again())
