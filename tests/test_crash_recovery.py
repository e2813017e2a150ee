"""Durability across process death, on the SQLite store, with real worker processes.

A worker subprocess is SIGKILLed (no shutdown, no lease released, results
still in its write buffer lost) while it runs activities or while its
orchestrations wait on timers and events; a fresh worker process then finishes
everything. The activities write a ledger line (fsynced) as their side
effect, so the tests can tell exactly which ran, where, and how often.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    EntityId,
    HistoryEvent,
    OrchestrationState,
    OrchestrationStatus,
)
from tests.apps import durability_app as app
from tests.support.instances import wait_until
from tests.support.workers import (
    WorkerPool,
    assert_history_consistent,
    completed_tasks,
    events_of,
    histories,
    poisoned_count,
    read_ledger,
    runs_per_task,
)

pytestmark = pytest.mark.slow

# Short enough that the restarted worker soon takes over what the killed one
# held, long enough that a live worker renews in time.
LEASE_SECONDS = 2.0


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


@pytest.fixture
def workers(tmp_path: Path, store_url: str, ledger: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(tmp_path, store_url, ledger)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def client(store_url: str) -> Iterator[DurableClient]:
    with DurableClient(store_url) as client:
        yield client


def test_worker_killed_mid_activity_loses_nothing_and_reruns_only_unrecorded_work(
    workers: WorkerPool, client: DurableClient, ledger: Path, store_url: str
) -> None:
    instances = 30
    per_instance = app.SEQUENTIAL_STEPS + app.FAN_OUT
    total = instances * per_instance
    ids = [client.start(app.pipeline, n, instance_id=f"run-{n:02d}") for n in range(instances)]

    first = workers.start("first", lease_seconds=LEASE_SECONDS, step_delay=0.1)
    wait_until(
        lambda: len(read_ledger(ledger)) >= total // 3,
        timeout=30,
        what="a third of the activities to run",
    )
    first.kill()
    killed_at = time.monotonic()

    # What the dead worker left behind, before anyone else touches the store.
    before = read_ledger(ledger)
    at_kill = histories(client, ids)
    recorded = set().union(*(completed_tasks(state) for state in at_kill.values()))
    ran_before = runs_per_task(before)
    in_flight = set(ran_before) - recorded
    assert {entry.pid for entry in before} == {first.pid}
    assert all(runs == 1 for runs in ran_before.values())
    unfinished = [i for i, s in at_kill.items() if s.status is not OrchestrationStatus.COMPLETED]
    assert unfinished, "the kill came too late: every instance had already completed"
    assert in_flight, "the kill landed between activities; nothing was in flight"

    second = workers.start("second", lease_seconds=LEASE_SECONDS, step_delay=0.1)
    finals = {instance_id: client.wait(instance_id, timeout=30) for instance_id in ids}
    recovered_in = time.monotonic() - killed_at

    for n, instance_id in enumerate(ids):
        state = finals[instance_id]
        assert state.status is OrchestrationStatus.COMPLETED, (instance_id, state.failure)
        assert {k: v for k, v in state.output.items() if k != "pids"} == app.expected_pipeline(n)
    done = histories(client, ids)
    for state in done.values():
        assert_history_consistent(state)
        assert len(events_of(state, "TaskCompleted")) == per_instance

    after = read_ledger(ledger)
    runs = runs_per_task(after)
    scheduled = {(i, e.event_id) for i, s in done.items() for e in events_of(s, "TaskScheduled")}
    assert set(runs) == scheduled, "an activity never ran, or a run served no scheduled task"
    assert len(scheduled) == total
    # Results recorded in history before the kill were never run again.
    assert {task: runs[task] for task in recorded} == dict.fromkeys(recorded, 1)
    # Only work the dead worker had started but not recorded ran twice; nothing ran thrice.
    rerun = {task for task, count in runs.items() if count > 1}
    assert rerun <= in_flight, f"re-ran although recorded or never started: {rerun - in_flight}"
    assert max(runs.values()) <= 2
    assert all(entry.pid == second.pid for entry in after[len(before) :])
    assert poisoned_count(store_url) == 0
    assert not workers.errors(), workers.errors()

    print(
        f"\nmid-run kill: {len(before)}/{total} activity runs before the kill, "
        f"{len(recorded)} results in history, {len(in_flight)} started but unrecorded "
        f"(in flight), {len(rerun)} re-ran after restart (the other {len(in_flight - rerun)} "
        f"had their results stored, not yet applied), {len(unfinished)}/{instances} "
        f"instances unfinished; all complete {recovered_in:.1f} s after the kill"
    )


def test_worker_killed_while_orchestrations_wait_on_timers_and_events(
    workers: WorkerPool, client: DurableClient, ledger: Path, store_url: str
) -> None:
    def start(orchestrator: Any, seconds: float, prefix: str, count: int) -> list[str]:
        return [
            client.start(orchestrator, seconds, instance_id=f"{prefix}-{k}") for k in range(count)
        ]

    naps = start(app.nap, 2.5, "nap", 6)  # a 2.5 s durable timer
    raised_while_down = start(app.approval, 30.0, "down", 3)  # event raised while no worker runs
    raised_after = start(app.approval, 30.0, "after", 3)  # event raised after the restart
    timing_out = start(app.approval, 2.5, "timeout", 4)  # no event: the 2.5 s timeout fires
    ids = naps + raised_while_down + raised_after + timing_out

    first = workers.start("first", lease_seconds=LEASE_SECONDS)
    wait_until(
        lambda: all(events_of(s, "TimerCreated") for s in histories(client, ids).values()),
        timeout=20,
        what="every orchestration to wait on its timer",
    )
    first.kill()

    at_kill = histories(client, ids)
    for state in at_kill.values():
        assert state.status is OrchestrationStatus.RUNNING, state
        assert not events_of(state, "TimerFired"), f"{state.instance_id}: timer fired too soon"
        assert not events_of(state, "EventRaised"), state.instance_id
    for instance_id in raised_while_down:
        client.raise_event(instance_id, app.APPROVAL_EVENT, {"by": instance_id, "when": "down"})

    restarted_at = datetime.now(UTC)
    workers.start("second", lease_seconds=LEASE_SECONDS)
    for instance_id in raised_after:
        client.raise_event(instance_id, app.APPROVAL_EVENT, {"by": instance_id, "when": "up"})
    finals = {instance_id: client.wait(instance_id, timeout=30) for instance_id in ids}

    for instance_id, state in finals.items():
        assert state.status is OrchestrationStatus.COMPLETED, (instance_id, state.failure)
    for instance_id in naps:
        assert finals[instance_id].output == {"value": app.next_value(app.next_value(1))}
    for instance_id in raised_while_down:
        assert finals[instance_id].output == {"decision": {"by": instance_id, "when": "down"}}
    for instance_id in raised_after:
        assert finals[instance_id].output == {"decision": {"by": instance_id, "when": "up"}}
    for instance_id in timing_out:
        assert finals[instance_id].output == {"decision": None}

    done = histories(client, ids)
    for instance_id, state in done.items():
        assert_history_consistent(state)
        expect_event = instance_id not in timing_out and instance_id not in naps
        assert len(events_of(state, "EventRaised")) == int(expect_event), instance_id
        [created] = events_of(at_kill[instance_id], "TimerCreated")
        fired = events_of(state, "TimerFired")
        if expect_event:
            assert not fired, f"{instance_id}: the event came, yet its timeout fired"
        else:
            assert [(t.timer_id, t.fire_at) for t in fired] == [(created.event_id, created.fire_at)]
            woke = _episode_start_before(state, fired[0])
            assert woke >= created.fire_at, f"{instance_id}: woke at {woke}, before its timer"
            assert woke >= restarted_at, f"{instance_id}: the timer fired before the restart"

    # Nothing was mid-activity at the kill: every activity ran exactly once.
    runs = runs_per_task(read_ledger(ledger))
    assert len(runs) == 2 * len(ids)
    assert set(runs.values()) == {1}
    assert poisoned_count(store_url) == 0
    assert not workers.errors(), workers.errors()


def _episode_start_before(state: OrchestrationState, event: HistoryEvent) -> datetime:
    """When the episode that applied ``event`` ran (its OrchestratorStarted)."""
    history = state.history or []
    starts = [e for e in history[: history.index(event)] if e.kind == "OrchestratorStarted"]
    return starts[-1].timestamp


def test_a_long_activity_killed_mid_run_resumes_from_its_last_saved_heartbeat(
    workers: WorkerPool, client: DurableClient, ledger: Path
) -> None:
    """The details the dead worker saved with its lease renewals come with the redelivery."""
    iid = client.start(app.importer, app.IMPORT_ROWS, instance_id="import")
    first = workers.start("first", lease_seconds=LEASE_SECONDS, step_delay=0.1)
    # Renewals (every lease / 3) save the details: kill well after a few of them.
    wait_until(lambda: len(read_ledger(ledger)) >= 30, timeout=30, what="30 rows imported")
    first.kill()
    done_before = len(read_ledger(ledger))

    second = workers.start("second", lease_seconds=LEASE_SECONDS, step_delay=0.01)
    state = client.wait(iid, timeout=60)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    resumed_at = state.output["resumed_at"]
    assert state.output["pid"] == second.pid
    # Saved at most one renewal (lease / 3 = 0.67 s, about 7 rows) before the kill.
    assert done_before - 10 <= resumed_at <= done_before, (resumed_at, done_before)
    rows = [int(entry.key[3:]) for entry in read_ledger(ledger)]
    assert sorted(set(rows)) == list(range(app.IMPORT_ROWS)), "a row was never imported"
    assert len(rows) - app.IMPORT_ROWS == done_before - resumed_at, "re-ran more than the gap"


def test_a_worker_killed_mid_batch_applies_every_entity_operation_exactly_once(
    workers: WorkerPool, client: DurableClient, ledger: Path
) -> None:
    operations = 120
    counter = EntityId("tally", "crash")
    for n in range(operations):
        assert client.signal_entity(counter, "add", 1, request_id=f"op-{n}")
    # Each operation takes 50 ms: the first batch runs for seconds, uncommitted.
    first = workers.start("first", lease_seconds=LEASE_SECONDS, step_delay=0.05)
    wait_until(lambda: len(read_ledger(ledger)) >= 10, timeout=30, what="the batch to be running")
    first.kill()

    at_kill = client.get_entity(counter, int)
    assert at_kill is None or at_kill.state < operations, "the kill came after the batch"
    # Sent again by a client that did not hear back: the request ids make them no-ops.
    assert not any(client.signal_entity(counter, "add", 1, request_id=f"op-{n}") for n in range(5))

    second = workers.start("second", lease_seconds=LEASE_SECONDS)
    wait_until(
        lambda: (
            (found := client.get_entity(counter, int)) is not None and found.state == operations
        ),
        timeout=60,
        what="every operation applied",
    )
    time.sleep(1.0)  # nothing more arrives: no operation was applied twice
    final = client.get_entity(counter, int)
    assert final is not None and final.state == operations
    pids = {entry.pid for entry in read_ledger(ledger)}
    assert pids == {first.pid, second.pid}
    assert not workers.errors(), workers.errors()


def test_workers_killed_around_occurrences_start_each_occurrence_exactly_once(
    workers: WorkerPool, client: DurableClient, ledger: Path
) -> None:
    schedule = client.create_schedule(
        "crash", app.stamped, 1, every=timedelta(seconds=1), overlap="allow_all"
    )
    for n in range(4):  # killed four times, at whatever step a second's occurrence is at
        worker = workers.start(f"worker-{n}", lease_seconds=LEASE_SECONDS)
        wanted = 2 * (n + 1)
        wait_until(lambda w=wanted: len(read_ledger(ledger)) >= w, timeout=30, what="runs")
        worker.kill()
    workers.start("last", lease_seconds=LEASE_SECONDS)
    schedule.pause()
    wait_until(
        lambda: (found := schedule.describe()) is not None and found.paused and not found.running,
        timeout=60,
        what="the schedule paused with every run finished",
    )
    description = schedule.describe()
    assert description is not None
    runs = description.recent_runs
    due = [run.scheduled_at for run in runs]
    # One run per occurrence: every second from the first, none twice, none dropped.
    assert due == [due[0] + timedelta(seconds=k) for k in range(len(due))], due
    assert all(run.outcome == "completed" for run in runs), runs
    ids = sorted(run.instance_id or "" for run in runs)
    started = {
        s.instance_id for s in client.query(instance_id_prefix="crash-", page_size=1000).items
    }
    # Each occurrence is its own instance plus the runner that reports its outcome; nothing else.
    assert started == {*ids, *(f"{i}.schedule" for i in ids)}, "a start under another id"
    for state in histories(client, started).values():
        assert state.status is OrchestrationStatus.COMPLETED, state.instance_id
        assert len(events_of(state, "ExecutionStarted")) == 1, "an occurrence started twice"
    assert not workers.errors(), workers.errors()
