"""Instance lifecycle: terminate, suspend/resume, restart, purge, query, continue-as-new,
scheduled and repeated starts, custom status, and what replay keeps deterministic."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    EventTimeoutError,
    IdReusePolicy,
    InstanceExistsError,
    InvalidOperationError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    Worker,
)
from durable_fx.storage import Accept, LockBatch, OrchestrationWorkItem
from tests.support.instances import custom_status_of, history_kinds, status_of

WAIT = 20.0
SHORT = timedelta(seconds=0.2)


def _register_waiter(registry: Registry) -> Callable[..., Any]:
    @registry.orchestrator()
    def waiter(ctx: OrchestrationContext, label: Any = None) -> Orchestrator[Any]:
        ctx.set_custom_status("waiting")
        data = yield ctx.wait_for_event("go")
        return {"label": label, "data": data}

    return waiter


# -- terminate ---------------------------------------------------------------------------


def test_terminate(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.terminate(iid, {"reason": "operator said so"})
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.TERMINATED
    assert state.output == {"reason": "operator said so"}
    assert history_kinds(client, iid)[-1] == "ExecutionCompleted"
    # Terminating a finished instance does nothing; events to it are refused.
    client.terminate(iid, "again")
    assert client.wait(iid, timeout=WAIT).output == {"reason": "operator said so"}
    with pytest.raises(InvalidOperationError, match="TERMINATED"):
        client.raise_event(iid, "go")


def test_terminate_a_pending_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    ran: list[str] = []

    @registry.orchestrator()
    def scheduled(ctx: OrchestrationContext) -> None:
        ran.append(ctx.instance_id)

    # Far enough ahead that the terminate lands first on a loaded machine (on Azurite a
    # start and a terminate took over 0.2 s under load, and once in CI over 3 s): if the
    # terminate came back after the start fell due, the machine was too slow to tell
    # anything, so try again further ahead.
    for lead in (3, 10, 30):
        start_at = datetime.now(UTC) + timedelta(seconds=lead)
        iid = client.start(scheduled, start_at=start_at)
        client.terminate(iid, "never mind")
        if datetime.now(UTC) < start_at:
            break
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.TERMINATED
    assert state.output == "never mind"
    # The start falling due later changes nothing.
    time.sleep(max(0.0, (start_at - datetime.now(UTC)).total_seconds()) + 0.2)
    after = client.get(iid)
    assert after is not None and after.status is OrchestrationStatus.TERMINATED
    assert ran == []


# -- suspend and resume ------------------------------------------------------------------


def test_suspend_defers_events_until_resume(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter, "s")
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.suspend(iid, "maintenance")
    wait_until(lambda: status_of(client, iid) is OrchestrationStatus.SUSPENDED)
    client.raise_event(iid, "go", "while suspended")
    wait_until(lambda: "EventRaised" in history_kinds(client, iid))
    time.sleep(0.2)  # give a (wrong) worker the chance to run the code
    assert status_of(client, iid) is OrchestrationStatus.SUSPENDED
    client.resume(iid, "back")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"label": "s", "data": "while suspended"}
    kinds = history_kinds(client, iid)
    assert kinds.index("ExecutionSuspended") < kinds.index("ExecutionResumed")


def test_suspended_timer_fires_after_resume(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    @registry.orchestrator()
    def sleeper(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("sleeping")
        yield ctx.create_timer(SHORT)
        return "woke"

    iid = client.start(sleeper)
    wait_until(lambda: custom_status_of(client, iid) == "sleeping")
    client.suspend(iid)
    wait_until(lambda: status_of(client, iid) is OrchestrationStatus.SUSPENDED)
    wait_until(lambda: "TimerFired" in history_kinds(client, iid))
    assert status_of(client, iid) is OrchestrationStatus.SUSPENDED
    client.resume(iid)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "woke"


def test_terminate_a_suspended_instance(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.suspend(iid)
    wait_until(lambda: status_of(client, iid) is OrchestrationStatus.SUSPENDED)
    client.terminate(iid, "stop")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.TERMINATED
    assert state.output == "stop"


# -- restart -------------------------------------------------------------------------------


def test_restart_under_the_same_id(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    runs: list[str] = []

    @registry.orchestrator()
    def once(ctx: OrchestrationContext, x: int) -> int:
        if not ctx.is_replaying:
            runs.append(ctx.execution_id)
        return x * 2

    iid = client.start(once, 21, instance_id="restart-me")
    first = client.wait(iid, timeout=WAIT)
    assert first.output == 42
    assert client.restart(iid) == iid
    second = client.wait(iid, timeout=WAIT)
    assert second.status is OrchestrationStatus.COMPLETED, second.failure
    assert second.output == 42
    assert second.input == 21
    assert second.execution_id != first.execution_id
    assert len(runs) == 2


def test_restart_under_a_new_id(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter, "original")
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    # A running instance can be copied under a new id, not restarted in place.
    with pytest.raises(InvalidOperationError, match="RUNNING"):
        client.restart(iid)
    copy = client.restart(iid, new_instance_id=True)
    assert copy != iid
    wait_until(lambda: custom_status_of(client, copy) == "waiting")
    client.raise_event(copy, "go", "copy")
    state = client.wait(copy, timeout=WAIT)
    assert state.output == {"label": "original", "data": "copy"}
    assert status_of(client, iid) is OrchestrationStatus.RUNNING


# -- purge --------------------------------------------------------------------------------


def test_purge_one(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    with pytest.raises(InvalidOperationError, match="terminate it"):
        client.purge(iid)
    assert status_of(client, iid) is OrchestrationStatus.RUNNING
    client.raise_event(iid, "go")
    client.wait(iid, timeout=WAIT)
    assert client.purge(iid) == 1
    assert client.get(iid) is None
    assert client.get(iid, history=True) is None
    # A purged id can be used again.
    client.start(waiter, instance_id=iid)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")


def test_purge_by_filter(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)

    @registry.orchestrator()
    def fails(ctx: OrchestrationContext) -> None:
        raise ValueError("bad")

    done = [client.start(waiter, i) for i in range(3)]
    for iid in done:
        wait_until(lambda iid=iid: custom_status_of(client, iid) == "waiting")
        client.raise_event(iid, "go")
        client.wait(iid, timeout=WAIT)
    failed = client.start(fails)
    client.wait(failed, timeout=WAIT)
    running = client.start(waiter, "running")
    wait_until(lambda: custom_status_of(client, running) == "waiting")

    assert client.purge(status=OrchestrationStatus.COMPLETED) == 3
    assert all(client.get(iid) is None for iid in done)
    assert status_of(client, failed) is OrchestrationStatus.FAILED
    # Running instances are never purged, whatever the filter says.
    assert client.purge(status="RUNNING") == 0
    assert client.purge() == 1
    assert client.get(failed) is None
    assert status_of(client, running) is OrchestrationStatus.RUNNING


def test_purge_by_creation_time(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext, x: int) -> int:
        return x

    old = [client.start(quick, i) for i in range(2)]
    for iid in old:
        client.wait(iid, timeout=WAIT)
    time.sleep(0.02)
    boundary = datetime.now(UTC)
    time.sleep(0.02)
    new = [client.start(quick, i) for i in range(2)]
    for iid in new:
        client.wait(iid, timeout=WAIT)
    assert client.purge(created_to=boundary) == 2
    assert all(client.get(iid) is None for iid in old)
    assert all(client.get(iid) is not None for iid in new)
    assert client.purge(created_from=boundary) == 2


# -- query --------------------------------------------------------------------------------


def test_query_filters(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)

    @registry.orchestrator()
    def quick(ctx: OrchestrationContext, x: int) -> int:
        return x

    quick_ids = []
    for i in range(3):
        quick_ids.append(client.start(quick, i))
        time.sleep(0.01)
    for iid in quick_ids:
        client.wait(iid, timeout=WAIT)
    waiting = client.start(waiter)
    wait_until(lambda: custom_status_of(client, waiting) == "waiting")

    by_name = client.query(name="quick")
    assert {s.instance_id for s in by_name.items} == set(quick_ids)
    assert by_name.continuation is None
    running = client.query(status=OrchestrationStatus.RUNNING)
    assert [s.instance_id for s in running.items] == [waiting]
    assert running.items[0].custom_status == "waiting"
    both = client.query(status=["completed", "RUNNING"])
    assert len(both.items) == 4
    assert client.query(status="FAILED").items == []

    created = sorted(client.get(iid).created_at for iid in quick_ids)  # type: ignore[union-attr]
    middle = created[1]
    later = client.query(name="quick", created_from=middle)
    earlier = client.query(name="quick", created_to=middle)
    assert {s.created_at for s in later.items} >= set(created[2:])
    assert all(s.created_at >= middle for s in later.items)
    assert {s.created_at for s in earlier.items} >= set(created[:1])
    assert all(s.created_at <= middle for s in earlier.items)


def test_query_paging(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext, x: int) -> int:
        return x

    ids = [client.start(quick, i) for i in range(25)]
    for iid in ids:
        client.wait(iid, timeout=WAIT)
    seen: list[str] = []
    sizes: list[int] = []
    continuation = None
    while True:
        page = client.query(page_size=7, continuation=continuation)
        seen += [s.instance_id for s in page.items]
        sizes.append(len(page.items))
        continuation = page.continuation
        if continuation is None:
            break
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(set(seen))
    assert sizes[:3] == [7, 7, 7]
    assert sum(sizes) == 25
    created = [client.get(iid).created_at for iid in seen]  # type: ignore[union-attr]
    assert created == sorted(created, reverse=True)


def test_query_and_purge_reject_bad_arguments(client: DurableClient) -> None:
    with pytest.raises(ValueError, match="page_size"):
        client.query(page_size=0)
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="created_from must be timezone-aware"):
        client.query(created_from=naive)
    with pytest.raises(ValueError, match="created_to must be timezone-aware"):
        client.query(created_to=naive)
    with pytest.raises(ValueError, match="created_to must be timezone-aware"):
        client.purge(created_to=naive)


def test_query_by_instance_id_prefix(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext) -> None:
        return None

    ids = ["order-1", "order-2", "invoice-1", "Order-3", "a_1", "ab1", "a%2", "axx"]
    for iid in ids:
        client.wait(client.start(quick, instance_id=iid), timeout=WAIT)

    def found(prefix: str) -> list[str]:
        return sorted(s.instance_id for s in client.query(instance_id_prefix=prefix).items)

    assert found("order-") == ["order-1", "order-2"]  # ids are case-sensitive
    assert found("Order") == ["Order-3"]
    assert found("a_") == ["a_1"]  # no wildcards in a prefix
    assert found("a%") == ["a%2"]
    with pytest.raises(ValueError, match="continuation"):
        client.query(continuation="garbage")


# -- continue-as-new ---------------------------------------------------------------------


def test_continue_as_new_counter(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.activity()
    def bump(n: int) -> int:
        return n + 1

    @registry.orchestrator()
    def counter(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        n = yield ctx.call_activity(bump, n)
        if n < 5:
            ctx.continue_as_new(n)
            return None
        return f"stopped at {n}"

    iid = client.start(counter, 0)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "stopped at 5"
    assert state.input == 4
    # Only the last execution's history is kept.
    kinds = history_kinds(client, iid)
    assert kinds.count("ExecutionStarted") == 1
    assert kinds.count("TaskScheduled") == 1


def _register_carrier(registry: Registry, *, keep_events: bool) -> Callable[..., Any]:
    """``carrier``: generation 0 waits for ``go`` and continues as new; 1 collects ``extra``."""

    @registry.orchestrator()
    def carrier(ctx: OrchestrationContext, generation: int) -> Orchestrator[Any]:
        if generation == 0:
            ctx.set_custom_status("gen0")
            yield ctx.wait_for_event("go")
            ctx.continue_as_new(1, keep_events=keep_events)
            return None
        got = []
        try:
            while True:
                got.append((yield ctx.wait_for_event("extra", timeout=SHORT)))
        except EventTimeoutError:
            return got

    return carrier


@pytest.mark.parametrize("keep_events", [True, False])
def test_continue_as_new_carries_pending_events(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
    keep_events: bool,
) -> None:
    carrier = _register_carrier(registry, keep_events=keep_events)
    iid = client.start(carrier, 0)
    wait_until(lambda: custom_status_of(client, iid) == "gen0")
    client.raise_event(iid, "extra", "one")
    client.raise_event(iid, "extra", "two")
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == (["one", "two"] if keep_events else [])


class _EventDuringEpisode:
    """A store on which ``extra: "late"`` arrives while the episode that got ``go`` runs."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def lock_orchestrations(
        self, *, owner: str, limit: int, lease: timedelta, accept: Accept | None = None
    ) -> LockBatch[OrchestrationWorkItem]:
        batch = await self._inner.lock_orchestrations(
            owner=owner, limit=limit, lease=lease, accept=accept
        )
        for item in batch.items:
            if any(getattr(m.event, "name", None) == "go" for m in item.messages):
                raiser = AsyncDurableClient(self._inner)
                await raiser.raise_event(item.instance.instance_id, "extra", "late")
        return batch


def test_carried_over_events_come_before_events_raised_during_the_episode(
    store: Store, registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    """The official SDK's test_continue_as_new failed 2 runs in 3 through the sidecar this way."""
    carrier = _register_carrier(registry, keep_events=True)
    iid = client.start(carrier, 0)
    client.raise_event(iid, "extra", "early")
    client.raise_event(iid, "go")
    make_worker(on=_EventDuringEpisode(store))
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["early", "late"]


def test_continue_as_new_many_times(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def loop(ctx: OrchestrationContext, n: int) -> Any:
        if n < 30:
            ctx.continue_as_new(n + 1)
        return n

    state = client.wait(client.start(loop, 0), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 30


# -- starting ---------------------------------------------------------------------------


def test_start_at_stays_pending_until_then(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def scheduled(ctx: OrchestrationContext) -> str:
        return ctx.current_utc_datetime.isoformat()

    start_at = datetime.now(UTC) + timedelta(seconds=3)
    iid = client.start(scheduled, start_at=start_at)
    assert status_of(client, iid) is OrchestrationStatus.PENDING
    time.sleep(0.1)
    assert status_of(client, iid) is OrchestrationStatus.PENDING
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert datetime.fromisoformat(state.output) >= start_at


def test_events_raised_before_a_scheduled_start_are_kept(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter, "later", start_at=datetime.now(UTC) + timedelta(seconds=0.3))
    client.raise_event(iid, "go", "early")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"label": "later", "data": "early"}


def test_start_at_must_be_timezone_aware(registry: Registry, client: DurableClient) -> None:
    waiter = _register_waiter(registry)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.start(waiter, start_at=datetime(2030, 1, 1))


def test_duplicate_start_of_a_running_instance(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    waiter = _register_waiter(registry)
    iid = client.start(waiter, "first", instance_id="only-one")
    with pytest.raises(InstanceExistsError, match="only-one"):
        client.start(waiter, "second", instance_id="only-one")
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    with pytest.raises(InstanceExistsError, match="RUNNING"):
        client.start(waiter, "second", instance_id="only-one")
    client.raise_event(iid, "go")
    assert client.wait(iid, timeout=WAIT).output == {"label": "first", "data": None}


def test_starting_a_finished_id_replaces_it_when_asked(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def echo(ctx: OrchestrationContext, x: Any) -> Orchestrator[Any]:
        ctx.set_custom_status(f"status {x}")
        yield ctx.create_timer(timedelta(0))
        return x

    @registry.orchestrator()
    def other(ctx: OrchestrationContext) -> str:
        return "other"

    first = client.wait(client.start(echo, 1, instance_id="reuse"), timeout=WAIT)
    assert first.output == 1
    client.start(echo, 2, instance_id="reuse", reuse=IdReusePolicy.REPLACE_FINISHED)
    second = client.wait("reuse", timeout=WAIT)
    assert second.output == 2
    assert second.custom_status == "status 2"
    assert second.execution_id != first.execution_id
    assert history_kinds(client, "reuse").count("ExecutionStarted") == 1
    client.start(other, instance_id="reuse", reuse=IdReusePolicy.REPLACE_FINISHED)
    third = client.wait("reuse", timeout=WAIT)
    assert (third.name, third.output, third.input) == ("other", "other", None)


def test_custom_status_while_running(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    @registry.orchestrator()
    def progress(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status({"step": 1, "of": 2})
        yield ctx.wait_for_event("next")
        ctx.set_custom_status({"step": 2, "of": 2})
        yield ctx.wait_for_event("next")
        return ctx.custom_status

    iid = client.start(progress)
    wait_until(lambda: custom_status_of(client, iid) == {"step": 1, "of": 2})
    assert status_of(client, iid) is OrchestrationStatus.RUNNING
    client.raise_event(iid, "next")
    wait_until(lambda: custom_status_of(client, iid) == {"step": 2, "of": 2})
    client.raise_event(iid, "next")
    state = client.wait(iid, timeout=WAIT)
    assert state.output == {"step": 2, "of": 2}
    assert state.custom_status == {"step": 2, "of": 2}


def test_timestamps(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def quick(ctx: OrchestrationContext) -> str:
        return "ok"

    before = datetime.now(UTC)
    state = client.wait(client.start(quick), timeout=WAIT)
    after = datetime.now(UTC)
    assert before <= state.created_at <= state.updated_at <= after


# -- determinism across replays -------------------------------------------------------------


def test_new_uuid_is_deterministic_across_replays(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def ids(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = ctx.new_uuid()
        second = ctx.new_uuid()
        ctx.set_custom_status([str(first), str(second)])
        yield ctx.wait_for_event("go")
        return [str(first), str(second), str(ctx.new_uuid())]

    worker = make_worker()
    iid = client.start(ids)
    wait_until(lambda: custom_status_of(client, iid) is not None)
    before_replay = custom_status_of(client, iid)
    worker.stop()
    make_worker()  # a new worker has nothing cached: it replays the history
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output[:2] == before_replay
    assert len(set(state.output)) == 3
    assert all(uuid.UUID(value).version == 5 for value in state.output)


def test_is_replaying_and_replay_safe_logging(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, bool]] = []

    @registry.activity()
    def step(x: int) -> int:
        return x

    @registry.orchestrator()
    def chatty(ctx: OrchestrationContext) -> Orchestrator[Any]:
        seen.append(("start", ctx.is_replaying))
        ctx.logger.info("starting %s", ctx.instance_id)
        yield ctx.call_activity(step, 1)
        seen.append(("after step", ctx.is_replaying))
        ctx.logger.info("step done")
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("go")
        seen.append(("after event", ctx.is_replaying))
        ctx.logger.warning("event received")
        return "done"

    caplog.set_level(logging.INFO, logger="durable_fx.orchestration")
    worker = make_worker()
    iid = client.start(chatty)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    worker.stop()
    make_worker()
    client.raise_event(iid, "go")
    assert client.wait(iid, timeout=WAIT).output == "done"

    assert seen == [
        ("start", False),
        ("after step", False),
        ("start", True),
        ("after step", True),
        ("after event", False),
    ]
    lines = [
        r.getMessage() for r in caplog.records if r.name.startswith("durable_fx.orchestration")
    ]
    assert lines == [f"starting {iid}", "step done", "event received"]
    tagged = [r for r in caplog.records if r.name.startswith("durable_fx.orchestration")]
    assert all(getattr(r, "instance_id", None) == iid for r in tagged)


def test_terminate_does_not_run_cleanup_code_that_schedules_work(
    registry: Registry, worker: Worker, client: DurableClient, wait_until: Callable[..., Any]
) -> None:
    cleaned: list[str] = []

    @registry.activity()
    def cleanup() -> None:
        cleaned.append("ran")

    @registry.orchestrator()
    def tidy(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            ctx.set_custom_status("waiting")
            yield ctx.wait_for_event("never")
        finally:
            # A durable orchestrator cannot run this once terminated: it must not
            # block the termination nor schedule the activity.
            yield ctx.call_activity(cleanup)

    iid = client.start(tidy)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.terminate(iid, "bye")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.TERMINATED
    assert state.output == "bye"
    assert "TaskScheduled" not in history_kinds(client, iid)
    time.sleep(0.1)
    assert cleaned == []


@pytest.mark.parametrize("cache_size", [0, 10_000], ids=["cold-replay-every-step", "cached"])
def test_every_feature_gives_the_same_result_under_replay(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
    cache_size: int,
) -> None:
    from durable_fx import RetryPolicy, TaskFailedError, when_all, when_any

    failures: dict[str, int] = {}

    @registry.activity()
    def inc(x: int) -> int:
        return x + 1

    @registry.activity()
    def flaky(key: str) -> str:
        failures[key] = failures.get(key, 0) + 1
        if failures[key] < 2:
            raise ConnectionError("once")
        return "recovered"

    @registry.activity()
    def broken() -> None:
        raise ValueError("always")

    @registry.orchestrator()
    def child(ctx: OrchestrationContext, x: int) -> Orchestrator[Any]:
        y = yield ctx.call_activity(inc, x)
        yield ctx.create_timer(timedelta(milliseconds=10))
        return y * 10

    @registry.orchestrator()
    def sink(ctx: OrchestrationContext, n: int) -> Orchestrator[Any]:
        out: dict[str, Any] = {"uuid": str(ctx.new_uuid())}
        out["seq"] = yield ctx.call_activity(inc, n)
        out["fan"] = yield when_all([ctx.call_activity(inc, i) for i in range(5)])
        ctx.set_custom_status("wait e1")
        winner = yield when_any([ctx.wait_for_event("e1"), ctx.create_timer(timedelta(hours=1))])
        out["e1"] = winner.get_result()
        try:
            yield ctx.wait_for_event("e2", timeout=timedelta(milliseconds=50))
        except EventTimeoutError:
            out["e2"] = "timed out"
        out["sub"] = yield ctx.call_sub_orchestrator(child, 4)
        policy = RetryPolicy(first_interval=timedelta(milliseconds=10), max_attempts=3)
        out["retried"] = yield ctx.call_activity(flaky, ctx.instance_id, retry=policy)
        try:
            yield ctx.call_activity(broken)
        except TaskFailedError as error:
            out["caught"] = error.error_type
        ctx.set_custom_status("wait e3")
        out["e3"] = yield ctx.wait_for_event("e3")
        out["uuid2"] = str(ctx.new_uuid())
        if n < 1:
            ctx.continue_as_new(n + 1)
            return None
        return out

    make_worker(cache_size=cache_size)
    iid = client.start(sink, 0)
    for generation in range(2):
        wait_until(lambda: custom_status_of(client, iid) == "wait e1")
        client.raise_event(iid, "e1", f"first {generation}")
        wait_until(lambda: custom_status_of(client, iid) == "wait e3")
        client.raise_event(iid, "e3", f"third {generation}")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    out = state.output
    assert out["seq"] == 2
    assert out["fan"] == [1, 2, 3, 4, 5]
    assert (out["e1"], out["e2"], out["e3"]) == ("first 1", "timed out", "third 1")
    assert out["sub"] == 50
    assert out["retried"] == "recovered"
    assert out["caught"] == "ValueError"
    assert out["uuid"] != out["uuid2"]
