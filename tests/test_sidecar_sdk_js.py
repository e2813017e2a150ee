"""Dapr's Durable Task SDK for JavaScript, which sends no completion tokens, through the sidecar.

``@dapr/durabletask-js`` 1.0 (installed from npm by the test command, pinned
by package-lock.json) completes orchestrator and activity work items with an
empty ``completionToken``; the sidecar matches them by instance id (and task
id), as durabletask-go does. ``tests/apps/dapr_js_app.js`` runs a chain, a
fan-out and an external event with that SDK's worker and client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.serve import REPO
from tests.support.sidecar import SIDECAR_STORES, running_sidecar, store_url_for

APP = REPO / "tests" / "apps" / "dapr_js_app.js"
SDK = REPO / "node_modules" / "@dapr" / "durabletask-js"

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind", SIDECAR_STORES)
def test_an_sdk_without_completion_tokens_runs_orchestrations(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    node = shutil.which("node")
    assert node, "node is needed (the test command's requirements: Node 20)"
    assert SDK.is_dir(), f"{SDK} is missing: make test installs it (npm ci)"
    server = running_sidecar(store_url_for(kind, tmp_path, request))
    try:
        run = subprocess.run(
            [node, str(APP), server.address, str(tmp_path / "result.json")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["failure"] is None
    assert result["status"] == 1  # the SDK's OrchestrationStatus.COMPLETED
    assert json.loads(result["output"]) == {
        "said": ["Hello Tokyo!", "Hello London!"],
        "squares": [1, 4, 9],
        "approval": {"by": "ops"},
    }
