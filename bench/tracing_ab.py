"""Tracing's cost on W1, measured in interleaved rounds: print one JSON document.

    python bench/tracing_ab.py [--rounds 10] [--bursts 5]
                               [--modes off,dropped,memory,memory-sync] [--out FILE]

Each round runs W1 once per mode (``run.py --only W1 --tracing MODE --bursts N``,
each in a process of its own on a fresh SQLite file; a run's figure is its
median burst of 200, since one burst lasts under a second), in turn, so that a machine whose
speed wanders from minute to minute slows every mode alike. The first mode is
the baseline. Per mode it reports the median throughput and CPU per
orchestration, the median of the rounds' ratios to the baseline (each ratio
from runs a few seconds apart), the best run (fastest: the least disturbed),
and the worker loop's CPU over the store thread's: the store thread does the
same SQL whatever the tracing, so that ratio is meant to cancel the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from _report import dump, header

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--bursts", type=int, default=5, help="bursts of 200 per run (median)")
    parser.add_argument("--modes", default="off,dropped,memory,memory-sync")
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_number in range(args.rounds):
        for mode in modes:
            figures = _w1(mode, args.bursts)
            runs[mode].append(figures)
            print(
                f"round {round_number + 1}/{args.rounds} {mode}: "
                f"{figures['throughput_orch_per_s']:.0f} orch/s",
                file=sys.stderr,
                flush=True,
            )
    document = header("tracing_ab") | {
        "rounds": args.rounds,
        "bursts_per_run": args.bursts,
        "baseline": modes[0],
        "modes": {mode: _summary(runs[mode], runs[modes[0]]) for mode in modes},
    }
    print(dump(document, args.out))


def _w1(mode: str, bursts: int) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "run.py"), "--only", "W1", "--tracing", mode]
    command += ["--bursts", str(bursts)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, Any] = json.loads(done.stdout)["results"]["W1"]["figures"]
    return figures


def _summary(runs: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any]:
    throughput = [r["throughput_orch_per_s"] for r in runs]
    cpu = [r["cpu_ms_per_orchestration"] for r in runs]
    ratios = [
        r["throughput_orch_per_s"] / b["throughput_orch_per_s"] - 1
        for r, b in zip(runs, baseline, strict=True)
    ]
    worker_per_store = [_worker_per_store(r) for r in runs]
    return {
        "throughput_orch_per_s": {"median": statistics.median(throughput), "best": max(throughput)},
        "throughput_change_median_of_rounds_percent": round(statistics.median(ratios) * 100, 1),
        "cpu_ms_per_orchestration": {"median": statistics.median(cpu), "best": min(cpu)},
        "worker_loop_cpu_per_store_thread_cpu": statistics.median(worker_per_store),
        "each_run_throughput": [round(t) for t in throughput],
    }


def _worker_per_store(figures: dict[str, Any]) -> float:
    threads = figures["cpu_ms_by_thread"]
    return round(threads["worker loop"] / threads["store thread"], 3)


if __name__ == "__main__":
    main()
