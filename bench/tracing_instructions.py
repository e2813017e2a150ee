"""Tracing's cost on W1 in instructions executed, under Valgrind: print one JSON document.

    python bench/tracing_instructions.py [--modes off,dropped,memory] [--bursts 4]
                                         [--repeat 1] [--out FILE]

A throughput series on a shared VM moves by more than tracing costs
(``tracing_ab.py``: single rounds from +20 % to -41 %). The instructions a
run executes hardly move: each mode runs W1 (``run.py --workload W1 --tracing
MODE``) twice under ``valgrind --tool=cachegrind --cache-sim=no``, with one
burst of 200 and with ``--bursts``, and the difference divided by the extra
orchestrations is what one orchestration costs, start-up and imports left
out. The first mode is the baseline. Instructions leave out what they cannot
see: cache misses, and waiting. About 20 times slower than a plain run; the
two runs of a mode go side by side.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _report import dump, header

HERE = Path(__file__).resolve().parent
BURST = 200  # orchestrations per W1 burst (workloads.py)
_INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="off,dropped,memory")
    parser.add_argument("--bursts", type=int, default=4, help="bursts in the longer run (>= 2)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per mode (median)")
    parser.add_argument("--out", help="also write the JSON document to this file")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: this benchmark counts instructions with it")
    if args.bursts < 2:
        raise SystemExit("--bursts must be at least 2: the difference from one burst is measured")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    per_orchestration: dict[str, list[int]] = {mode: [] for mode in modes}
    for _ in range(args.repeat):
        for mode in modes:
            count = _per_orchestration(mode, args.bursts)
            per_orchestration[mode].append(count)
            print(f"{mode}: {count:,} instructions per orchestration", file=sys.stderr)
    baseline = statistics.median(per_orchestration[modes[0]])
    document = header("tracing_instructions", valgrind=_valgrind_version()) | {
        "bursts": args.bursts,
        "baseline": modes[0],
        "modes": {mode: _summary(counts, baseline) for mode, counts in per_orchestration.items()},
    }
    print(dump(document, args.out))


def _per_orchestration(mode: str, bursts: int) -> int:
    """Instructions of ``bursts`` bursts minus those of one, per extra orchestration."""
    with ThreadPoolExecutor(2) as pool:
        short, long = pool.map(lambda n: _instructions(mode, n), (1, bursts))
    return round((long - short) / ((bursts - 1) * BURST))


def _instructions(mode: str, bursts: int) -> int:
    with tempfile.TemporaryDirectory(prefix="durable_fx-instructions-") as db_dir:
        command = ["valgrind", "--tool=cachegrind", "--cache-sim=no"]
        command += ["--cachegrind-out-file=/dev/null", sys.executable, str(HERE / "run.py")]
        command += ["--workload", "W1", "--db-dir", db_dir, "--tracing", mode]
        command += ["--bursts", str(bursts)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = _INSTRUCTIONS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"W1 under valgrind failed ({mode}, {bursts} bursts):\n{done.stderr}")
    return int(found.group(1).replace(",", ""))


def _summary(counts: list[int], baseline: float) -> dict[str, Any]:
    median = statistics.median(counts)
    return {
        "instructions_per_orchestration": {"median": median, "each": counts},
        "change_percent": round((median / baseline - 1) * 100, 1),
    }


def _valgrind_version() -> str:
    done = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


if __name__ == "__main__":
    main()
