"""The official durabletask-python SDK's own end-to-end tests, run against ``durable-fx sidecar``.

They live outside this repository (``../shared/conformance/``, or the directory
``DURABLE_FX_CONFORMANCE_DIR`` names): the SDK authors' definition of a correct
backend, run as they are by its ``run_durabletask_e2e.sh``, which gives each
test a fresh sidecar on a fresh SQLite file. This test runs the suites named
below and holds the result to what passes today: a regression fails it, and
so does a known failure that starts passing (update ``KNOWN_FAILURES`` then).
On SQLite, the sidecar's default store, work-item filters apply.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serve import REPO

pytestmark = pytest.mark.slow

SUITES = [
    "test_orchestration_e2e.py",
    "test_orchestration_async_e2e.py",
    "test_orchestration_versioning_e2e.py",
    "test_rewind_e2e.py",
    "test_work_item_filters_e2e.py",
    "entities/test_function_based_entities_e2e.py",
    "entities/test_class_based_entities_e2e.py",
    "entities/test_delayed_signals_e2e.py",
    "scheduled/test_scheduled_e2e.py",
]
KNOWN_FAILURES: set[str] = set()
_OUTCOME = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED) tests/durabletask/(\S+?)(?: - .*)?$")


def _conformance_dir() -> Path:
    named = os.environ.get("DURABLE_FX_CONFORMANCE_DIR")
    return Path(named) if named else REPO.parent / "shared" / "conformance"


def _run_suites(tmp_path: Path, suites: list[str], sidecar: str | None = None) -> dict[str, str]:
    """Run the SDK's ``suites`` through its script; each test's outcome by name."""
    here = _conformance_dir()
    script = here / "run_durabletask_e2e.sh"
    if not script.is_file():
        pytest.skip(f"the SDK's conformance suites are not at {here} (DURABLE_FX_CONFORMANCE_DIR)")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if sidecar is not None:
        env["DFX_SIDECAR_CMD"] = sidecar
    # The SDK's own configuration runs its unmarked async tests with pytest-asyncio's auto mode.
    run = subprocess.run(
        ["bash", str(script), "-rA", "-o", "asyncio_mode=auto",
         *(f"tests/durabletask/{name}" for name in suites)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )  # fmt: skip
    outcomes: dict[str, str] = {}
    for line in run.stdout.splitlines():
        if found := _OUTCOME.match(line.strip()):
            outcomes[found.group(2)] = found.group(1)
    assert outcomes, f"no test outcomes in the run's output:\n{run.stdout[-3000:]}{run.stderr}"
    return outcomes


def _failed(outcomes: dict[str, str]) -> set[str]:
    return {test for test, outcome in outcomes.items() if outcome in ("FAILED", "ERROR")}


def test_the_official_sdk_suites_pass_against_the_sidecar(tmp_path: Path) -> None:
    outcomes = _run_suites(tmp_path, SUITES)
    failed = _failed(outcomes)
    assert failed - KNOWN_FAILURES == set(), "the SDK's tests that fail against the sidecar"
    assert KNOWN_FAILURES - failed == set(), "these pass now: take them off KNOWN_FAILURES"
    passed = sum(outcome == "PASSED" for outcome in outcomes.values())
    assert passed >= 78, outcomes


def test_the_entity_suites_pass_with_per_operation_work_items(tmp_path: Path) -> None:
    """Entities again, sent as ``EntityRequest`` (the newer shape) instead of batches."""
    entity_suites = [name for name in SUITES if name.startswith(("entities/", "scheduled/"))]
    sidecar = "durable-fx sidecar --entity-work-items operations"
    outcomes = _run_suites(tmp_path, entity_suites, sidecar)
    assert _failed(outcomes) == set(), outcomes
    assert sum(outcome == "PASSED" for outcome in outcomes.values()) >= 25, outcomes
