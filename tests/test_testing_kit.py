"""The test kit, black-box through ``durable_fx.testing``: time skipping, overrides,
the history builder and the pytest plugin."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from durable_fx import (
    ActivityContext,
    EventTimeoutError,
    NonDeterminismError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Replayer,
    RetryPolicy,
    UnknownNameError,
    history_from_json,
    history_to_json,
)
from durable_fx.history import ExecutionStarted, TimerCreated, TimerFired
from durable_fx.testing import HistoryBuilder, ManualClock, TestEnvironment

DAY = timedelta(hours=24)

app = Registry()


class Greeting(BaseModel):
    name: str
    punctuation: str = "!"


@app.activity()
def greet(greeting: Greeting) -> str:
    return f"hello {greeting.name}{greeting.punctuation}"


@app.orchestrator()
def after_a_day(ctx: OrchestrationContext, name: str) -> Orchestrator[str]:
    yield ctx.create_timer(DAY)
    greeting: str = yield ctx.call_activity(greet, Greeting(name=name))
    return greeting


@app.orchestrator()
def hourly(ctx: OrchestrationContext, hours: int) -> Orchestrator[list[str]]:
    seen = []
    for _ in range(hours):
        yield ctx.create_timer(timedelta(hours=1))
        seen.append(ctx.current_utc_datetime.isoformat())
    return seen


@app.orchestrator()
def approval(ctx: OrchestrationContext) -> Orchestrator[str]:
    try:
        decision: str = yield ctx.wait_for_event("Approve", timeout=DAY, result_type=str)
    except EventTimeoutError:
        return "timed out"
    return decision


flaky_calls: list[int] = []
flaky_lock = threading.Lock()


@app.activity()
def flaky(failures: int) -> int:
    with flaky_lock:
        flaky_calls.append(1)
        if len(flaky_calls) <= failures:
            raise ConnectionError("try again")
        return len(flaky_calls)


@app.orchestrator()
def patient(ctx: OrchestrationContext, failures: int) -> Orchestrator[int]:
    policy = RetryPolicy(first_interval=timedelta(minutes=1), backoff=2.0, max_attempts=5)
    calls: int = yield ctx.call_activity(flaky, failures, retry=policy)
    return calls


# -- time skipping -----------------------------------------------------------------------------


def test_a_day_long_timer_passes_while_the_client_waits() -> None:
    with TestEnvironment(app) as env:
        began = env.now()
        instance_id = env.sync_client.start(after_a_day, "Ada")
        state = env.sync_client.wait(instance_id)
        history = env.sync_client.get(instance_id, history=True)

    assert state.status is OrchestrationStatus.COMPLETED
    assert state.output == "hello Ada!"
    assert env.now() - began == DAY
    assert history is not None and history.history is not None
    started = next(e for e in history.history if isinstance(e, ExecutionStarted))
    fired = next(e for e in history.history if isinstance(e, TimerFired))
    assert fired.timestamp - started.timestamp == DAY
    assert state.updated_at - state.created_at == DAY


def test_the_async_client_skips_time_too() -> None:
    async def scenario() -> tuple[Any, timedelta]:
        async with TestEnvironment(app) as env:
            began = env.now()
            instance_id = await env.client.start(hourly, 3)
            state = await env.client.wait(instance_id)
            return state.output, env.now() - began

    output, passed = asyncio.run(scenario())
    assert passed == timedelta(hours=3)
    start = ManualClock.DEFAULT_START
    assert output == [(start + timedelta(hours=h)).isoformat() for h in (1, 2, 3)]


def test_time_stands_still_until_a_client_waits() -> None:
    with TestEnvironment(app) as env:
        began = env.now()
        instance_id = env.sync_client.start(approval)
        env.sync_client.raise_event(instance_id, "Approve", "yes")
        state = env.sync_client.wait(instance_id)
    # The receipt was in before anyone waited: it wins, and no time passed.
    assert state.output == "yes"
    assert env.now() == began


def test_an_event_timeout_fires_a_day_later() -> None:
    with TestEnvironment(app) as env:
        began = env.now()
        state = env.sync_client.wait(env.sync_client.start(approval))
    assert state.output == "timed out"
    assert env.now() - began == DAY


def test_sleep_moves_time_by_hand_through_each_timer() -> None:
    async def scenario() -> None:
        async with TestEnvironment(app, time_skipping=False) as env:
            began = env.now()
            instance_id = await env.client.start(hourly, 3)
            await env.sleep(timedelta(0))  # settle: the first timer is set, nothing else
            state = await env.client.get(instance_id)
            assert state is not None and state.status is OrchestrationStatus.RUNNING
            assert env.now() == began

            await env.sleep(timedelta(hours=2, minutes=30))
            state = await env.client.get(instance_id)
            assert state is not None and state.status is OrchestrationStatus.RUNNING
            assert env.now() - began == timedelta(hours=2, minutes=30)

            await env.sleep(timedelta(hours=1))
            state = await env.client.get(instance_id)
            assert state is not None and state.status is OrchestrationStatus.COMPLETED
            assert state.output == [(began + timedelta(hours=h)).isoformat() for h in (1, 2, 3)]

    asyncio.run(scenario())


def test_sync_sleep_in_a_plain_test() -> None:
    with TestEnvironment(app, time_skipping=False) as env:
        instance_id = env.sync_client.start(approval)
        env.sleep_sync(DAY - timedelta(seconds=1))
        state = env.sync_client.get(instance_id)
        assert state is not None and state.status is OrchestrationStatus.RUNNING
        env.sleep_sync(timedelta(seconds=1))
        state = env.sync_client.get(instance_id)
        assert state is not None and state.output == "timed out"


def test_retry_back_off_waits_pass_and_show_in_the_history() -> None:
    flaky_calls.clear()
    with TestEnvironment(app) as env:
        instance_id = env.sync_client.start(patient, 3)
        state = env.sync_client.wait(instance_id)
        recorded = env.sync_client.get(instance_id, history=True)
    assert state.output == 4  # three failures, then the fourth attempt
    assert recorded is not None and recorded.history is not None
    waits = [
        e.fire_at - e.timestamp
        for e in recorded.history
        if isinstance(e, TimerCreated) and e.purpose == "retry"
    ]
    assert waits == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4)]


def test_the_manual_clock_wakes_sleepers_when_moved() -> None:
    clock = ManualClock()

    async def sleeper() -> None:
        await clock.sleep(60)

    async def scenario() -> None:
        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0)
        clock.advance(59)
        await asyncio.sleep(0)
        assert not task.done()
        assert clock.next_wake() == ManualClock.DEFAULT_START + timedelta(seconds=60)
        # Moved from another thread: the sleeper's loop is woken all the same.
        await asyncio.to_thread(clock.advance, 1)
        await asyncio.wait_for(task, timeout=5)
        assert clock.next_wake() is None

    asyncio.run(scenario())


# -- activity overrides ----------------------------------------------------------------------


def test_an_override_runs_instead_of_the_activity_without_touching_the_app() -> None:
    received: list[tuple[Greeting, str]] = []

    def fake_greet(greeting: Greeting, context: ActivityContext) -> str:
        received.append((greeting, context.name))
        return f"fake hello {greeting.name}"

    with TestEnvironment(app) as env:
        env.override(greet, fake_greet)
        state = env.sync_client.wait(env.sync_client.start(after_a_day, "Ada"))
        env.restore("greet")
        again = env.sync_client.wait(env.sync_client.start(after_a_day, "Bob"))

    assert state.output == "fake hello Ada"
    # The fake gets the input decoded as the real activity would, and its context.
    assert received == [(Greeting(name="Ada"), "greet")]
    assert again.output == "hello Bob!"
    assert app.get_activity("greet").fn is greet


def test_an_async_fake_by_name() -> None:
    async def fake_greet(greeting: Greeting) -> str:
        await asyncio.sleep(0)
        return greeting.name.upper()

    with TestEnvironment(app) as env:
        env.override("greet", fake_greet)
        assert env.sync_client.wait(env.sync_client.start(after_a_day, "ada")).output == "ADA"


def test_overriding_an_activity_the_app_lacks_is_an_error() -> None:
    env = TestEnvironment(app)
    with pytest.raises(UnknownNameError, match="send_fax"):
        env.override("send_fax", lambda _: None)


# -- history builder and golden replay -------------------------------------------------------


def test_the_builder_writes_what_the_runtime_records() -> None:
    with TestEnvironment(app) as env:
        instance_id = env.sync_client.start(after_a_day, "Ada")
        env.sync_client.wait(instance_id)
        recorded = env.sync_client.get(instance_id, history=True)
    assert recorded is not None and recorded.history is not None

    built = (
        HistoryBuilder(
            "after_a_day", "Ada", instance_id=instance_id, execution_id=recorded.execution_id
        )
        .timer(0, DAY)
        .episode(DAY)
        .fired(0)
        .scheduled(1, "greet", {"name": "Ada", "punctuation": "!"})
        .episode(0)
        .completed(1, "hello Ada!")
        .finished("hello Ada!")
    )
    # The trace context a start records depends on whether tracing is on (another
    # test of this process may have set an SDK): telemetry, not behaviour.
    untraced = [
        e.model_copy(update={"trace_context": None})
        if "trace_context" in type(e).model_fields
        else e
        for e in recorded.history
    ]
    assert built.events == untraced


def test_a_golden_history_replays_and_catches_a_changed_orchestrator() -> None:
    golden = (
        HistoryBuilder("after_a_day", "Ada")
        .timer(0, DAY)
        .episode(DAY)
        .fired(0)
        .scheduled(1, "greet", {"name": "Ada"})
        .episode()
        .completed(1, "hello Ada!")
    ).to_json()
    assert history_from_json(golden) == history_from_json(
        history_to_json(history_from_json(golden))
    )
    assert Replayer(app).replay(golden).output == "hello Ada!"

    changed = Registry()

    @changed.activity()
    def greet(greeting: Greeting) -> str:
        return greeting.name

    @changed.orchestrator()
    def after_a_day(ctx: OrchestrationContext, name: str) -> Orchestrator[str]:
        # A new step before the timer: instances recorded by the old code break.
        yield ctx.call_activity(greet, Greeting(name=name))
        yield ctx.create_timer(DAY)
        return name

    with pytest.raises(NonDeterminismError):
        Replayer(changed).replay(golden)


def test_a_timer_must_exist_before_it_fires() -> None:
    with pytest.raises(ValueError, match="no timer 3"):
        HistoryBuilder("after_a_day").fired(3)


# -- pytest plugin ---------------------------------------------------------------------------

PLUGIN = "durable_fx.pytest_plugin"
# pytest-asyncio (installed for the SDK's tests) warns in a run without our ini.
INNER_OPTIONS = ["-p", "no:cacheprovider", "-p", "no:asyncio"]

USER_TESTS = """
from datetime import timedelta

import pytest

from durable_fx import Registry

app = Registry()


@app.orchestrator()
def reminder(ctx, days):
    yield ctx.create_timer(timedelta(days=days))
    return "remind"


@pytest.fixture
def durable_app():
    return app


def test_a_week_passes(durable_env):
    began = durable_env.now()
    state = durable_env.sync_client.wait(durable_env.sync_client.start(reminder, 7))
    assert state.output == "remind"
    assert durable_env.now() - began == timedelta(days=7)


@pytest.mark.durable_env(time_skipping=False)
def test_time_is_manual_when_marked(durable_env):
    assert not durable_env.time_skipping
"""


def test_the_plugin_gives_tests_a_durable_env(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    code = pytest.main(
        [str(tmp_path), "-q", "-p", PLUGIN, *INNER_OPTIONS, "--rootdir", str(tmp_path)]
    )
    assert code == pytest.ExitCode.OK


def test_the_plugin_asks_for_the_app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "test_no_app.py").write_text("def test_x(durable_env):\n    pass\n")
    code = pytest.main(
        [str(tmp_path), "-q", "-p", PLUGIN, *INNER_OPTIONS, "--rootdir", str(tmp_path)]
    )
    assert code == pytest.ExitCode.TESTS_FAILED
    assert "define a durable_app fixture" in capsys.readouterr().out


def test_the_plugin_is_a_pytest11_entry_point_named_after_its_module() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["pytest11"] == {PLUGIN: PLUGIN}


def test_loading_the_plugin_leaves_durable_fx_testing_unimported() -> None:
    # pytest loads plugins before conftests, and a conftest may register
    # durable_fx.testing for assertion rewriting (ours does): too late once imported.
    code = f"import sys, {PLUGIN}; print('durable_fx.testing' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
