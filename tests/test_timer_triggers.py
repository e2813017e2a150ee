"""Timer triggers under ``durable-fx serve``: the Functions host's schedules, as durable schedules.

The rules (occurrences, the schedule monitor after downtime, run on startup,
changed and removed functions) run on the time-skipping test environment;
``serve`` itself runs the app in ``tests/apps/timer_app.py`` in real time,
alone and as two replicas on one store.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from durable_fx import DurableClient, Registry, ScheduleDescription
from durable_fx.hosting import (
    Invoker,
    TimerScheduleError,
    TimerTriggers,
    index_app,
    read_timer_binding,
)
from durable_fx.testing import ManualClock, TestEnvironment
from tests.support.azurite import Azurite, new_hub
from tests.support.instances import wait_until
from tests.support.serve import Server, server_env, start_server

START = ManualClock.DEFAULT_START  # 2024-01-01T00:00:00Z


def at(minutes: int = 0, hours: int = 0) -> str:
    """A time after START as the TimerRequest's status writes it."""
    return (START + timedelta(hours=hours, minutes=minutes)).isoformat()


class Calls:
    """What the app's timer functions received, by function name."""

    def __init__(self) -> None:
        self.by_function: dict[str, list[func.TimerRequest]] = {}

    def app(self, *timers: tuple[str, dict[str, Any]]) -> func.FunctionApp:
        """An app with one recording timer function per ``(name, timer_trigger kwargs)``."""
        app = func.FunctionApp()
        for name, options in timers:
            app.function_name(name)(app.timer_trigger(arg_name="timer", **options)(self._fn(name)))
        return app

    def _fn(self, name: str) -> Any:
        def record(timer: func.TimerRequest) -> None:
            self.by_function.setdefault(name, []).append(timer)

        return record

    def of(self, name: str) -> list[func.TimerRequest]:
        return self.by_function.get(name, [])


@contextmanager
def environment(*, time_skipping: bool = True) -> Iterator[tuple[TestEnvironment, Invoker]]:
    """A test environment (``serve_timers`` deploys an app's timers on it) and an invoker."""
    with (
        ThreadPoolExecutor(2) as threads,
        TestEnvironment(Registry(), time_skipping=time_skipping) as env,
    ):
        yield env, Invoker(threads, None, "base64")


def serve_timers(env: TestEnvironment, invoker: Invoker, app: func.FunctionApp) -> TimerTriggers:
    """What a ``serve`` start does for ``app``'s timer triggers, on the environment's store."""
    functions, problems = index_app(app)
    assert problems == []
    timers = TimerTriggers(functions, invoker, clock=env.clock)
    registry = Registry()
    timers.register(registry)
    env.deploy(registry)  # this start's code, as a new serve process has it
    asyncio.run(timers.start(env.client))
    env.sleep_sync(timedelta(0))
    return timers


def schedule(client: DurableClient, function: str) -> ScheduleDescription:
    found = client.get_schedule_handle(f"dfx-timer.{function}").describe()
    assert found is not None, f"no schedule for {function}"
    return found


# -- the binding, as the host reads it -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "cron", "every"),
    [
        ("0 */5 * * * *", "0 */5 * * * *", None),
        ("*/5 * * * *", "*/5 * * * *", None),  # five fields: classic cron, as the host allows
        ("00:05:00", None, timedelta(minutes=5)),
        ("1.00:00:00", None, timedelta(days=1)),
        ("01:30", None, timedelta(hours=1, minutes=30)),
        ("%REPORT_SCHEDULE%", "0 0 7 * * *", None),
    ],
)
def test_a_schedule_is_ncrontab_with_seconds_or_a_timespan(
    written: str, cron: str | None, every: timedelta | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPORT_SCHEDULE", "0 0 7 * * *")
    binding = read_timer_binding("report", {"type": "timerTrigger", "schedule": written})
    assert (binding.spec.cron, binding.spec.every) == (cron, every)
    assert binding.schedule_id == "dfx-timer.report"


@pytest.mark.parametrize(
    ("written", "use_monitor", "expected"),
    [
        ("0 */5 * * * *", None, True),  # default on
        ("*/10 * * * * *", None, False),  # more than once a minute: off by default
        ("00:00:30", None, False),
        ("00:00:30", True, True),  # asked for explicitly
        ("0 * * * * *", None, True),  # once a minute is not "fast"
        ("0 */5 * * * *", False, False),
    ],
)
def test_the_schedule_monitor_is_on_unless_the_schedule_is_faster_than_a_minute(
    written: str, use_monitor: bool | None, expected: bool
) -> None:
    trigger: dict[str, Any] = {"type": "timerTrigger", "schedule": written}
    if use_monitor is not None:
        trigger["useMonitor"] = use_monitor
    assert read_timer_binding("t", trigger).use_monitor is expected


@pytest.mark.parametrize(
    "written",
    ["every five minutes", "61 * * * * *", "25:00:00", "00:00:00", "0 0 0 30 2 *", "%NOT_SET%", ""],
)
def test_a_malformed_schedule_is_refused_naming_the_function_and_the_schedule(
    written: str,
) -> None:
    app = Calls().app(("nightly_report", {"schedule": written}))
    functions, _ = index_app(app)
    with ThreadPoolExecutor(1) as threads, pytest.raises(TimerScheduleError) as refused:
        TimerTriggers(functions, Invoker(threads, None, "base64"))
    assert "nightly_report" in str(refused.value)
    assert repr(written) in str(refused.value) or "NOT_SET" in str(refused.value)


# -- the rules, on the time-skipping environment ---------------------------------------------


def test_a_timer_runs_its_function_at_each_occurrence_with_the_hosts_timer_request() -> None:
    calls = Calls()
    app = calls.app(("tick", {"schedule": "0 */5 * * * *"}))
    with environment() as (env, invoker):
        serve_timers(env, invoker, app)
        env.sleep_sync(timedelta(minutes=16))
        received = calls.of("tick")
        assert [t.past_due for t in received] == [False, False, False]
        # The monitor's status as the host hands it: Last run, this run as Next.
        assert [t.schedule_status for t in received] == [
            {"Last": "0001-01-01T00:00:00", "Next": at(5), "LastUpdated": at()},
            {"Last": at(5), "Next": at(10), "LastUpdated": at(5)},
            {"Last": at(10), "Next": at(15), "LastUpdated": at(10)},
        ]
        assert received[0].schedule == {"AdjustForDST": True}
        runs = schedule(env.sync_client, "tick").recent_runs
        assert [run.outcome for run in runs] == ["completed"] * 3


def test_a_timespan_counts_from_the_first_start_and_has_no_status_without_a_monitor() -> None:
    calls = Calls()
    app = calls.app(("sweep", {"schedule": "00:10:00", "use_monitor": False}))
    with environment() as (env, invoker):
        serve_timers(env, invoker, app)
        env.sleep_sync(timedelta(minutes=25))
        received = calls.of("sweep")
        assert len(received) == 2
        assert received[0].schedule_status == {} and received[0].schedule == {"AdjustForDST": False}
        assert [r.scheduled_at for r in schedule(env.sync_client, "sweep").recent_runs] == [
            START + timedelta(minutes=10),
            START + timedelta(minutes=20),
        ]


def test_after_downtime_a_missed_occurrence_runs_once_marked_past_due() -> None:
    calls = Calls()
    app = calls.app(("tick", {"schedule": "0 */5 * * * *"}))
    with environment(time_skipping=False) as (env, invoker):
        serve_timers(env, invoker, app)
        # Down for an hour: twelve occurrences pass with nothing running.
        env.clock.advance(timedelta(hours=1, seconds=30))
        env.sleep_sync(timedelta(0))
        received = calls.of("tick")
        assert len(received) == 1, [t.schedule_status for t in received]
        assert received[0].past_due is True
        assert received[0].schedule_status["Next"] == at(5)  # the occurrence that was missed
        # Then the schedule goes on from now, not from the missed occurrences.
        env.sleep_sync(timedelta(minutes=5))
        assert [t.past_due for t in calls.of("tick")] == [True, False]
        assert calls.of("tick")[1].schedule_status["Next"] == at(5, hours=1)


def test_without_the_monitor_a_missed_occurrence_never_runs() -> None:
    calls = Calls()
    app = calls.app(("tick", {"schedule": "0 */5 * * * *", "use_monitor": False}))
    with environment(time_skipping=False) as (env, invoker):
        serve_timers(env, invoker, app)
        env.clock.advance(timedelta(hours=1, seconds=30))
        env.sleep_sync(timedelta(0))
        assert calls.of("tick") == []
        env.sleep_sync(timedelta(minutes=5))
        assert [t.past_due for t in calls.of("tick")] == [False]
        assert schedule(env.sync_client, "tick").recent_runs[-1].scheduled_at == START + timedelta(
            hours=1, minutes=5
        )


def test_run_on_startup_runs_once_at_each_start() -> None:
    calls = Calls()
    warm = ("warm", {"schedule": "0 0 7 * * *", "run_on_startup": True})
    with environment() as (env, invoker):
        serve_timers(env, invoker, calls.app(warm))
        assert [t.past_due for t in calls.of("warm")] == [False]
        serve_timers(env, invoker, calls.app(warm))  # a restart
        assert len(calls.of("warm")) == 2
        env.sleep_sync(timedelta(hours=7, seconds=1))
        assert len(calls.of("warm")) == 3  # and the schedule as usual


def test_a_changed_schedule_moves_on_without_firing_and_a_removed_function_is_paused() -> None:
    calls = Calls()
    with environment() as (env, invoker):
        serve_timers(env, invoker, calls.app(("tick", {"schedule": "0 */5 * * * *"})))
        env.sleep_sync(timedelta(minutes=6))
        serve_timers(env, invoker, calls.app(("tick", {"schedule": "0 0 * * * *"})))
        assert len(calls.of("tick")) == 1
        assert schedule(env.sync_client, "tick").next_runs[0] == START + timedelta(hours=1)

        # A deploy without ``tick``: its schedule stops; one with it again resumes it.
        serve_timers(env, invoker, calls.app(("other", {"schedule": "0 0 0 * * *"})))
        assert schedule(env.sync_client, "tick").paused
        env.sleep_sync(timedelta(hours=2))
        assert len(calls.of("tick")) == 1
        serve_timers(env, invoker, calls.app(("tick", {"schedule": "0 0 * * * *"})))
        assert not schedule(env.sync_client, "tick").paused
        env.sleep_sync(timedelta(hours=1))
        assert len(calls.of("tick")) == 2


def test_a_failing_timer_function_is_recorded_and_the_schedule_goes_on() -> None:
    app = func.FunctionApp()
    attempts: list[bool] = []

    @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    def flaky(timer: func.TimerRequest) -> None:
        attempts.append(timer.past_due)
        if len(attempts) == 1:
            raise RuntimeError("report service down")

    with environment() as (env, invoker):
        serve_timers(env, invoker, app)
        env.sleep_sync(timedelta(minutes=11))
        runs = schedule(env.sync_client, "flaky").recent_runs
        assert [run.outcome for run in runs] == ["failed", "completed"]
        assert runs[0].detail is not None and "report service down" in runs[0].detail


# -- durable-fx serve, real time -------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    azurite: Azurite = request.getfixturevalue("azurite")
    return azurite.connection_string(new_hub())


def records(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def serve(tmp_path: Path, target: str, store_url: str) -> Server:
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    env = server_env(TIMER_LOG=str(tmp_path / "timers.jsonl"))
    return start_server(tmp_path, target, env, ["--store", store_url])


def test_two_serve_replicas_on_one_store_run_each_occurrence_once(
    tmp_path: Path, store_url: str
) -> None:
    log = tmp_path / "timers.jsonl"
    first = serve(tmp_path, "timer_app:app", store_url)
    second = serve(tmp_path, "timer_app:app", store_url)
    try:
        wait_until(
            lambda: len([r for r in records(log) if r["function"] == "every_second"]) >= 6,
            timeout=60,
            what="six runs of every_second",
        )
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0), first.logs() + second.logs()
    ticks = [r for r in records(log) if r["function"] == "every_second"]
    occurrences = [r["status"]["Next"] for r in ticks]
    assert len(occurrences) == len(set(occurrences)), occurrences  # none ran twice
    # run_on_startup: once per serve start, not on a schedule (its next is next January).
    assert len([r for r in records(log) if r["function"] == "on_startup"]) == 2
    assert "function every_second: timer 00:00:01" in first.logs()


def test_serve_runs_a_plain_function_apps_timer_triggers(tmp_path: Path) -> None:
    log = tmp_path / "timers.jsonl"
    server = serve(tmp_path, "timer_app:plain", f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        wait_until(lambda: len(records(log)) >= 2, timeout=60, what="two runs of plain_tick")
    finally:
        assert server.stop() == 0, server.logs()
    assert {r["function"] for r in records(log)} == {"plain_tick"}
    assert all(r["past_due"] is False and r["status"] == {} for r in records(log))


def test_serve_refuses_to_start_with_a_malformed_schedule(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text(json.dumps({"version": "2.0"}))
    command = [sys.executable, "-m", "durable_fx.cli", "serve", "timer_app:broken", "--port", "0"]
    command += ["--store", f"sqlite:///{tmp_path / 'broken.db'}"]
    done = subprocess.run(
        command, cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "nightly_report" in done.stderr and "'every five minutes'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
