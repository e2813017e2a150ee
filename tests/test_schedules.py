"""Durable schedules: an orchestration started at each occurrence of a cron rule or interval.

The rules (cron occurrences, overlap, catch-up, pause, update) run on the
time-skipping test environment, where hours pass in milliseconds; the same
schedules run on every store with real time and a one-second interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from datetime import datetime, timedelta
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Registry,
    ScheduleDescription,
    ScheduleHandle,
    Worker,
)
from durable_fx.testing import ManualClock, TestEnvironment

app = Registry()
START = ManualClock.DEFAULT_START  # 2024-01-01T00:00:00Z, a Monday


@app.orchestrator()
def report(ctx: OrchestrationContext, region: str) -> str:
    return f"report for {region} at {ctx.current_utc_datetime.isoformat()}"


@app.orchestrator()
def slow_report(ctx: OrchestrationContext, minutes: int) -> Generator[Any, Any, int]:
    yield ctx.create_timer(timedelta(minutes=minutes))
    return minutes


@app.orchestrator()
def broken_report(ctx: OrchestrationContext, _: None) -> str:
    raise RuntimeError("no data")


def described(handle: ScheduleHandle) -> ScheduleDescription:
    description = handle.describe()
    assert description is not None, f"schedule {handle.schedule_id} does not exist"
    return description


def outcomes(handle: ScheduleHandle) -> list[tuple[str, str | None]]:
    return [(run.outcome, run.instance_id) for run in described(handle).recent_runs]


# -- the rules, on the time-skipping environment -------------------------------------------------


def test_a_cron_schedule_starts_one_run_per_occurrence_under_a_stable_id() -> None:
    with TestEnvironment(app) as env:
        client = env.sync_client
        handle = client.create_schedule("eu", report, "eu", cron="0 */5 * * * *")
        env.sleep_sync(timedelta(0))
        assert described(handle).next_runs[:2] == [
            START + timedelta(minutes=5),
            START + timedelta(minutes=10),
        ]
        env.sleep_sync(timedelta(minutes=16))
        ids = [f"eu-20240101T00{m:02d}00Z" for m in (5, 10, 15)]
        assert outcomes(handle) == [("completed", i) for i in ids]
        first = client.get(ids[0])
        assert first is not None and first.status is OrchestrationStatus.COMPLETED
        assert first.output == "report for eu at 2024-01-01T00:05:00+00:00"
        assert described(handle).next_runs[0] == START + timedelta(minutes=20)


def test_an_interval_counts_from_its_start_and_stops_at_its_end() -> None:
    with TestEnvironment(app) as env:
        handle = env.sync_client.create_schedule(
            "windowed",
            report,
            "us",
            every=timedelta(hours=1),
            start_at=START + timedelta(minutes=30),
            end_at=START + timedelta(hours=2, minutes=45),
        )
        env.sleep_sync(timedelta(hours=6))
        times = [run.scheduled_at for run in described(handle).recent_runs]
        assert times == [START + timedelta(hours=h, minutes=30) for h in (0, 1, 2)]
        assert described(handle).next_runs == []


@pytest.mark.parametrize(
    ("overlap", "expected"),
    [
        # A run takes 25 minutes; occurrences every 10: at 10, 20, 30, 40, 50.
        ("skip", ["completed", "skipped", "skipped", "completed", "skipped"]),
        ("allow_all", ["completed"] * 5),
    ],
)
def test_an_occurrence_while_a_run_goes_on_follows_the_overlap_policy(
    overlap: str, expected: list[str]
) -> None:
    with TestEnvironment(app) as env:
        handle = env.sync_client.create_schedule(
            "slow", slow_report, 25, every=timedelta(minutes=10), overlap=overlap
        )
        env.sleep_sync(timedelta(minutes=51))
        env.sleep_sync(timedelta(minutes=30))  # let the last runs end
        handle.pause()
        env.sleep_sync(timedelta(0))
        runs = described(handle).recent_runs
        assert [run.outcome for run in runs][:5] == expected


def test_buffer_one_runs_one_waiting_occurrence_when_the_run_ends() -> None:
    with TestEnvironment(app) as env:
        handle = env.sync_client.create_schedule(
            "buffered", slow_report, 25, every=timedelta(minutes=10), overlap="buffer_one"
        )
        env.sleep_sync(timedelta(minutes=35))
        runs = described(handle).recent_runs
        # 10 runs until 35; 20 and 30 came while it ran: 30 replaced 20 and started at 35.
        assert [run.scheduled_at for run in runs] == [
            START + timedelta(minutes=10),
            START + timedelta(minutes=30),
        ]
        assert [run.outcome for run in runs] == ["completed", "running"]


def test_an_occurrence_found_too_late_is_missed_not_caught_up() -> None:
    with TestEnvironment(app, time_skipping=False) as env:
        handle = env.sync_client.create_schedule(
            "late", report, "eu", every=timedelta(minutes=5), catch_up_window=timedelta(minutes=1)
        )
        env.sleep_sync(timedelta(0))
        # The app was down for an hour: the clock jumps without anything running.
        env.clock.advance(timedelta(hours=1))
        env.sleep_sync(timedelta(0))
        runs = described(handle).recent_runs
        # 00:05 was found an hour late; the ten after it are older than the window and
        # are skipped without a trace; 01:00 is due now and runs.
        assert [(run.outcome, run.scheduled_at) for run in runs] == [
            ("missed", START + timedelta(minutes=5)),
            ("completed", START + timedelta(hours=1)),
        ]
        assert described(handle).next_runs[0] == START + timedelta(hours=1, minutes=5)


def test_pause_resume_update_trigger_and_delete() -> None:
    with TestEnvironment(app) as env:
        client = env.sync_client
        handle = client.create_schedule("steered", report, "eu", every=timedelta(minutes=10))
        env.sleep_sync(timedelta(minutes=11))
        handle.pause()
        env.sleep_sync(timedelta(minutes=30))
        assert described(handle).paused and len(described(handle).recent_runs) == 1
        assert described(handle).next_runs == []

        handle.update(input="us", every=timedelta(minutes=15))
        handle.resume()
        env.sleep_sync(timedelta(minutes=16))
        latest = described(handle).recent_runs[-1]
        # Every 15 minutes still counts from the creation: 00:45 is the first after 00:41.
        assert latest.scheduled_at == START + timedelta(minutes=45)
        state = client.get(latest.instance_id or "")
        assert state is not None and state.output is not None and "us" in state.output

        handle.trigger_now()
        env.sleep_sync(timedelta(0))
        manual = described(handle).recent_runs[-1]
        assert manual.instance_id is not None and "-manual-" in manual.instance_id
        assert [d.schedule_id for d in client.list_schedules()] == ["steered"]

        handle.delete()
        env.sleep_sync(timedelta(hours=1))
        assert handle.describe() is None
        assert client.list_schedules() == []


def test_schedules_are_listed_by_id_with_filters() -> None:
    with TestEnvironment(app) as env:
        client = env.sync_client
        for schedule_id in ("eu-daily", "eu-hourly", "us-daily"):
            client.create_schedule(schedule_id, report, "x", every=timedelta(hours=1))
        client.create_schedule("eu-slow", slow_report, 1, every=timedelta(hours=1)).pause()
        env.sleep_sync(timedelta(0))

        def ids(**filters: Any) -> list[str]:
            return [d.schedule_id for d in client.list_schedules(**filters)]

        assert ids() == ["eu-daily", "eu-hourly", "eu-slow", "us-daily"]
        assert ids(id_prefix="eu-") == ["eu-daily", "eu-hourly", "eu-slow"]
        assert ids(orchestration=report) == ["eu-daily", "eu-hourly", "us-daily"]
        assert ids(orchestration="slow_report", paused=True) == ["eu-slow"]
        assert ids(id_prefix="eu-", paused=False) == ["eu-daily", "eu-hourly"]


def test_a_failed_run_is_recorded_with_why() -> None:
    with TestEnvironment(app) as env:
        handle = env.sync_client.create_schedule(
            "broken", broken_report, every=timedelta(minutes=1)
        )
        env.sleep_sync(timedelta(minutes=1, seconds=30))
        run = described(handle).recent_runs[0]
        assert run.outcome == "failed"
        assert run.detail is not None and "no data" in run.detail


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ({"cron": "every five minutes"}, "cron"),
        ({"cron": "61 * * * * *"}, "cron"),
        ({}, "exactly one of cron and every"),
        ({"cron": "* * * * *", "every": timedelta(minutes=1)}, "exactly one of cron and every"),
        ({"every": timedelta(0)}, "every must be at least"),
        ({"every": timedelta(minutes=1), "jitter": timedelta(seconds=-1)}, "jitter"),
        ({"every": timedelta(minutes=1), "start_at": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"every": timedelta(minutes=1), "catch_up_window": timedelta(-1)}, "catch_up_window"),
        ({"cron": "0 0 0 30 2 *"}, "never occurs"),  # February 30th
    ],
)
def test_a_bad_schedule_is_refused_naming_the_problem(when: dict[str, Any], problem: str) -> None:
    with TestEnvironment(app) as env, pytest.raises(ValueError, match=problem):
        env.sync_client.create_schedule("bad", report, "eu", **when)


def test_a_schedule_id_follows_the_entity_key_rules_and_is_created_once() -> None:
    with TestEnvironment(app) as env:
        client = env.sync_client
        with pytest.raises(ValueError, match="entity"):
            client.create_schedule("", report, "eu", every=timedelta(minutes=1))
        with pytest.raises(ValueError, match="too long for its runs"):
            client.create_schedule("x" * 230, report, "eu", every=timedelta(minutes=1))
        client.create_schedule("once", report, "eu", every=timedelta(minutes=1))
        env.sleep_sync(timedelta(0))
        with pytest.raises(ValueError, match="already exists"):
            client.create_schedule("once", report, "us", every=timedelta(minutes=1))


# -- every store, real time ---------------------------------------------------------------------


def test_a_schedule_runs_on_every_store(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(app)
    handle = client.create_schedule("fast", report, "eu", every=timedelta(seconds=1))
    deadline = time.monotonic() + 30
    while len([r for r in _runs(handle) if r[0] == "completed"]) < 3:
        assert time.monotonic() < deadline, f"runs so far: {_runs(handle)}"
        time.sleep(0.1)
    handle.pause()
    ids = [instance_id for outcome, instance_id in _runs(handle) if outcome == "completed"]
    for instance_id in ids:
        state = client.get(instance_id or "")
        assert state is not None and state.status is OrchestrationStatus.COMPLETED
    # Each occurrence ran under its own id, once.
    assert len(set(ids)) == len(ids)
    handle.delete()
    deadline = time.monotonic() + 30
    while handle.describe() is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _runs(handle: ScheduleHandle) -> list[tuple[str, str | None]]:
    description = handle.describe()
    return (
        [] if description is None else [(r.outcome, r.instance_id) for r in description.recent_runs]
    )
