"""The dashboard's test fixtures: an app on a SQLite file, its worker, the dashboard process.

``dashboard`` runs ``durable-fx dashboard`` on the module's store as its own
process; a worker in the test process runs ``build_registry()``'s
orchestrations on the same file. Test modules import the fixtures they use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from durable_fx import (
    ActivityContext,
    DurableClient,
    EntityContext,
    OrchestrationContext,
    Orchestrator,
    Registry,
    Worker,
    when_all,
)
from tests.support.serve import free_port

KEY = "dashboard-test-key"
HTML = {"accept": "text/html"}


def build_registry() -> Registry:
    registry = Registry()

    @registry.activity()
    def send(ctx: ActivityContext, to: str) -> str:
        return f"sent to {to}"

    @registry.orchestrator()
    def deliver(ctx: OrchestrationContext, to: str) -> Orchestrator[dict[str, Any]]:
        sent = yield ctx.call_activity(send, to)
        yield ctx.create_timer(timedelta(milliseconds=10))
        ctx.set_custom_status({"stage": "awaiting receipt", "to": to})
        receipt = yield ctx.wait_for_event("Receipt", timeout=timedelta(hours=1))
        return {"sent": sent, "receipt": receipt}

    @registry.orchestrator()
    def idle(ctx: OrchestrationContext, _: None) -> Orchestrator[None]:
        yield ctx.wait_for_event("Never")

    @registry.activity()
    def square(n: int) -> int:
        return n * n

    @registry.orchestrator()
    def square_twice(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        once = yield ctx.call_activity(square, n)
        return (yield ctx.call_activity(square, once))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext, _: None) -> Orchestrator[list[int]]:
        children = [
            ctx.call_sub_orchestrator(square_twice, n, instance_id=f"{ctx.instance_id}-child-{n}")
            for n in range(2)
        ]
        return (yield when_all(children))

    @registry.orchestrator()
    def fan_out(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        squares = yield when_all([ctx.call_activity(square, i) for i in range(n)])
        return sum(squares)

    @registry.entity()
    def tally(ctx: EntityContext, amount: int = 1) -> int:
        total = ctx.get_state(int, 0) + amount
        ctx.set_state(total)
        return total

    return registry


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'app.db'}"


@pytest.fixture(scope="module")
def client(store_url: str) -> Iterator[DurableClient]:
    with (
        DurableClient(store_url) as opened,
        Worker(build_registry(), store_url, max_poll_interval=0.05),
    ):
        yield opened


def start_dashboard(
    store_url: str, log: Path, *extra: str, key: str | None = KEY
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_FX_")}
    if key:
        env["DURABLE_FX_DASHBOARD_KEY"] = key
    command = [
        sys.executable,
        "-m",
        "durable_fx.cli",
        "dashboard",
        "--store",
        store_url,
        "--port",
        str(port),
        *extra,
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{base}/login", timeout=1)
            return process, base
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the dashboard did not start; see {log}") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def dashboard(
    store_url: str, client: DurableClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    process, base = start_dashboard(store_url, tmp_path_factory.mktemp("logs") / "dashboard.log")
    yield base
    process.terminate()
    process.wait(30)
