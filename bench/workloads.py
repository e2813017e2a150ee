"""The benchmark workloads. Each runs in its own process on a fresh database.

Every workload returns a dict of figures; ``run.py`` adds the targets and the
machine. Nothing here asserts a time: a benchmark reports, tests assert.

The worker runs in-process on its background thread (``with Worker(...)``),
the client on the main thread's event loop, both on one store object, which is
how an app embeds durable_fx as a library.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from durable_fx import (
    AsyncDurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    Worker,
    open_store,
    when_all,
)

registry = Registry()


@registry.activity()
def step(x: int) -> int:
    """The trivial activity: all cost is the framework's."""
    return x + 1


@registry.orchestrator()
def three_steps(ctx: OrchestrationContext, x: int) -> Orchestrator[int]:
    for _ in range(3):
        x = yield ctx.call_activity(step, x)
    return x


@registry.orchestrator()
def fan_out(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
    results = yield when_all([ctx.call_activity(step, i) for i in range(n)])
    return len(results)


@registry.orchestrator()
def sequence(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
    x = 0
    for _ in range(n):
        x = yield ctx.call_activity(step, x)
    return x


# -- plumbing ------------------------------------------------------------------------------


def open_fresh_store(spec: str, db_dir: Path, name: str) -> Store:
    """A store with nothing in it: a new SQLite file under ``db_dir``, or a new memory store."""
    if spec == "memory://":
        return open_store("memory://")
    path = db_dir / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    _, query = spec.split("?", 1) if "?" in spec else (spec, "")
    return open_store(f"sqlite:///{path}" + (f"?{query}" if query else ""))


@contextmanager
def running(store: Store) -> Iterator[Worker]:
    with Worker(registry, store) as worker:
        yield worker


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_ROLES = (
    ("durable_fx-sqlite", "store thread"),
    ("durable-fx-activity", "activity threads"),
    ("durable-fx-worker", "worker loop"),
    ("MainThread", "client (main thread)"),
)


def cpu_by_thread() -> dict[str, float]:
    """Seconds on a CPU so far per thread role, plus the time spent runnable but waiting
    for a CPU ("waiting for a cpu": other processes, or our threads beyond the cores).

    From /proc/self/task/*/schedstat (Linux; empty elsewhere). Unlike a profile it
    counts work done without the GIL too (SQLite's C code). Threads that ended are
    not counted, so take both readings while the worker runs.
    """
    names = {t.native_id: t.name for t in threading.enumerate()}
    totals: dict[str, float] = {}
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return totals
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                on_cpu, waiting, _ = stat.read().split()
        except (OSError, ValueError):
            continue
        name = names.get(int(tid), "other")
        role = next((r for prefix, r in _ROLES if name.startswith(prefix)), "other")
        totals[role] = totals.get(role, 0.0) + int(on_cpu) / 1e9
        totals[_WAITING] = totals.get(_WAITING, 0.0) + int(waiting) / 1e9
    return totals


_WAITING = "waiting for a cpu"


def cpu_delta_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-role CPU milliseconds between two ``cpu_by_thread`` readings, largest first."""
    deltas = {role: (after[role] - before.get(role, 0.0)) * 1000 for role in after}
    return {role: round(ms, 1) for role, ms in sorted(deltas.items(), key=lambda kv: -kv[1])}


async def wait_done(client: AsyncDurableClient, instance_id: str, poll: float) -> float:
    """Poll until the instance finishes; return ``time.perf_counter()`` when seen finished."""
    while True:
        state = await client.get(instance_id)
        if state is not None and state.status.is_terminal:
            if state.status is not OrchestrationStatus.COMPLETED:
                raise RuntimeError(f"{instance_id} ended {state.status.value}: {state.failure}")
            return time.perf_counter()
        await asyncio.sleep(poll)


async def wait_all(client: AsyncDurableClient, instance_ids: list[str], poll: float) -> datetime:
    """Wait until every instance completed; return the last one's ``updated_at``.

    That is the start of its final episode, exact to the store and independent
    of the polling interval. Polls one instance at a time (the first not yet
    seen finished), so waiting costs about one read per instance, not a scan
    of all of them per poll: the benchmark must not load the worker it measures.
    """
    last: datetime | None = None
    pending = iter(instance_ids)
    current = next(pending, None)
    while current is not None:
        state = await client.get(current)
        if state is None or not state.status.is_terminal:
            await asyncio.sleep(poll)
            continue
        if not _ok(state.status):
            raise RuntimeError(f"{current} ended {state.status.value}: {state.failure}")
        last = state.updated_at if last is None else max(last, state.updated_at)
        current = next(pending, None)
    assert last is not None
    return last


def _ok(status: OrchestrationStatus) -> bool:
    return status is OrchestrationStatus.COMPLETED


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# -- W1: many small orchestrations -----------------------------------------------------------


async def _burst(client: AsyncDurableClient, prefix: str, count: int) -> dict[str, Any]:
    """Start ``count`` orchestrations at once and wait for all of them."""
    first_start = datetime.now(UTC)
    threads0 = cpu_by_thread()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    ids = [f"{prefix}{i:04d}" for i in range(count)]
    await asyncio.gather(
        *(client.start(three_steps, i, instance_id=iid) for i, iid in enumerate(ids))
    )
    started = time.perf_counter()
    last_done = await wait_all(client, ids, 0.02)
    cpu1 = cpu_seconds()
    threads = cpu_delta_ms(threads0, cpu_by_thread())
    span = (last_done - first_start).total_seconds()
    return {"span_s": span, "start_calls_s": started - wall0, "cpu_s": cpu1 - cpu0} | {
        "threads": threads
    }


async def _w1(store: Store, count: int, latency_runs: int, bursts: int) -> dict[str, Any]:
    client = AsyncDurableClient(store)
    # Warm-up: code paths, statement caches, thread pools.
    await _burst(client, "warm-", 20)
    runs = [await _burst(client, f"w1.{b}-", count) for b in range(bursts)]
    burst = sorted(runs, key=lambda r: r["span_s"])[len(runs) // 2]  # the median one

    latencies = []
    for i in range(latency_runs):
        await asyncio.sleep(0.25)  # let the worker go idle (its polls back off)
        t0 = time.perf_counter()
        iid = await client.start(three_steps, i, instance_id=f"lat-{i:03d}")
        latencies.append(await wait_done(client, iid, 0.001) - t0)

    figures: dict[str, Any] = {
        "orchestrations": count,
        "throughput_orch_per_s": count / burst["span_s"],
        "span_s": burst["span_s"],
        "start_calls_s": burst["start_calls_s"],
        "cpu_ms_per_orchestration": burst["cpu_s"] * 1000 / count,
        "cpu_ms_by_thread": burst["threads"],
        "latency_runs": latency_runs,
    }
    if latencies:
        figures |= {
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p95_ms": percentile(latencies, 95) * 1000,
            "latency_min_ms": min(latencies) * 1000,
        }
    return figures


def w1(
    store: Store, *, count: int = 200, latency_runs: int = 20, bursts: int = 1
) -> dict[str, Any]:
    with running(store):
        return asyncio.run(_w1(store, count, latency_runs, bursts))


# -- W2: one wide fan-out ------------------------------------------------------------------


async def _w2(store: Store, n: int) -> dict[str, Any]:
    client = AsyncDurableClient(store)
    warm = await client.start(fan_out, 100, instance_id="warm")
    await wait_done(client, warm, 0.01)
    await asyncio.sleep(0.25)

    threads0 = cpu_by_thread()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    iid = await client.start(fan_out, n, instance_id=f"w2-{n}")
    t1 = await wait_done(client, iid, 0.005)
    cpu1 = cpu_seconds()
    threads = cpu_delta_ms(threads0, cpu_by_thread())
    state = await client.get(iid, history=True)
    assert state is not None and state.history is not None and state.output == n
    episodes = sum(1 for e in state.history if e.kind == "OrchestratorStarted")
    return {
        "activities": n,
        "wall_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "cpu_ms_by_thread": threads,
        "episodes": episodes,
        "activities_per_s": n / (t1 - t0),
    }


def w2(store: Store, *, n: int) -> dict[str, Any]:
    with running(store):
        return asyncio.run(_w2(store, n))


# -- W3: an idle worker ----------------------------------------------------------------------


def w3(store: Store, *, settle: float = 3.0, seconds: float = 10.0) -> dict[str, Any]:
    """CPU of a started worker with nothing to do (run.py gives it a process of its own)."""
    with running(store):
        time.sleep(settle)  # its polls back off to the longest interval
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(), time.perf_counter()
    return {
        "seconds": t1 - t0,
        "cpu_ms": (cpu1 - cpu0) * 1000,
        "idle_cpu_percent_of_core": (cpu1 - cpu0) / (t1 - t0) * 100,
    }


# -- W4: a long sequence ---------------------------------------------------------------------


async def _w4(store: Store, n: int, window: int, at: list[int]) -> dict[str, Any]:
    client = AsyncDurableClient(store)
    warm = await client.start(sequence, 20, instance_id="warm")
    await wait_done(client, warm, 0.01)

    t0 = time.perf_counter()
    iid = await client.start(sequence, n, instance_id=f"w4-{n}")
    t1 = await wait_done(client, iid, 0.05)
    state = await client.get(iid, history=True)
    assert state is not None and state.history is not None and state.output == n
    # Each episode starts at the time in its OrchestratorStarted; TaskScheduled k
    # carries the time of the episode that scheduled step k (event_id k).
    scheduled = {e.event_id: e.timestamp for e in state.history if e.kind == "TaskScheduled"}
    gaps = [
        (scheduled[k + 1] - scheduled[k]).total_seconds() * 1000
        for k in range(n - 1)
        if k in scheduled and k + 1 in scheduled
    ]

    def around(center: int, average: Callable[[list[float]], float] = statistics.fmean) -> float:
        lo = max(0, min(center - window // 2, len(gaps) - window))
        return average(gaps[lo : lo + window])

    first, last = around(at[0]), around(at[-1])
    first_median, last_median = around(at[0], statistics.median), around(at[-1], statistics.median)
    return {
        "steps": n,
        "wall_s": t1 - t0,
        "mean_step_ms": statistics.fmean(gaps),
        "window": window,
        "step_ms_at": {str(c): around(c) for c in at},
        "step_100_ms": first,
        "step_5000_ms": last,
        "ratio_late_to_early": last / first,
        # Medians shrug off a stray stall (GC, a WAL checkpoint, another process).
        "median_step_ms_at": {str(c): around(c, statistics.median) for c in at},
        "ratio_late_to_early_median": last_median / first_median,
    }


def w4(store: Store, *, n: int = 5000, window: int = 50) -> dict[str, Any]:
    at = [100, 1000, 2500, n - 50]
    with running(store):
        return asyncio.run(_w4(store, n, window, at))


WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {
    "W1": w1,
    "W2-1000": lambda store: w2(store, n=1000),
    "W2-5000": lambda store: w2(store, n=5000),
    "W3": w3,
    "W4": w4,
}

# What bench/profile_workload.py runs: the measured part only, long enough to sample.
PROFILE_WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = WORKLOADS | {
    "W1": lambda store: w1(store, latency_runs=0, bursts=5),
    "W1-latency": lambda store: w1(store, count=1, latency_runs=50),
}


def run_workload(
    name: str, store_spec: str, db_dir: Path, *, profile: bool = False, bursts: int = 1
) -> dict[str, Any]:
    """Run one workload on a fresh store and return its figures.

    ``bursts`` (W1 only): how many bursts of 200 to run; the median one is reported.
    """
    workload = (PROFILE_WORKLOADS if profile else WORKLOADS)[name]
    if name == "W1" and bursts > 1:
        workload = functools.partial(w1, bursts=bursts)
    store = open_fresh_store(store_spec, db_dir, name)
    try:
        return workload(store)
    finally:
        asyncio.run(store.close())
        if store_spec != "memory://":
            for leftover in db_dir.glob(f"{name}.db*"):
                leftover.unlink(missing_ok=True)
