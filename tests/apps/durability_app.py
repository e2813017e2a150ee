"""The workflows of the crash-recovery and multi-process tests.

Worker subprocesses import ``registry`` from here (see ``run_worker``); the
tests import the same module for the expected outputs. Every activity run
appends one line to a ledger file (``DURABLE_FX_TEST_LEDGER``) and fsyncs it
*before* sleeping and returning, like a side effect such as sending an email:
a worker killed between the side effect and the recording of the result makes
the activity run again, and the ledger shows it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator
from datetime import timedelta
from typing import Any

from durable_fx import (
    ActivityContext,
    EntityContext,
    EventTimeoutError,
    OrchestrationContext,
    Registry,
    Task,
    when_all,
)

LEDGER_ENV = "DURABLE_FX_TEST_LEDGER"
STEP_DELAY_ENV = "DURABLE_FX_TEST_STEP_DELAY"
SEQUENTIAL_STEPS = 4
FAN_OUT = 5
APPROVAL_EVENT = "approval"

registry = Registry()

Steps = Generator[Task[Any], Any, dict[str, Any]]


def next_value(value: int) -> int:
    """What ``step`` computes: cheap, deterministic, and different for every input."""
    return (value * 7 + 3) % 1_000_003


def expected_pipeline(n: int) -> dict[str, Any]:
    """The output of ``pipeline(n)``, without the pids (which depend on who ran what)."""
    value = n
    for _ in range(SEQUENTIAL_STEPS):
        value = next_value(value)
    return {"n": n, "value": value, "fan": [next_value(value + j) for j in range(FAN_OUT)]}


def _append_to_ledger(ctx: ActivityContext, key: str) -> None:
    _write_ledger_line(ctx.instance_id, ctx.task_id, key, ctx.delivery_count)


def _write_ledger_line(instance_id: str, task_id: int, key: str, delivery: int) -> None:
    line = json.dumps(
        {
            "instance_id": instance_id,
            "task_id": task_id,
            "key": key,
            "pid": os.getpid(),
            "delivery": delivery,
        }
    )
    # One O_APPEND write per line: lines from concurrent threads and processes never interleave.
    fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@registry.entity()
def tally(ctx: EntityContext, amount: int = 1) -> int:
    """Adds up; each operation notes itself in the ledger, then takes a step's time."""
    _write_ledger_line(ctx.entity_id.instance_id, 0, ctx.operation, 0)
    time.sleep(float(os.environ.get(STEP_DELAY_ENV, "0")))
    total = ctx.get_state(int, 0) + amount
    ctx.set_state(total)
    return total


@registry.activity()
def step(ctx: ActivityContext, request: dict[str, Any]) -> dict[str, Any]:
    """The side effect (a ledger line), then some 'work', then the result."""
    _append_to_ledger(ctx, request["key"])
    time.sleep(float(os.environ.get(STEP_DELAY_ENV, "0")))
    return {"value": next_value(request["value"]), "pid": os.getpid()}


@registry.orchestrator()
def pipeline(ctx: OrchestrationContext, n: int) -> Steps:
    """A sequence of steps, each fed the previous result, then a fan-out over the last."""
    value = n
    pids: list[int] = []
    for k in range(SEQUENTIAL_STEPS):
        result = yield ctx.call_activity(step, {"key": f"seq{k}", "value": value})
        value = result["value"]
        pids.append(result["pid"])
    fan = yield when_all(
        [ctx.call_activity(step, {"key": f"fan{j}", "value": value + j}) for j in range(FAN_OUT)]
    )
    pids += [result["pid"] for result in fan]
    return {"n": n, "value": value, "fan": [result["value"] for result in fan], "pids": pids}


@registry.orchestrator()
def nap(ctx: OrchestrationContext, seconds: float) -> Steps:
    """A step, a durable timer, a step fed the first one's result."""
    before = yield ctx.call_activity(step, {"key": "before", "value": 1})
    yield ctx.create_timer(timedelta(seconds=seconds))
    after = yield ctx.call_activity(step, {"key": "after", "value": before["value"]})
    return {"value": after["value"]}


@registry.orchestrator()
def approval(ctx: OrchestrationContext, timeout_seconds: float) -> Steps:
    """A step, a wait for the approval event (or its timeout), a step."""
    yield ctx.call_activity(step, {"key": "request", "value": 1})
    try:
        decision = yield ctx.wait_for_event(
            APPROVAL_EVENT, timeout=timedelta(seconds=timeout_seconds)
        )
    except EventTimeoutError:
        decision = None
    yield ctx.call_activity(step, {"key": "record", "value": 2})
    return {"decision": decision}


@registry.orchestrator()
def stamped(ctx: OrchestrationContext, value: int) -> Steps:
    """One step: what a scheduled occurrence runs (its ledger line names the occurrence)."""
    result = yield ctx.call_activity(step, {"key": "stamp", "value": value})
    return {"value": result["value"]}


IMPORT_ROWS = 60


@registry.activity()
def import_rows(ctx: ActivityContext, total: int) -> dict[str, Any]:
    """A long job that heartbeats its progress: a run after a crash resumes from it."""
    start = ctx.heartbeat_details["next"] if ctx.heartbeat_details else 0
    for row in range(start, total):
        _append_to_ledger(ctx, f"row{row}")
        time.sleep(float(os.environ.get(STEP_DELAY_ENV, "0")))
        ctx.heartbeat({"next": row + 1})
    return {"resumed_at": start, "pid": os.getpid()}


@registry.orchestrator()
def importer(ctx: OrchestrationContext, total: int) -> Steps:
    """One long activity; its heartbeat timeout is far longer than the test's leases."""
    return (yield ctx.call_activity(import_rows, total, heartbeat_timeout=timedelta(minutes=5)))
