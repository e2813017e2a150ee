"""Where a backend's CPU goes while the official SDK runs W1 against it, thread by thread.

    python bench/thread_cpu.py [--backend durable_fx|durabletask-in-memory] [--runs N]

Starts the backend in a child process (the ``separate`` layout of
``bench/sidecar.py``), drives W1 through it ``--runs`` times from this
process, then asks the child for each thread's CPU since the first run began
(from ``/proc/self/task/<tid>/stat``, grouped by thread name) and prints one
JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sidecar as workloads  # noqa: E402  (bench/sidecar.py: W1 and the helpers)


def _thread_cpu_ms() -> Counter[str]:
    """CPU milliseconds of each of this process's threads, summed by name (numbers dropped)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: Counter[str] = Counter()
    for tid in os.listdir("/proc/self/task"):
        task = Path(f"/proc/self/task/{tid}")
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        name = names.get(int(tid)) or (task / "comm").read_text().strip()
        cpu[re.sub(r"[-_]\d+$", "", name)] += (int(fields[11]) + int(fields[12])) * 1000 / tick
    return cpu


def serve(backend: str, port: int, db: str) -> None:
    """The child: serve until SIGUSR2, then print the threads' CPU since SIGUSR1."""
    baseline: Counter[str] = Counter()
    done = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: baseline.update(_thread_cpu_ms()))
    signal.signal(signal.SIGUSR2, lambda *_: done.set())
    if backend == "durable_fx":
        from durable_fx.sidecar import SidecarServer

        server: Any = SidecarServer(f"sqlite:///{db}", port=port)
        server.start()
    else:
        from durabletask.testing import create_test_backend

        server = create_test_backend(port=port)
    print("ready", flush=True)
    while not done.wait(0.1):
        pass
    spent = _thread_cpu_ms()
    spent.subtract(baseline)
    print(json.dumps({name: ms for name, ms in spent.items() if ms > 0}), flush=True)
    server.stop()


def measure(backend: str, runs: int) -> dict[str, Any]:
    port = workloads._free_port()
    with tempfile.TemporaryDirectory(prefix="thread-cpu-") as directory:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", backend, str(port), f"{directory}/sidecar.db"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdout is not None
        try:
            child.stdout.readline()  # "ready"
            address = f"127.0.0.1:{port}"
            workloads._wait_serving(address)
            os.kill(child.pid, signal.SIGUSR1)
            throughput = [workloads.run_w1(address)["throughput_orch_per_s"] for _ in range(runs)]
            os.kill(child.pid, signal.SIGUSR2)
            threads: dict[str, float] = json.loads(child.stdout.readline())
        finally:
            child.wait(timeout=30)
    orchestrations = runs * (workloads.W1_COUNT + workloads.W1_WARM_UP)
    return {
        "backend": backend,
        "runs": runs,
        "orchestrations_incl_warm_up": orchestrations,
        "throughput_orch_per_s_each_run": [round(t, 1) for t in throughput],
        "thread_cpu_ms": {k: round(v) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
        "cpu_ms_per_orchestration": round(sum(threads.values()) / orchestrations, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=[*workloads.BACKENDS, "both"], default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)  # internal: the child
    args = parser.parse_args()
    if args.serve:
        backend, port, db = args.serve
        serve(backend, int(port), db)
        return
    backends = workloads.BACKENDS if args.backend == "both" else [args.backend]
    print(json.dumps([measure(backend, args.runs) for backend in backends], indent=2))


if __name__ == "__main__":
    main()
