"""The ``durable-fx`` command line, black-box: commands, JSON output, errors, the worker.

Commands run through typer's ``CliRunner`` on the real app (the same object
the console script calls) against a SQLite file in ``tmp_path``; a
``durable_fx.Worker`` in the test process serves that file. The console script
itself runs as a subprocess for a smoke test and for ``durable-fx worker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from durable_fx import (
    DurableClient,
    EntityContext,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Replayer,
    Worker,
    history_from_json,
    open_store,
)
from durable_fx.cli import app
from durable_fx.cli._timeline import format_offset, render_timeline, timeline_rows

WAIT = 20.0
SCRIPT = Path(sys.executable).parent / "durable-fx"

workflows = Registry()


@workflows.activity()
def greet(name: str) -> str:
    return f"hello {name}"


@workflows.activity()
def explode(reason: str) -> None:
    raise RuntimeError(reason)


@workflows.orchestrator()
def greeter(ctx: OrchestrationContext, name: str) -> Orchestrator[Any]:
    greeting = yield ctx.call_activity(greet, name)
    yield ctx.create_timer(timedelta(milliseconds=10))
    approval = yield ctx.wait_for_event("Approve")
    return {"greeting": greeting, "approval": approval}


@workflows.entity()
def counter(ctx: EntityContext, amount: int = 1) -> int:
    total = ctx.get_state(int, 0) + amount
    ctx.set_state(total)
    return total


@workflows.orchestrator()
def doomed(ctx: OrchestrationContext, reason: str) -> Orchestrator[Any]:
    yield ctx.call_activity(explode, reason)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def worker(store_url: str) -> Iterator[Worker]:
    with Worker(workflows, store_url, max_poll_interval=0.05, shutdown_grace=2.0) as running:
        yield running


@pytest.fixture
def cli(store_url: str) -> Callable[..., Result]:
    """Runs ``durable-fx --store <the test's file> ARGS...`` in-process."""
    runner = CliRunner()

    def invoke(*args: str, store: bool = True) -> Result:
        argv = ["--store", store_url, *args] if store else list(args)
        return runner.invoke(app, argv, catch_exceptions=False)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stderr}"
    assert result.stderr == ""
    return result


def ok_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def assert_one_line_error(result: Result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


def wait_for_status(cli: Callable[..., Result], instance_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        state: dict[str, Any] = ok_json(cli("status", instance_id, "--json"))
        if state["status"] == status:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"{instance_id} is {state['status']}, not {status}, after {WAIT} s")
        time.sleep(0.02)


# -- instance commands -------------------------------------------------------------------------


def test_round_trip_with_a_worker(cli: Callable[..., Result], worker: Worker) -> None:
    started = ok(cli("start", "greeter", "--input", '"Ada"', "--id", "order-1"))
    assert "order-1" in started.stdout

    status = ok(cli("status", "order-1"))
    assert "greeter" in status.stdout
    assert '"Ada"' in status.stdout

    raised = ok(cli("raise", "order-1", "Approve", "--data", '{"by": "Grace"}'))
    assert "Approve" in raised.stdout
    state = wait_for_status(cli, "order-1", "COMPLETED")
    assert state["output"] == {"greeting": "hello Ada", "approval": {"by": "Grace"}}

    timeline = ok(cli("history", "order-1")).stdout
    for expected in (
        "ExecutionStarted",
        'greeter("Ada")',
        'greet("Ada")',
        '"hello Ada"',
        "TimerCreated",
        "TimerFired",
        'Approve {"by":"Grace"}',
        "ExecutionCompleted",
    ):
        assert expected in timeline
    assert "OrchestratorStarted" not in timeline
    assert "OrchestratorStarted" in ok(cli("history", "order-1", "--episodes")).stdout

    ok(cli("start", "greeter", "--input", '"Bob"', "--id", "order-2"))
    assert "terminating" in ok(cli("terminate", "order-2", "--reason", "cancelled")).stdout
    state = wait_for_status(cli, "order-2", "TERMINATED")
    assert "cancelled" in ok(cli("history", "order-2")).stdout

    assert "purged 1 instance" in ok(cli("purge", "order-2")).stdout
    assert_one_line_error(cli("status", "order-2"), 1, "order-2", "durable-fx list")
    assert ok_json(cli("list", "--json"))["items"][0]["instance_id"] == "order-1"


def test_json_output_of_every_instance_command(cli: Callable[..., Result], worker: Worker) -> None:
    # --json works before the command (global) and after it (per command).
    started = ok_json(cli("--json", "start", "greeter", "--input", '"Ada"'))
    instance_id = started["instance_id"]
    assert started == {"instance_id": instance_id, "name": "greeter", "start_at": None}

    raised = ok_json(cli("raise", instance_id, "Approve", "--data", "true", "--json"))
    assert raised == {"instance_id": instance_id, "event": "Approve", "data": True}
    wait_for_status(cli, instance_id, "COMPLETED")

    state = ok_json(cli("status", instance_id, "--json"))
    assert state["instance_id"] == instance_id
    assert state["name"] == "greeter"
    assert state["status"] == "COMPLETED"
    assert state["input"] == "Ada"
    assert state["output"] == {"greeting": "hello Ada", "approval": True}
    assert state["failure"] is None
    for field in ("execution_id", "custom_status", "created_at", "updated_at"):
        assert field in state
    datetime.fromisoformat(state["created_at"])

    listing = ok_json(cli("list", "--json"))
    assert [item["instance_id"] for item in listing["items"]] == [instance_id]
    assert listing["continuation"] is None

    history = ok_json(cli("history", instance_id, "--json"))
    assert history["instance_id"] == instance_id
    assert history["status"] == "COMPLETED"
    events = history["events"]
    assert events[0]["kind"] == "ExecutionStarted"
    assert events[-1]["kind"] == "ExecutionCompleted"
    for event in events:
        assert event["offset"].startswith("+") and event["offset"].endswith("s")
        assert event["offset_seconds"] >= 0
        assert event["event"]["kind"] == event["kind"]
    scheduled = next(e for e in events if e["kind"] == "TaskScheduled")
    assert scheduled["detail"] == '#0 greet("Ada")'

    terminated = ok_json(cli("terminate", instance_id, "--json"))
    assert terminated["requested"] is False  # already finished: nothing to do
    assert terminated["status"] == "COMPLETED"

    assert ok_json(cli("purge", "--all", "--json")) == {"purged": 1}
    assert ok_json(cli("list", "--json")) == {"items": [], "continuation": None}


def test_the_replayer_replays_what_history_json_prints(
    cli: Callable[..., Result], worker: Worker, store_url: str
) -> None:
    ok(cli("start", "greeter", "--input", '"Ada"', "--id", "golden"))
    wait_for_status(cli, "golden", "RUNNING")
    ok(cli("raise", "golden", "Approve", "--data", "true"))
    wait_for_status(cli, "golden", "COMPLETED")
    printed = ok(cli("history", "golden", "--json")).stdout

    with DurableClient(store_url) as client:
        state = client.get("golden", history=True)
    assert state is not None and state.history is not None
    # The whole history, episode markers included (the timeline rows leave them out).
    assert history_from_json(printed) == state.history
    replayed = Replayer(workflows).replay(printed)
    assert replayed.status is OrchestrationStatus.COMPLETED
    assert replayed.output == {"greeting": "hello Ada", "approval": True}


def test_suspend_and_resume(cli: Callable[..., Result], worker: Worker) -> None:
    ok(cli("start", "greeter", "--input", '"Ada"', "--id", "held"))
    wait_for_status(cli, "held", "RUNNING")
    assert ok_json(cli("suspend", "held", "--reason", "audit", "--json"))["action"] == "suspend"
    wait_for_status(cli, "held", "SUSPENDED")
    ok(cli("resume", "held"))
    wait_for_status(cli, "held", "RUNNING")
    ok(cli("raise", "held", "Approve"))
    wait_for_status(cli, "held", "COMPLETED")
    timeline = ok(cli("history", "held")).stdout
    assert "ExecutionSuspended" in timeline
    assert "audit" in timeline
    assert "ExecutionResumed" in timeline


def test_rewind_runs_a_failed_instance_on(cli: Callable[..., Result], worker: Worker) -> None:
    ok(cli("start", "doomed", "--input", '"disk full"', "--id", "rewound"))
    wait_for_status(cli, "rewound", "FAILED")
    answer = ok_json(cli("rewind", "rewound", "--reason", "freed space", "--json"))
    assert answer == {"instance_id": "rewound", "action": "rewind", "reason": "freed space"}
    # The disk is still full: the activity runs again and the instance fails again.
    deadline = time.monotonic() + WAIT
    while "freed space" not in (timeline := ok(cli("history", "rewound")).stdout):
        assert time.monotonic() < deadline, timeline
        time.sleep(0.05)
    wait_for_status(cli, "rewound", "FAILED")
    assert ok(cli("history", "rewound")).stdout.count(" TaskFailed ") == 1


def test_rewind_refuses_an_instance_that_has_not_failed(
    cli: Callable[..., Result], worker: Worker
) -> None:
    ok(cli("start", "greeter", "--input", '"Ada"', "--id", "fine"))
    wait_for_status(cli, "fine", "RUNNING")
    assert_one_line_error(cli("rewind", "fine"), 1, "only a FAILED instance can be rewound")
    assert_one_line_error(cli("rewind", "nobody"), 1, "nobody")


def test_restart_under_the_same_or_a_new_id(cli: Callable[..., Result], worker: Worker) -> None:
    ok(cli("start", "greeter", "--input", '"Ada"', "--id", "again"))
    wait_for_status(cli, "again", "RUNNING")
    assert_one_line_error(cli("restart", "again"), 1, "only a finished instance")
    copy = ok_json(cli("restart", "again", "--new-id", "--json"))
    assert copy["restarted"] == "again" and copy["instance_id"] != "again"
    assert wait_for_status(cli, copy["instance_id"], "RUNNING")["input"] == "Ada"
    ok(cli("raise", "again", "Approve", "--data", "true"))
    wait_for_status(cli, "again", "COMPLETED")
    assert ok(cli("restart", "again")).stdout.strip() == "restarted again as again"
    wait_for_status(cli, "again", "RUNNING")


def test_failure_shows_in_status_and_history(cli: Callable[..., Result], worker: Worker) -> None:
    instance_id = ok_json(cli("start", "doomed", "--input", '"disk full"', "--json"))["instance_id"]
    state = wait_for_status(cli, instance_id, "FAILED")
    assert "disk full" in state["failure"]["message"]
    assert "disk full" in ok(cli("status", instance_id)).stdout
    timeline = ok(cli("history", instance_id)).stdout
    assert "TaskFailed" in timeline
    assert "RuntimeError: disk full" in timeline


def test_list_filters_and_pages(cli: Callable[..., Result]) -> None:
    # No worker: the instances stay PENDING, which is all listing needs.
    for n in range(3):
        ok(cli("start", "greeter", "--id", f"g-{n}", "--input", '"x"'))
    ok(cli("start", "doomed", "--id", "d-0", "--input", '"x"'))

    first = ok_json(cli("list", "--page-size", "3", "--json"))
    assert len(first["items"]) == 3
    assert first["continuation"]
    rest = ok_json(
        cli("list", "--page-size", "3", "--continuation", first["continuation"], "--json")
    )
    seen = {i["instance_id"] for i in first["items"] + rest["items"]}
    assert seen == {"g-0", "g-1", "g-2", "d-0"}

    everything = ok_json(cli("list", "--page-size", "1", "--all", "--json"))
    assert len(everything["items"]) == 4
    assert everything["continuation"] is None

    by_name = ok_json(cli("list", "--name", "doomed", "--json"))
    assert [i["instance_id"] for i in by_name["items"]] == ["d-0"]
    by_prefix = ok_json(cli("list", "--prefix", "g-", "--json"))
    assert sorted(i["instance_id"] for i in by_prefix["items"]) == ["g-0", "g-1", "g-2"]
    assert len(ok_json(cli("list", "--status", "pending", "--json"))["items"]) == 4
    assert ok_json(cli("list", "-s", "COMPLETED", "-s", "FAILED", "--json"))["items"] == []
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert ok_json(cli("list", "--created-from", tomorrow, "--json"))["items"] == []
    assert len(ok_json(cli("list", "--created-to", tomorrow, "--json"))["items"]) == 4

    table = ok(cli("list", "--page-size", "2")).stdout
    assert "PENDING" in table
    assert "--continuation" in table


def test_start_at_keeps_the_instance_pending(cli: Callable[..., Result], worker: Worker) -> None:
    at = "2099-01-01T09:30:00"  # no offset: UTC
    started = ok_json(cli("start", "greeter", "--start-at", at, "--json"))
    assert started["start_at"] == "2099-01-01T09:30:00+00:00"
    time.sleep(0.2)
    assert ok_json(cli("status", started["instance_id"], "--json"))["status"] == "PENDING"


def test_purge_by_filter_leaves_running_instances(
    cli: Callable[..., Result], worker: Worker
) -> None:
    done = ok_json(cli("start", "doomed", "--input", '"x"', "--json"))["instance_id"]
    waiting = ok_json(cli("start", "greeter", "--input", '"x"', "--json"))["instance_id"]
    wait_for_status(cli, done, "FAILED")
    wait_for_status(cli, waiting, "RUNNING")

    assert ok_json(cli("purge", "--status", "completed", "--json")) == {"purged": 0}
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    assert ok_json(cli("purge", "--created-before", past, "--json")) == {"purged": 0}
    assert ok_json(cli("purge", "--status", "FAILED", "--json")) == {"purged": 1}
    assert ok_json(cli("status", waiting, "--json"))["status"] == "RUNNING"
    assert_one_line_error(cli("purge", waiting), 1, "terminate it")


def test_wait_exit_code_follows_the_outcome(cli: Callable[..., Result], worker: Worker) -> None:
    ok(cli("start", "greeter", "--id", "w-ok", "--input", '"Ada"'))
    ok(cli("raise", "w-ok", "Approve"))
    assert ok_json(cli("wait", "w-ok", "--json"))["status"] == "COMPLETED"

    ok(cli("start", "doomed", "--id", "w-failed", "--input", '"no luck"'))
    failed = cli("wait", "w-failed", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["status"] == "FAILED"
    assert failed.stderr.startswith("error: instance w-failed ended FAILED")
    assert "no luck" in failed.stderr

    ok(cli("start", "greeter", "--id", "w-stuck", "--input", '"Ada"'))
    assert_one_line_error(
        cli("wait", "w-stuck", "--timeout", "0.2"), 1, "still", "is a worker running"
    )


def test_input_from_a_file_and_from_stdin(
    cli: Callable[..., Result], store_url: str, tmp_path: Path
) -> None:
    payload = tmp_path / "input.json"
    payload.write_text('{"name": "Ada", "tags": [1, 2]}')
    ok(cli("start", "greeter", "--id", "from-file", "--input", f"@{payload}"))
    result = CliRunner().invoke(
        app,
        ["--store", store_url, "start", "greeter", "--id", "from-stdin", "--input", "@-"],
        input='"piped"',
    )
    assert result.exit_code == 0, result.stderr
    assert ok_json(cli("status", "from-file", "--json"))["input"] == {"name": "Ada", "tags": [1, 2]}
    assert ok_json(cli("status", "from-stdin", "--json"))["input"] == "piped"


def test_help(cli: Callable[..., Result]) -> None:
    bare = cli(store=False)
    assert bare.exit_code == 0
    assert "worker" in bare.stdout and "history" in bare.stdout and "poison" in bare.stdout
    worker_help = ok(cli("worker", "--help")).stdout
    assert "MODULE:ATTR" in worker_help
    assert "SIGTERM" in worker_help


# -- poisoned messages -------------------------------------------------------------------------


def poison_starts(store_url: str, *instance_ids: str) -> None:
    """Start instances whose first episode fails until their start message is poisoned."""

    async def poison() -> None:
        store = open_store(store_url)
        try:
            for _ in range(20):
                batch = await store.lock_orchestrations(
                    owner="doomed-worker", limit=10, lease=timedelta(seconds=30)
                )
                if not batch.items:
                    return
                for item in batch.items:
                    await store.abandon_orchestration(
                        item, reason="RuntimeError: the worker crashed", retry_after=timedelta(0)
                    )
        finally:
            await store.close()

    with DurableClient(store_url) as client:
        for instance_id in instance_ids:
            client.start(greeter, "poisoned", instance_id=instance_id)
    asyncio.run(poison())


def test_poison_list_requeue_and_delete(cli: Callable[..., Result], store_url: str) -> None:
    poison_starts(store_url, "first", "second", "third")
    listed = ok_json(cli("poison", "list", "--json"))["items"]
    assert [item["instance_id"] for item in listed] == ["first", "second", "third"]
    first, second, _ = (item["poison_id"] for item in listed)
    assert listed[0]["queue"] == "orchestrations"
    assert listed[0]["reason"] == "RuntimeError: the worker crashed"
    assert listed[0]["dequeue_count"] == 5 and "ExecutionStarted" in listed[0]["body"]
    only = ok_json(cli("poison", "list", "--json", "--instance", "second"))["items"]
    assert [item["poison_id"] for item in only] == [second]

    table = ok(cli("poison", "list")).stdout
    for fragment in (first, "orchestrations", "first", "RuntimeError: the worker crashed", "5"):
        assert fragment in table
    assert "3 poisoned messages" in table

    assert ok(cli("poison", "requeue", first)).stdout.strip() == "requeued 1 poisoned message"
    partly = ok(cli("poison", "requeue", second, "404")).stdout
    assert partly.strip() == "requeued 1 poisoned message (of 2 asked)"
    assert ok_json(cli("poison", "delete", "--all", "--json")) == {"deleted": 1, "asked": 1}
    assert ok_json(cli("poison", "list", "--json")) == {"items": []}
    assert "0 poisoned messages" in ok(cli("poison", "list")).stdout
    assert ok(cli("poison", "requeue", "--all")).stdout.strip() == "requeued 0 poisoned messages"

    with Worker(workflows, store_url, max_poll_interval=0.05):
        for instance_id in ("first", "second"):
            wait_for_status(cli, instance_id, "RUNNING")  # requeued: it runs again
    assert ok_json(cli("status", "third", "--json"))["status"] == "PENDING"  # deleted: never


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "exit_code", "fragments"),
    [
        pytest.param(["start", "greeter", "--input", "{oops"], 2, ["--input", "JSON"], id="json"),
        pytest.param(["raise", "x", "E", "--data", "nope"], 2, ["--data"], id="event-json"),
        pytest.param(
            ["start", "greeter", "--input", "@missing.json"], 2, ["missing.json"], id="file"
        ),
        pytest.param(["status", "a/b"], 2, ["invalid instance id", "'/'"], id="bad-id"),
        pytest.param(
            ["start", "greeter", "--id", "x#1"], 2, ["invalid instance id"], id="bad-start-id"
        ),
        pytest.param(["status", "ghost"], 1, ["ghost", "durable-fx list"], id="unknown"),
        pytest.param(["history", "ghost"], 1, ["ghost"], id="unknown-history"),
        pytest.param(["raise", "ghost", "E"], 1, ["ghost"], id="unknown-raise"),
        pytest.param(["terminate", "ghost"], 1, ["ghost"], id="unknown-terminate"),
        pytest.param(
            ["start", "greeter", "--start-at", "soon"], 2, ["--start-at", "ISO"], id="time"
        ),
        pytest.param(["list", "--status", "DONE"], 2, ["--status"], id="status"),
        pytest.param(["list", "--page-size", "0"], 2, ["--page-size"], id="page-size"),
        pytest.param(["purge"], 2, ["--status", "--all"], id="purge-nothing"),
        pytest.param(["purge", "x", "--all"], 2, ["not both"], id="purge-both"),
        pytest.param(["purge", "--status", "RUNNING"], 2, ["RUNNING"], id="purge-running"),
        pytest.param(["frobnicate"], 2, ["frobnicate"], id="no-such-command"),
        pytest.param(["status"], 2, ["ID"], id="missing-argument"),
        pytest.param(["status", "x", "--bogus"], 2, ["--bogus"], id="no-such-option"),
        pytest.param(["poison", "requeue"], 2, ["--all"], id="requeue-nothing"),
        pytest.param(["poison", "delete", "3", "--all"], 2, ["not both"], id="delete-both"),
        pytest.param(
            ["poison", "requeue", "404"], 1, ["404", "durable-fx poison list"], id="requeue-unknown"
        ),
        pytest.param(["poison", "delete", "404"], 1, ["404"], id="delete-unknown"),
    ],
)
def test_errors_are_one_line(
    cli: Callable[..., Result], args: list[str], exit_code: int, fragments: list[str]
) -> None:
    assert_one_line_error(cli(*args), exit_code, *fragments)


def test_unexpected_errors_are_one_line_too(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> None:
        raise RuntimeError("the terminal caught fire")

    monkeypatch.setattr("durable_fx.cli._instances.stdout_console", broken)
    ok(cli("start", "greeter", "--id", "x", "--json"))  # JSON output does not need a console
    assert_one_line_error(cli("status", "x"), 1, "RuntimeError", "DURABLE_FX_DEBUG")


def test_error_for_an_instance_that_exists(cli: Callable[..., Result]) -> None:
    ok(cli("start", "greeter", "--id", "twice"))
    assert_one_line_error(
        cli("start", "greeter", "--id", "twice"), 1, "already exists", "terminate it"
    )


def test_error_for_an_operation_the_state_refuses(
    cli: Callable[..., Result], worker: Worker
) -> None:
    ok(cli("start", "doomed", "--id", "gone", "--input", '"x"'))
    wait_for_status(cli, "gone", "FAILED")
    assert_one_line_error(cli("raise", "gone", "Approve"), 1, "FAILED")


@pytest.mark.parametrize(
    ("store", "exit_code", "fragments"),
    [
        pytest.param("ftp://example.com/x", 2, ["unsupported store URL", "--store"], id="scheme"),
        pytest.param("sqlite://", 2, ["names no file"], id="no-file"),
        pytest.param("DefaultEndpointsProtocol=https;AccountKey=secret", 2, ["***"], id="redacted"),
    ],
)
def test_errors_for_bad_store_urls(
    cli: Callable[..., Result], store: str, exit_code: int, fragments: list[str]
) -> None:
    result = cli("--store", store, "list", store=False)
    assert_one_line_error(result, exit_code, *fragments)
    assert "secret" not in result.stderr


def test_error_for_a_file_that_is_not_a_store(cli: Callable[..., Result], tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    assert_one_line_error(cli("--store", f"sqlite:///{junk}", "list", store=False), 1, "store")


def test_store_option_after_the_command_wins(cli: Callable[..., Result], tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    ok(cli("start", "greeter", "--id", "elsewhere", "--store", other))
    assert ok_json(cli("list", "--json"))["items"] == []
    assert len(ok_json(cli("list", "--json", "--store", other))["items"]) == 1


def test_default_store_comes_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    runner = CliRunner()
    result = runner.invoke(
        app, ["start", "greeter", "--id", "from-env"], env={"DURABLE_FX_STORE": url}
    )
    assert result.exit_code == 0, result.stderr
    with DurableClient(url) as client:
        state = client.get("from-env")
    assert state is not None and state.status is OrchestrationStatus.PENDING


@pytest.mark.parametrize(
    ("target", "exit_code", "fragments"),
    [
        pytest.param("no_colon", 2, ["MODULE:ATTR"], id="format"),
        pytest.param(
            "no_such_module_xyz:registry", 2, ["no_such_module_xyz", "PYTHONPATH"], id="module"
        ),
        pytest.param("cli_bad_app:missing", 2, ["missing"], id="attribute"),
        pytest.param("cli_bad_app:not_a_registry", 2, ["not a durable_fx Registry"], id="type"),
        pytest.param("cli_broken_app:registry", 1, ["importing", "ZeroDivisionError"], id="raises"),
    ],
)
def test_worker_errors_for_bad_targets(
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    exit_code: int,
    fragments: list[str],
) -> None:
    (tmp_path / "cli_bad_app.py").write_text("not_a_registry = 42\n")
    (tmp_path / "cli_broken_app.py").write_text("registry = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert_one_line_error(cli("worker", target), exit_code, *fragments)


_DEPLOY = """
from durable_fx import Registry

registry = Registry()


@registry.activity(name="step")
def step(n):
    return n


@registry.activity(name="extra")
def extra(n):
    return n


@registry.orchestrator(name="flow")
def flow(ctx, n):
    yield ctx.call_activity("step", n)
    if {change}:
        yield ctx.call_activity("extra", n)
    yield ctx.call_activity("step", n + 1)
    return (yield ctx.wait_for_event("go"))
"""


def test_replay_checks_a_deploy_against_running_instances(
    cli: Callable[..., Result], store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    versions = {"v1": "False", "v2": "True", "v2_patched": 'ctx.is_patched("extra-step")'}
    for version, change in versions.items():
        (tmp_path / f"deploy_{version}.py").write_text(_DEPLOY.format(change=change))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    v1 = __import__("deploy_v1").registry
    with Worker(v1, store_url, max_poll_interval=0.05, shutdown_grace=2.0):
        for iid in ("a", "b"):
            ok(cli("start", "flow", "--id", iid, "--input", "1"))
        with DurableClient(store_url) as client:
            wait_for_history(client, "a", "b")
    ok(cli("start", "flow", "--id", "not-started-yet", "--input", "1"))  # no history to check

    broken = cli("replay", "deploy_v2:registry", "--json")
    assert broken.exit_code == 1, broken.stderr
    report = json.loads(broken.stdout)
    assert report["checked"] == 2
    assert sorted(f["source"] for f in report["failed"]) == ["a", "b"]
    problem = report["failed"][0]["problem"]
    assert problem == "at step 1: history has TaskScheduled('step'), code call_activity('extra')"
    assert "2 of 2 histories replay" in ok(cli("replay", "deploy_v2_patched:registry")).stdout

    saved = tmp_path / "a.json"
    saved.write_text(ok(cli("history", "a", "--json")).stdout)
    from_file = cli("replay", "deploy_v2:registry", str(saved))
    assert from_file.exit_code == 1 and "would fail after the deploy" in from_file.stdout
    ok(cli("replay", "deploy_v2_patched:registry", str(saved)))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert_one_line_error(cli("replay", "deploy_v1:registry", str(junk)), 2, "junk.json")


def wait_for_history(client: DurableClient, *instance_ids: str) -> None:
    """Until each instance has run its first steps and waits for "go"."""
    deadline = time.monotonic() + WAIT
    for iid in instance_ids:
        while True:
            state = client.get(iid, history=True)
            kinds = [e.kind for e in (state.history or [])] if state else []
            if kinds.count("TaskCompleted") == 2:
                break
            assert time.monotonic() < deadline, kinds
            time.sleep(0.02)


# -- the timeline renderer (also used by the demo) ---------------------------------------------


def test_render_timeline(cli: Callable[..., Result], store_url: str, worker: Worker) -> None:
    ok(cli("start", "greeter", "--id", "t", "--input", '"Ada"'))
    ok(cli("raise", "t", "Approve", "--data", '"x" '))
    wait_for_status(cli, "t", "COMPLETED")
    with DurableClient(store_url) as client:
        state = client.get("t", history=True)
        without_history = client.get("t")
    assert state is not None and without_history is not None

    rows = timeline_rows(state)
    kinds = [r.kind for r in rows]
    # The event may arrive before the first episode: it then sits right after the start.
    assert kinds[0] == "ExecutionStarted" and "TaskScheduled" in kinds[1:3], kinds
    completed = next(r for r in rows if r.kind == "TaskCompleted")
    assert completed.detail == '#0 greet → "hello Ada"'
    assert all(r.offset >= timedelta(0) for r in rows)

    console = Console(record=True, width=120)
    console.print(render_timeline(state))
    text = console.export_text()
    assert "greeter t (COMPLETED)" in text
    assert "timer fires at +" in text
    with pytest.raises(ValueError, match="history=True"):
        timeline_rows(without_history)


@pytest.mark.parametrize(
    ("offset", "text"),
    [
        (timedelta(milliseconds=12), "+0.012s"),
        (timedelta(seconds=123, milliseconds=456), "+2m03.456s"),
        (timedelta(hours=1, minutes=2, seconds=3), "+1h02m03s"),
        (timedelta(days=2, hours=3, minutes=4), "+2d03h04m"),
    ],
)
def test_timeline_offsets(offset: timedelta, text: str) -> None:
    assert format_offset(offset) == text


# -- the console script as a real process -------------------------------------------------------


def _script() -> str:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed (pip install -e . installs it)")
    return str(SCRIPT)


@pytest.mark.slow
def test_console_script_smoke(store_url: str, tmp_path: Path) -> None:
    script = _script()
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0
    assert version.stdout.startswith("durable-fx ")

    started = subprocess.run(
        [script, "--store", store_url, "--json", "start", "greeter", "--input", '"Ada"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    instance_id = json.loads(started.stdout)["instance_id"]

    missing = subprocess.run(
        [script, "--store", store_url, "status", "nope"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert missing.stdout == ""

    listed = subprocess.run(
        [script, "--store", store_url, "list"], capture_output=True, text=True, timeout=60
    )
    assert instance_id in listed.stdout  # ids are never folded when piped


WORKER_APP = """
from types import SimpleNamespace
from durable_fx import Registry

registry = Registry()

@registry.activity()
def shout(text: str) -> str:
    return text.upper()

@registry.orchestrator()
def shouter(ctx, text: str):
    return (yield ctx.call_activity(shout, text))

app = SimpleNamespace(registry=registry)
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["cli_worker_app:registry", "cli_worker_app:app"])
def test_worker_command_runs_work_and_stops_on_sigterm(
    store_url: str, tmp_path: Path, target: str
) -> None:
    script = _script()
    (tmp_path / "cli_worker_app.py").write_text(WORKER_APP)
    log_path = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DURABLE_FX_STORE", None)
    with (
        log_path.open("w") as log,
        DurableClient(store_url) as client,
        subprocess.Popen(
            [script, "--store", store_url, "worker", target, "--json"],
            cwd=tmp_path,  # MODULE is found in the directory the command runs in
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        ) as process,
    ):
        try:
            instance_id = client.start("shouter", "quiet please")
            deadline = time.monotonic() + WAIT
            while (state := client.get(instance_id)) is None or not state.status.is_terminal:
                assert process.poll() is None, f"the worker exited: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"not done in {WAIT} s: {log_path.read_text()}"
                time.sleep(0.02)
            assert state.status is OrchestrationStatus.COMPLETED, state.failure
            assert state.output == "QUIET PLEASE"

            process.send_signal(signal.SIGTERM)
            stdout, _ = process.communicate(timeout=WAIT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, log_path.read_text()
    summary = json.loads(stdout)
    assert summary["worker"] == target
    assert summary["orchestrators"] == ["shouter"]
    assert summary["activities"] == ["shout"]
    assert summary["stopped_by"] == "SIGTERM"
    logged = log_path.read_text()
    assert "worker stopped" in logged
    assert "Traceback" not in logged


# -- entities ------------------------------------------------------------------------------------


def test_entities_are_signalled_read_and_listed(cli: Callable[..., Result], worker: Worker) -> None:
    assert_one_line_error(cli("entity", "get", "counter", "a"), 1, "@counter@a has no state")
    ok(cli("entity", "signal", "counter", "a", "add", "--input", "5", "--request-id", "r1"))
    again = ok_json(cli("entity", "signal", "counter", "a", "add", "--input", "5",
                        "--request-id", "r1", "--json"))  # fmt: skip
    assert again["sent"] is False
    ok(cli("entity", "signal", "Counter", "b", "add"))
    deadline = time.monotonic() + WAIT
    while cli("entity", "get", "counter", "b").exit_code != 0:
        assert time.monotonic() < deadline, "counter b never got its state"
        time.sleep(0.02)
    assert ok_json(cli("entity", "get", "counter", "a", "--json"))["state"] == 5
    listed = ok_json(cli("entity", "list", "--json"))["items"]
    assert sorted((e["key"], e["state"]) for e in listed) == [("a", 5), ("b", 1)]
    assert "counter" in ok(cli("entity", "list", "--name", "counter")).stdout
    assert_one_line_error(cli("entity", "get", "bad@name", "k"), 1, "not an entity id")
    assert_one_line_error(
        cli("entity", "signal", "counter", "a", "add", "--input", "{nope"), 2, "--input"
    )
    assert_one_line_error(cli("entity", "signal", "counter", "a", ""), 1, "operation name")
    assert_one_line_error(cli("entity", "list", "--key-prefix", "a"), 1, "key_prefix needs")
    assert ok_json(cli("entity", "clean", "--json")) == {"removed_entities": 0, "released_locks": 0}


def _described(cli: Callable[..., Result], schedule_id: str, until: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        result = cli("schedule", "describe", schedule_id, "--json")
        if result.exit_code == 0 and until(json.loads(result.stdout)):
            return json.loads(result.stdout)
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.05)


def test_schedules_are_created_described_steered_and_deleted(
    cli: Callable[..., Result], worker: Worker
) -> None:
    ok(cli("schedule", "create", "hello", "doomed", "--input", '"no luck"', "--every", "1s"))
    ran = _described(
        cli, "hello", lambda d: any(r["outcome"] == "failed" for r in d["recent_runs"])
    )
    assert ran["orchestration"] == "doomed" and ran["every_seconds"] == 1.0
    failed = next(r for r in ran["recent_runs"] if r["outcome"] == "failed")
    assert failed["instance_id"].startswith("hello-") and "no luck" in failed["detail"]
    assert ok_json(cli("status", failed["instance_id"], "--json"))["status"] == "FAILED"
    assert "hello" in ok(cli("schedule", "list")).stdout
    assert [d["id"] for d in ok_json(cli("schedule", "list", "--json"))["items"]] == ["hello"]
    ok(cli("schedule", "pause", "hello"))
    # Paused with nothing running: the manual run is not skipped by the overlap policy.
    paused = _described(cli, "hello", lambda d: d["paused"] and not d["running"])
    assert paused["next_runs"] == []
    assert ok_json(cli("schedule", "list", "--active", "--json"))["items"] == []
    listed = ok_json(cli("schedule", "list", "--paused", "--prefix", "hel", "--json"))["items"]
    assert [d["id"] for d in listed] == ["hello"]
    ok(cli("schedule", "trigger", "hello", "--json"))
    _described(
        cli,
        "hello",
        lambda d: any("-manual-" in (r["instance_id"] or "") for r in d["recent_runs"]),
    )
    ok(cli("schedule", "resume", "hello"))
    _described(cli, "hello", lambda d: not d["paused"])
    ok(cli("schedule", "delete", "hello"))
    deadline = time.monotonic() + WAIT
    while cli("schedule", "describe", "hello").exit_code == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("args", "exit_code", "fragment"),
    [
        (["create", "s", "greeter", "--cron", "every minute"], 1, "cron expression"),
        (["create", "s", "greeter"], 1, "exactly one of cron and every"),
        (["create", "s", "greeter", "--every", "soon"], 1, "--every"),
        (["create", "s", "greeter", "--every", "5m", "--overlap", "queue"], 1, "--overlap"),
        (["create", "s", "greeter", "--every", "5m", "--start-at", "tomorrow"], 2, "--start-at"),
        (["describe", "missing"], 1, "does not exist"),
        (["pause", "missing"], 1, "does not exist"),
    ],
)
def test_schedule_commands_report_bad_input_in_one_line(
    cli: Callable[..., Result], args: list[str], exit_code: int, fragment: str
) -> None:
    assert_one_line_error(cli("schedule", *args), exit_code, fragment)
