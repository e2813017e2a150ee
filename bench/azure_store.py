"""The Azure store's benchmark: throughput on Azurite and storage requests per unit of work.

    python bench/azure_store.py [--only W1,W2-1000,idle] [--idle-seconds 120] [--out FILE]

Starts a private Azurite (``node_modules/.bin/azurite``, from ``npm ci``) on
free loopback ports, on the same cores as the benchmark, and prints one JSON
document. Each workload gets a fresh task hub; the worker and the starting
client share one store object, as an app embedding durable_fx does. Requests
are counted by the store's pipeline policy (every attempt, retries included).
Completion is watched through a *second* store object, so the watching
(status polls) is not counted as the work's cost.

- W1: 200 orchestrations of 3 sequential trivial activities, started at once:
  orchestrations/s from first start to last completion, requests per activity.
- W2-1000: one orchestration fanning out to 1,000 activities: wall time,
  requests per item.
- idle: a started worker with nothing to do. Its queue polls back off to one
  80 s (control) and one every 160 s (work items); after a settling
  period the requests over ``--idle-seconds`` are counted and extrapolated to
  an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import dump, header  # noqa: E402
from workloads import fan_out, registry, three_steps  # noqa: E402

from durable_fx import (  # noqa: E402
    AsyncDurableClient,
    DurableClient,
    OrchestrationStatus,
    Worker,
    open_store,
)
from durable_fx.storage.azure import AzureStore  # noqa: E402
from tests.support.azurite import Azurite, AzuriteProcess, new_hub  # noqa: E402

TARGETS = {
    "W1": [("throughput_orch_per_s", ">=", 60), ("requests_per_activity", "<=", 6)],
    "W2-1000": [("requests_per_item", "<=", 4)],
    "idle": [("requests_per_hour", "<=", 120)],
}


def _open(azurite: Azurite, hub: str) -> AzureStore:
    store = open_store(azurite.connection_string(hub))
    assert isinstance(store, AzureStore)
    return store


async def _wait_completed(observer: Any, ids: list[str], poll: float) -> float:
    """Poll (through the observer store) until every instance completed; return when seen.

    One instance at a time, the first not yet seen finished (as ``workloads.wait_all``):
    about one read per instance. Scanning every pending instance per poll cost Azurite
    and this process as much as the work measured, and skewed the figure.
    """
    client = AsyncDurableClient(observer)
    for iid in ids:
        while True:
            state = await client.get(iid)
            if state is not None and state.status.is_terminal:
                break
            await asyncio.sleep(poll)
        if state.status is not OrchestrationStatus.COMPLETED:
            raise RuntimeError(f"{iid} ended {state.status.value}: {state.failure}")
    return time.perf_counter()


async def _start_all(store: AzureStore, count: int) -> list[str]:
    """Start ``count`` W1 orchestrations at once (as bench/workloads.py does)."""
    client = AsyncDurableClient(store)
    starts = (client.start(three_steps, i, instance_id=f"w1-{i:04d}") for i in range(count))
    return list(await asyncio.gather(*starts))


def w1(azurite: Azurite, count: int = 200) -> dict[str, Any]:
    hub = new_hub()
    store, observer = _open(azurite, hub), _open(azurite, hub)
    try:
        with Worker(registry, store), DurableClient(store) as client:
            warm = [client.start(three_steps, i, instance_id=f"warm-{i}") for i in range(10)]
            asyncio.run(_wait_completed(observer, warm, 0.05))
            before = store.requests.snapshot()
            t0 = time.perf_counter()
            ids = asyncio.run(_start_all(store, count))
            started = time.perf_counter()
            done = asyncio.run(_wait_completed(observer, ids, 0.05))
            used = _delta(store.requests.snapshot(), before)
            # The last completion was seen up to one poll late; the store-side span is exact.
            states = [client.get(i) for i in ids]
            first = min(s.created_at for s in states if s)
            last = max(s.updated_at for s in states if s)
        span = (last - first).total_seconds()
        total = sum(used.values())
        return {
            "orchestrations": count,
            "activities": count * 3,
            "throughput_orch_per_s": count / span,
            "span_s": span,
            "wall_s_as_observed": done - t0,
            "start_calls_s": started - t0,
            "requests": total,
            "requests_per_activity": total / (count * 3),
            "requests_per_orchestration": total / count,
            "requests_by_kind": used,
        }
    finally:
        asyncio.run(store.close())
        asyncio.run(observer.close())


def w2(azurite: Azurite, n: int = 1000) -> dict[str, Any]:
    hub = new_hub()
    store, observer = _open(azurite, hub), _open(azurite, hub)
    try:
        with Worker(registry, store), DurableClient(store) as client:
            warm = client.start(fan_out, 50, instance_id="warm")
            asyncio.run(_wait_completed(observer, [warm], 0.05))
            before = store.requests.snapshot()
            t0 = time.perf_counter()
            iid = client.start(fan_out, n, instance_id=f"w2-{n}")
            done = asyncio.run(_wait_completed(observer, [iid], 0.02))
            used = _delta(store.requests.snapshot(), before)
            state = client.get(iid)
            assert state is not None and state.output == n
        total = sum(used.values())
        return {
            "activities": n,
            "wall_s": done - t0,
            "activities_per_s": n / (done - t0),
            "requests": total,
            "requests_per_item": total / n,
            "requests_by_kind": used,
        }
    finally:
        asyncio.run(store.close())
        asyncio.run(observer.close())


def idle(azurite: Azurite, settle: float, seconds: float) -> dict[str, Any]:
    store = _open(azurite, new_hub())
    try:
        with Worker(registry, store):
            time.sleep(settle)
            before, t0 = store.requests.total, time.perf_counter()
            time.sleep(seconds)
            used, elapsed = store.requests.total - before, time.perf_counter() - t0
        return {
            "settle_s": settle,
            "measured_s": elapsed,
            "requests_measured": used,
            "requests_per_hour": used * 3600 / elapsed,
            "note": f"counted over {elapsed:.0f} s after {settle:.0f} s of settling, "
            "extrapolated to an hour",
        }
    finally:
        asyncio.run(store.close())


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def _annotate(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    for figure, op, target in TARGETS.get(name, []):
        value = figures.get(figure)
        met = None
        if isinstance(value, int | float):
            met = value >= target if op == ">=" else value <= target
        targets[figure] = {"value": value, "target": f"{op} {target}", "met": met}
    return {"figures": figures, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="W1,W2-1000,idle")
    parser.add_argument("--idle-settle", type=float, default=90.0)
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="durable_fx-azurite-") as workdir:
        process = AzuriteProcess(Path(workdir))
        try:
            for name in wanted:
                print(f"running {name} on Azurite ...", file=sys.stderr, flush=True)
                if name == "W1":
                    figures = w1(process.azurite)
                elif name == "W2-1000":
                    figures = w2(process.azurite)
                elif name == "idle":
                    figures = idle(process.azurite, args.idle_settle, args.idle_seconds)
                else:
                    raise SystemExit(f"unknown workload {name!r}: W1, W2-1000, idle")
                results[name] = _annotate(name, figures)
        finally:
            process.stop()
    document = {
        **header(
            "durable_fx azure store on Azurite", azurite="node_modules/.bin/azurite (same cores)"
        ),
        "results": results,
    }
    print(dump(document, args.out))


if __name__ == "__main__":
    main()
