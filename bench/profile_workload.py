"""Profile one workload and summarize where the time goes, per thread.

    python bench/profile_workload.py W1 [--store sqlite|memory://] [--cprofile] [--gil] [--top 25]

Workloads: W1 (five bursts of 200, no latency runs), W1-latency, W2-1000,
W2-5000, W4; each on a fresh store, in a process of its own, as in ``run.py``.

Two profilers:

* py-spy (default; ``pip install py-spy``, needs ptrace: root, or
  ``kernel.yama.ptrace_scope=0``) samples every thread from outside, so it
  costs the workload nothing. Use ``--gil`` to sample only the thread holding
  the GIL: on CPython that is the Python-level work, which serializes. (Without
  ``--gil`` py-spy counts threads blocked in a queue as busy, so that view
  mostly shows idle pool threads.) Stacks inside imports (start-up) and empty
  stacks are left out. ``--raw FILE`` keeps the collapsed stacks (flamegraph.pl
  or speedscope input).
* ``--cprofile`` runs the workload here with a ``cProfile.Profile`` in every
  thread (slower: cProfile inflates Python calls, not C ones) and prints, per
  thread role, the functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_THREAD = re.compile(r"thread \(\d+\)(?::\s*(?P<name>.*))?")
_ROLES = (
    ("durable_fx-sqlite", "store thread"),
    ("durable-fx-activity", "activity threads"),
    ("durable-fx-worker", "worker loop"),
    ("durable-fx-client", "client loop"),
    ("MainThread", "client (main thread)"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", help="W1, W1-latency, W2-1000, W2-5000 or W4")
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--cprofile", action="store_true", help="cProfile in-process")
    parser.add_argument("--gil", action="store_true", help="py-spy: sample only the GIL holder")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--raw", help="py-spy: where to keep the collapsed stacks")
    parser.add_argument(
        "--dump", help="cProfile: a directory for each role's stats (pstats: print_callers)"
    )
    parser.add_argument(
        "--tracing",
        choices=("off", "memory", "dropped"),
        default="off",
        help="run.py's --tracing (memory: every span kept by the OTel SDK)",
    )
    args = parser.parse_args()
    if args.cprofile:
        with tempfile.TemporaryDirectory(prefix="durable_fx-profile-") as tmp:
            profile_in_process(
                args.workload, args.store, Path(tmp), args.top, args.tracing, args.dump
            )
    else:
        sample_with_py_spy(args)


# -- py-spy ----------------------------------------------------------------------------------


def sample_with_py_spy(args: argparse.Namespace) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy); or use --cprofile")
    with tempfile.TemporaryDirectory(prefix="durable_fx-profile-") as tmp:
        raw = Path(args.raw) if args.raw else Path(tmp) / "stacks.txt"
        command = [spy, "record", "-r", str(args.rate), "--format", "raw", "--threads"]
        command += ["--gil"] if args.gil else []
        command += ["-o", str(raw), "--", sys.executable, str(HERE / "run.py")]
        command += ["--workload", args.workload, "--store", args.store, "--db-dir", tmp]
        command += ["--tracing", args.tracing, "--profile-variant"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        summarize(raw.read_text().splitlines(), args.top)


def _role_of_name(name: str) -> str:
    return next((role for prefix, role in _ROLES if name.startswith(prefix)), name or "other")


def summarize(lines: list[str], top: int) -> None:
    """Print shares by thread role and the top functions of py-spy's collapsed stacks."""
    roles: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    exclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or any(f.startswith("_find_and_load ") for f in frames):
            continue  # no Python frame, or importing modules at start-up
        count = int(count_text)
        total += count
        match = _THREAD.fullmatch(frames[0])
        roles[_role_of_name((match.group("name") or "") if match else "")] += count
        functions = [_short(f) for f in frames[1:]]
        for function in set(functions):
            inclusive[function] += count
        exclusive[functions[-1]] += count
    print(f"{total} samples")
    print("\nby thread role:")
    for role, count in roles.most_common():
        print(f"  {count / total:6.1%}  {role}")
    print(f"\ntop {top} inclusive (on the stack):")
    for function, count in inclusive.most_common(top):
        print(f"  {count / total:6.1%}  {function}")
    print(f"\ntop {top} exclusive (running):")
    for function, count in exclusive.most_common(top):
        print(f"  {count / total:6.1%}  {function}")


def _short(frame: str) -> str:
    """``name (path/to/file.py:12)`` → ``name (file.py)``: lines would split one function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "durable_fx" in parts else Path(path).name
    return f"{name} ({short})"


# -- cProfile --------------------------------------------------------------------------------


def profile_in_process(
    workload: str, store: str, db_dir: Path, top: int, tracing: str = "off", dump: str | None = None
) -> None:
    """Run the workload here with one cProfile per thread; print each role's top functions."""
    if tracing != "off":
        from run import _record_spans_in_memory

        _record_spans_in_memory(batched=True, sampled=tracing != "dropped")
    profiles: list[tuple[str, cProfile.Profile]] = []
    original_run = threading.Thread.run

    def profiled_run(thread: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append((thread.name, profile))
        profile.enable()
        try:
            original_run(thread)
        finally:
            profile.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    sys.path.insert(0, str(HERE))
    from workloads import run_workload

    main_profile = cProfile.Profile()
    profiles.append(("MainThread", main_profile))
    figures = _profiled(main_profile, lambda: run_workload(workload, store, db_dir, profile=True))
    threading.Thread.run = original_run  # type: ignore[method-assign]
    print(f"figures (slowed by cProfile): {figures}\n")

    by_role: dict[str, pstats.Stats] = {}
    for name, profile in profiles:
        role = _role_of_name(name)
        stats = pstats.Stats(profile)  # disables it (threads still alive are idle by now)
        if role in by_role:
            by_role[role].add(stats)
        else:
            by_role[role] = stats
    for role, stats in sorted(by_role.items(), key=lambda kv: -_total(kv[1])):
        if dump is not None:
            Path(dump).mkdir(parents=True, exist_ok=True)
            stats.dump_stats(str(Path(dump) / f"{role.replace(' ', '-')}.prof"))
        # Calls do not depend on the machine's speed: the figure to compare between commits.
        calls = sum(entry[1] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"===== {role}: {_total(stats):.3f} s profiled, {calls:,} calls =====")
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            stats.stream = out  # type: ignore[attr-defined]
            stats.sort_stats(key).print_stats(top)
            body = out.getvalue()
            print(f"--- by {key} ---")
            print(body[body.find("   ncalls") :])


def _profiled(profile: cProfile.Profile, call: Callable[[], Any]) -> Any:
    profile.enable()
    try:
        return call()
    finally:
        profile.disable()


def _total(stats: pstats.Stats) -> float:
    return float(stats.total_tt)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
