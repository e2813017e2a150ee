"""End-to-end W1 as a client sees it: start 200 orchestrations, then wait for each.

    python bench/client_wait.py [--store sqlite|memory://] [--count 200] [--bursts 5] [--repeat 3]

Each orchestration calls one trivial activity. The worker runs in-process on
its background thread and the client on the main thread's event loop, both on
one store object (``with Worker(registry, store)``, as an app embeds
durable_fx). The client starts all of them (``asyncio.gather`` of
``client.start``), then ``await client.wait(id)`` for each in turn; the
figure is ``count`` / (last wait returned - first start call), so how fast a
wait notices completion counts, unlike ``bench/run.py``'s W1, which reads the
instances' own timestamps. A run does ``bursts`` of them in a row (after a
warm-up) and reports their median. Then 20 single runs (start, wait) on an idle worker
give the latency a caller of ``client.run`` sees, and 10 runs of an orchestration
that sleeps on a durable timer (0.3 to 1.2 s) how late the wait returns after the
instance's final episode (``late_after_timer_ms``: a polling wait has backed off
by then).

Each repeat runs on a fresh database (SQLite: a new file). Prints one JSON
document; nothing here fails on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from durable_fx import (  # noqa: E402
    AsyncDurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    Worker,
    open_store,
)

TARGET = 900.0
registry = Registry()


@registry.activity()
def step(x: int) -> int:
    """The trivial activity: all cost is the framework's."""
    return x + 1


@registry.orchestrator()
def naps(ctx: OrchestrationContext, seconds: float) -> Orchestrator[None]:
    yield ctx.create_timer(timedelta(seconds=seconds))


@registry.orchestrator()
def one_step(ctx: OrchestrationContext, x: int) -> Orchestrator[int]:
    result: int = yield ctx.call_activity(step, x)
    return result


def _open(spec: str, directory: Path, name: str) -> Store:
    if spec == "memory://":
        return open_store("memory://")
    return open_store(f"sqlite:///{directory / name}.db")


async def _burst(client: AsyncDurableClient, prefix: str, count: int) -> tuple[float, float]:
    """Seconds from the first start call to the last wait's return, and to the last
    instance's final episode (its ``updated_at``: what the wait itself adds is the rest)."""
    first_start = datetime.now(UTC)
    t0 = time.perf_counter()
    ids = await asyncio.gather(
        *(client.start(one_step, i, instance_id=f"{prefix}{i:04d}") for i in range(count))
    )
    last_done = first_start
    for instance_id in ids:
        state = await client.wait(instance_id, timeout=120)
        if state.status is not OrchestrationStatus.COMPLETED:
            raise RuntimeError(f"{instance_id} ended {state.status.value}: {state.failure}")
        last_done = max(last_done, state.updated_at)
    return time.perf_counter() - t0, (last_done - first_start).total_seconds()


async def _singles(client: AsyncDurableClient, runs: int) -> list[float]:
    """Milliseconds from start call to wait's return, one instance at a time."""
    latencies = []
    for i in range(runs):
        await asyncio.sleep(0.05)  # an idle worker: its polls have backed off a little
        t0 = time.perf_counter()
        instance_id = await client.start(one_step, i, instance_id=f"single-{i:03d}")
        await client.wait(instance_id, timeout=60)
        latencies.append((time.perf_counter() - t0) * 1000)
    return latencies


async def _late_after_timer(client: AsyncDurableClient, runs: int) -> list[float]:
    """Milliseconds from the final episode's start (``updated_at``) to the wait's return."""
    late = []
    for i in range(runs):
        # 0.3 to 1.2 s: the polls' schedule meets each end at another point
        instance_id = await client.start(naps, 0.3 + 0.1 * i, instance_id=f"nap-{i:03d}")
        state = await client.wait(instance_id, timeout=60)
        late.append((datetime.now(UTC) - state.updated_at).total_seconds() * 1000)
    return late


async def _one_run(
    spec: str, directory: Path, index: int, count: int, bursts: int
) -> dict[str, Any]:
    store = _open(spec, directory, f"client-wait-{index}")
    walls, spans = [], []
    try:
        with Worker(registry, store):
            client = AsyncDurableClient(store)
            await _burst(client, "warm-", 20)
            for burst in range(bursts):
                await asyncio.sleep(0.3)  # let the previous burst's tail settle
                wall, span = await _burst(client, f"burst{burst}-", count)
                walls.append(wall)
                spans.append(span)
            latencies = await _singles(client, 20)
            late = await _late_after_timer(client, 10)
    finally:
        await store.close()
    wall = statistics.median(walls)
    return {
        "wall_s": round(wall, 4),
        "throughput_orch_per_s": round(count / wall, 1),
        "each_burst_orch_per_s": [round(count / w, 1) for w in walls],
        "wait_tail_ms": round(
            1000 * statistics.median(w - s for w, s in zip(walls, spans, strict=True)), 1
        ),
        "latency_p50_ms": round(statistics.median(latencies), 2),
        "latency_max_ms": round(max(latencies), 2),
        "late_after_timer_ms": round(statistics.median(late), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory://"])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=5, help="bursts per run (median)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh database")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="durable_fx-client-wait-") as directory:
        for index in range(args.repeat):
            run = _one_run(args.store, Path(directory), index, args.count, args.bursts)
            runs.append(asyncio.run(run))
    throughputs = [run["throughput_orch_per_s"] for run in runs]
    median = statistics.median(throughputs)
    document = {
        "benchmark": "client_wait",
        "what": f"{args.count} orchestrations of one activity started at once, then "
        "client.wait for each in turn; throughput from the first start call to the last "
        f"wait's return, median of {args.bursts} bursts per run and of the runs; then 20 "
        "single start+wait runs on an idle worker, and how late a wait returns after an "
        "orchestration that slept 0.3 to 1.2 s on a durable timer",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "store": args.store,
        "throughput_orch_per_s": median,
        "each_run": throughputs,
        "latency_p50_ms": statistics.median(run["latency_p50_ms"] for run in runs),
        "late_after_timer_ms": statistics.median(run["late_after_timer_ms"] for run in runs),
        "target": {"figure": "throughput_orch_per_s", "value": f">= {TARGET:g}"},
        "met": median >= TARGET,
        "runs": runs,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
