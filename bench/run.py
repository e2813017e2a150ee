"""durable_fx benchmarks: print one JSON document with every figure, its target and the machine.

    python bench/run.py [--store sqlite[?PARAMS]|memory://] [--only W1,W2-1000,...]
                        [--repeat N] [--out FILE]

``--store sqlite`` (the default) gives each workload a fresh SQLite file in a
temporary directory (``--store 'sqlite?synchronous=normal'`` passes store URL
parameters); ``--store memory://`` a fresh in-process store. Each
workload runs in a process of its own, so one cannot warm or slow another.
``--only W2`` selects W2-1000 and W2-5000. ``--repeat N`` runs each workload
N times (each in a new process on a new database) and reports the median of
every figure, with each run's value of the targeted figures beside it: useful
on a shared or noisy machine. The load average before and after is recorded.

Targets are printed beside the figures with ``met``; nothing here fails on a
missed target (this is a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ORDER = ["W1", "W2-1000", "W2-5000", "W3", "W4"]

# (figure, comparison, target value, unit) for each workload.
TARGETS: dict[str, list[tuple[str, str, float, str]]] = {
    "W1": [("throughput_orch_per_s", ">=", 300, "orchestrations/s")],
    "W2-1000": [("wall_s", "<=", 0.5, "s")],
    "W2-5000": [("wall_s", "<=", 2.5, "s")],
    "W3": [("idle_cpu_percent_of_core", "<=", 0.2, "% of a core")],
    "W4": [("ratio_late_to_early", "<=", 1.5, "step-5000 time / step-100 time")],
}

DESCRIPTIONS = {
    "W1": "200 orchestrations of 3 sequential trivial activities started at once; "
    "throughput from first start to last completion, process CPU per orchestration, "
    "and start-to-completed latency of single runs on an idle worker",
    "W2-1000": "one orchestration fanning out to 1,000 trivial activities (when_all)",
    "W2-5000": "one orchestration fanning out to 5,000 trivial activities (when_all)",
    "W3": "CPU of a started worker with nothing to do, over 10 s, in its own process",
    "W4": "one orchestration of 5,000 sequential activities; time per step "
    "(gap between consecutive TaskScheduled) averaged over 50 steps around each point",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", default="sqlite", help="sqlite (default), sqlite?PARAMS or memory://"
    )
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W4")
    parser.add_argument("--repeat", type=int, default=1, help="runs per workload (median)")
    parser.add_argument("--out", help="also write the JSON document to this file")
    parser.add_argument(
        "--tracing",
        choices=["off", "memory", "memory-sync", "dropped"],
        default="off",
        help="memory: the OpenTelemetry SDK batches every span to an in-memory exporter, as "
        "configure_telemetry batches them to OTLP; memory-sync: exported as each span ends; "
        "dropped: an SDK whose sampler keeps no span (what durable_fx does around the spans)",
    )
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # internal: run one, in-process
    parser.add_argument("--db-dir", help=argparse.SUPPRESS)
    parser.add_argument("--profile-variant", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--bursts",
        type=int,
        default=1,
        help="W1: bursts of 200 per process, the median one reported (a steadier figure)",
    )
    args = parser.parse_args()
    store = _store_spec(args.store)

    if args.workload:
        if args.tracing != "off":
            _record_spans_in_memory(
                batched=args.tracing == "memory", sampled=args.tracing != "dropped"
            )
        sys.path.insert(0, str(HERE))
        from workloads import run_workload

        figures = run_workload(
            args.workload,
            store,
            Path(args.db_dir),
            profile=args.profile_variant,
            bursts=args.bursts,
        )
        print(json.dumps(figures))
        return

    selected = _select(args.only)
    results: dict[str, Any] = {}
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="durable_fx-bench-") as db_dir:
        for name in selected:
            runs = []
            for i in range(max(1, args.repeat)):
                print(f"running {name} on {store} ({i + 1})...", file=sys.stderr, flush=True)
                runs.append(_run_isolated(name, store, db_dir, args.tracing, args.bursts))
            results[name] = _annotate(name, runs)
    document = {
        "benchmark": "durable_fx",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": store,
        "tracing": args.tracing,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": _machine() | {"load_average_before": load_before, "load_average_after": _load()},
        "results": results,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _store_spec(value: str) -> str:
    if value == "memory://":
        return value
    if value in ("sqlite", "sqlite://"):
        return "sqlite"
    if value.startswith("sqlite?"):
        return value  # URL parameters, e.g. sqlite?synchronous=normal
    raise SystemExit(f"--store must be sqlite, sqlite?PARAMS or memory://, not {value!r}")


def _select(only: str) -> list[str]:
    if not only:
        return ORDER
    wanted = {w.strip().upper() for w in only.split(",") if w.strip()}
    selected = [n for n in ORDER if n in wanted or n.split("-")[0] in wanted]
    unknown = wanted - set(selected) - {n.split("-")[0] for n in selected}
    if unknown:
        raise SystemExit(f"unknown workloads {sorted(unknown)}; choose from {ORDER}")
    return selected


def _record_spans_in_memory(*, batched: bool, sampled: bool = True) -> None:
    """An SDK provider whose spans are all kept (the cost of tracing, not of an export).

    With ``sampled=False`` its sampler keeps none: durable_fx still carries and
    stores trace contexts, the SDK hands back non-recording spans.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=None if sampled else ALWAYS_OFF)
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter) if batched else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


def _run_isolated(
    name: str, store: str, db_dir: str, tracing: str = "off", bursts: int = 1
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--workload",
        name,
        "--store",
        store,
        "--db-dir",
        db_dir,
        "--tracing",
        tracing,
        "--bursts",
        str(bursts),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["process_wall_s"] = time.perf_counter() - t0
    return figures


def _annotate(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [run for run in runs if "error" not in run]
    figures = _median(good) if good else runs[0]
    annotated: dict[str, Any] = {"what": DESCRIPTIONS[name], "runs": len(runs)}
    if len(good) < len(runs):
        annotated["errors"] = [run["error"] for run in runs if "error" in run]
    annotated |= {"figures": figures, "targets": {}}
    for figure, op, target, unit in TARGETS[name]:
        value = figures.get(figure)
        met = None
        if isinstance(value, int | float):
            met = value >= target if op == ">=" else value <= target
        annotated["targets"][figure] = {
            "value": value,
            "target": f"{op} {target:g}",
            "unit": unit,
            "met": met,
        }
        if len(good) > 1:
            annotated["targets"][figure]["each_run"] = [run.get(figure) for run in good]
    return annotated


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of numeric figures (nested dicts too); other values from the first run."""
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run.get(key) for run in runs]
        if isinstance(first, dict):
            merged[key] = _median([v for v in values if isinstance(v, dict)])
        elif isinstance(first, int | float) and not isinstance(first, bool):
            merged[key] = statistics.median(v for v in values if isinstance(v, int | float))
        else:
            merged[key] = first
    return merged


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _machine() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import durable_fx

    source = Path(durable_fx.__file__).resolve().parent
    commit = _git(source, "rev-parse", "--short", "HEAD")
    if commit and _git(source, "status", "--porcelain", "--", "."):
        commit += "-dirty"  # durable_fx has uncommitted changes
    import pydantic

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "pydantic": pydantic.VERSION,
        "durable_fx": str(source),
        "git_commit": commit,
    }


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(where), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
