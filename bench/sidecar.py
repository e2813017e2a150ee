"""The gRPC sidecar with the official Python SDK, beside durabletask-python's own test backend.

    python bench/sidecar.py [--only W1,W2-1000] [--layout both|in-process|separate]
                            [--repeat N] [--out FILE]

Both backends serve the same SDK (``durabletask``'s ``TaskHubGrpcWorker`` and
``TaskHubGrpcClient``) on the same workloads:

- ``durable_fx``: ``durable_fx.sidecar.SidecarServer`` on a fresh SQLite file
  (the durable store: WAL, every episode committed);
- ``durabletask-in-memory``: ``durabletask.testing.create_test_backend()``,
  which keeps everything in dicts (nothing is persisted).

Two layouts: ``in-process`` runs the backend on a thread of the process that
runs the SDK worker and client (how the test backend is meant to be used);
``separate`` runs it as a process of its own (how a sidecar is deployed:
``durable-fx sidecar``). Every run is a fresh process on a fresh store, the
backends alternate run by run so they share the machine's noise, and with
``--repeat N`` each figure is the median of N runs.

W1: 200 orchestrations of 3 sequential trivial activities, scheduled at once
(16 client threads); throughput = 200 / (last instance's completion - first
instance's creation), both read from the backend's own instance timestamps.
W2-1000: one orchestration fanning out to 1,000 trivial activities; wall time
from the schedule call to ``wait_for_orchestration_completion`` returning.
Target: durable_fx at least as fast as the in-memory backend on both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BACKENDS = ["durable_fx", "durabletask-in-memory"]
LAYOUTS = ["in-process", "separate"]
WORKLOADS = ["W1", "W2-1000"]
W1_COUNT = 200
W1_WARM_UP = 20
"""Orchestrations W1 runs (and does not time) before its 200."""
W2_FAN_OUT = 1000


# -- the workloads, as SDK code -----------------------------------------------------------------


def step(ctx: Any, value: int) -> int:
    """The trivial activity: all cost is the backend's and the SDK's."""
    return value + 1


def three_steps(ctx: Any, value: int) -> Any:
    for _ in range(3):
        value = yield ctx.call_activity(step, input=value)
    return value


def fan_out(ctx: Any, count: int) -> Any:
    from durabletask import task

    results = yield task.when_all([ctx.call_activity(step, input=i) for i in range(count)])
    return len(results)


def _quiet_logger() -> logging.Logger:
    """The SDK logs every episode at INFO; the bench measures backends, not stderr."""
    logger = logging.getLogger("bench.sdk")
    logger.setLevel(logging.WARNING)
    return logger


@contextmanager
def sdk_running(address: str, orchestrator: Any) -> Iterator[Any]:
    """An SDK worker running ``orchestrator`` (and ``step``); yields an SDK client.

    Both are closed afterwards, the worker first.
    """
    from durabletask import client, worker

    sdk_worker = worker.TaskHubGrpcWorker(host_address=address, logger=_quiet_logger())
    sdk_worker.add_orchestrator(orchestrator)
    sdk_worker.add_activity(step)
    sdk_worker.start()
    sdk = client.TaskHubGrpcClient(host_address=address, logger=_quiet_logger())
    try:
        yield sdk
    finally:
        sdk_worker.stop()
        sdk.close()


def run_w1(address: str) -> dict[str, Any]:
    with sdk_running(address, three_steps) as sdk:
        warm_up = [sdk.schedule_new_orchestration(three_steps, input=0) for _ in range(W1_WARM_UP)]
        for warm in warm_up:
            sdk.wait_for_orchestration_completion(warm, timeout=120)
        cpu0, wall0 = _cpu(), time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            ids = list(
                pool.map(
                    lambda i: sdk.schedule_new_orchestration(three_steps, input=i),
                    range(W1_COUNT),
                )
            )
        start_calls = time.perf_counter() - wall0
        for instance_id in ids:
            sdk.wait_for_orchestration_completion(instance_id, timeout=300)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        states = [sdk.get_orchestration_state(i) for i in ids]
    outputs = [None if s is None else s.get_output() for s in states]
    assert outputs == [i + 3 for i in range(W1_COUNT)], "W1 went wrong"
    first = min(s.created_at for s in states if s is not None)
    last = max(s.last_updated_at for s in states if s is not None)
    span = (last - first).total_seconds()
    return {
        "orchestrations": W1_COUNT,
        "throughput_orch_per_s": W1_COUNT / span,
        "span_s": span,
        "wall_s": wall,
        "start_calls_s": start_calls,
        "sdk_process_cpu_ms_per_orchestration": cpu * 1000 / W1_COUNT,
    }


def run_w2(address: str) -> dict[str, Any]:
    with sdk_running(address, fan_out) as sdk:
        warm = sdk.schedule_new_orchestration(fan_out, input=100)
        sdk.wait_for_orchestration_completion(warm, timeout=120)
        time.sleep(0.25)
        cpu0, wall0 = _cpu(), time.perf_counter()
        instance_id = sdk.schedule_new_orchestration(fan_out, input=W2_FAN_OUT)
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=300)
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        episodes = sum(
            1
            for e in sdk.get_orchestration_history(instance_id)
            if type(e).__name__ == "OrchestratorStartedEvent"
        )
    assert state is not None and state.get_output() == W2_FAN_OUT, "W2 went wrong"
    return {
        "activities": W2_FAN_OUT,
        "wall_s": wall,
        "sdk_process_cpu_s": cpu,
        "episodes": episodes,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- backends -------------------------------------------------------------------------------------


@contextmanager
def backend_in_process(backend: str, directory: Path) -> Any:
    """The backend on threads of this process; yields its address."""
    if backend == "durable_fx":
        from durable_fx.sidecar import SidecarServer

        with SidecarServer(f"sqlite:///{directory / 'sidecar.db'}", port=0) as server:
            yield server.address, _no_cpu
        return
    from durabletask.testing import create_test_backend

    port = _free_port()
    server = create_test_backend(port=port)
    try:
        yield f"localhost:{port}", _no_cpu
    finally:
        server.stop()


@contextmanager
def backend_process(backend: str, directory: Path) -> Any:
    """The backend as a process of its own; yields its address."""
    port = _free_port()
    if backend == "durable_fx":
        store = f"sqlite:///{directory / 'sidecar.db'}"
        command = [sys.executable, "-m", "durable_fx.cli", "--store", store, "sidecar"]
        command += ["--port", str(port), "--log-level", "WARNING"]
    else:
        code = (
            "import time; from durabletask.testing import create_test_backend; "
            f"create_test_backend(port={port}); time.sleep(86400)"
        )
        command = [sys.executable, "-c", code]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        _wait_serving(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", lambda: _process_cpu(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _no_cpu() -> float:
    return 0.0


def _process_cpu(pid: int) -> float:
    """CPU seconds a process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_serving(address: str) -> None:
    import grpc
    from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc
    from google.protobuf import empty_pb2

    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.TaskHubSidecarServiceStub(channel)  # type: ignore[no-untyped-call]
        while True:
            try:
                stub.Hello(empty_pb2.Empty(), timeout=0.5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_one(backend: str, layout: str, workload: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as directory:
        start = backend_in_process if layout == "in-process" else backend_process
        with start(backend, Path(directory)) as (address, backend_cpu):
            before = backend_cpu()
            figures = run_w1(address) if workload == "W1" else run_w2(address)
            # Includes the warm-up: the backend process's CPU cannot be split by phase.
            figures["backend_process_cpu_s"] = backend_cpu() - before
            return figures


# -- orchestration of the runs ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help="W1, W2-1000 or both")
    parser.add_argument("--layout", default="both", choices=["both", *LAYOUTS])
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--out", help="also write the JSON document to this file")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: backend:layout:workload
    args = parser.parse_args()
    if args.run:
        backend, layout, workload = args.run.split(":")
        print(json.dumps(run_one(backend, layout, workload)))
        return

    workloads = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    layouts = LAYOUTS if args.layout == "both" else [args.layout]
    from run import _load  # bench/run.py: the same load average figure

    load_before = _load()
    results: dict[str, Any] = {}
    for workload in workloads:
        for layout in layouts:
            runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKENDS}
            for _ in range(args.repeat):
                for backend in BACKENDS:  # alternate, so both see the same noise
                    runs[backend].append(_isolated(backend, layout, workload))
            results.setdefault(workload, {})[layout] = _compare(workload, runs)
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "what": __doc__.split("\n\n", 2)[2].strip(),
        "results": results,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _isolated(backend: str, layout: str, workload: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run"]
    command.append(f"{backend}:{layout}:{workload}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _compare(workload: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    figure, better = ("throughput_orch_per_s", max) if workload == "W1" else ("wall_s", min)
    compared: dict[str, Any] = {}
    for backend, backend_runs in runs.items():
        good = [r for r in backend_runs if "error" not in r]
        medians = {
            key: statistics.median(r[key] for r in good)
            for key in (good[0] if good else {})
            if isinstance(good[0][key], int | float)
        }
        compared[backend] = medians | {f"{figure}_each_run": [r.get(figure) for r in good]}
        if len(good) < len(backend_runs):
            compared[backend]["errors"] = [r["error"] for r in backend_runs if "error" in r]
    ours = compared["durable_fx"].get(figure)
    theirs = compared["durabletask-in-memory"].get(figure)
    met = None
    if ours is not None and theirs is not None:
        met = better(ours, theirs) == ours
    compared["target"] = {
        "figure": figure,
        "durable_fx": ours,
        "durabletask_in_memory": theirs,
        "goal": "durable_fx at least as fast as durabletask's in-memory backend",
        "met": met,
    }
    return compared


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from importlib.metadata import version

    from run import _machine as durable_fx_machine

    machine: dict[str, Any] = durable_fx_machine()
    for package in ("durabletask", "grpcio", "protobuf"):
        machine[package] = version(package)
    return machine


if __name__ == "__main__":
    main()
