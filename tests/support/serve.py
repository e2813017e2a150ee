"""``durable-fx serve`` as a subprocess: start it on a free port, talk to it, stop it.

``server`` is a module-scoped fixture over the SQLite and Azure stores serving
``tests/apps/serve_app.py``; a test module imports it to use it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.azurite import Azurite, new_hub
from tests.support.instances import wait_until

REPO = Path(__file__).resolve().parents[2]
APPS = REPO / "tests" / "apps"
KEY = "test-function-key"
SECRET = "shipped-secret"
HOST_JSON = {
    "version": "2.0",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "batchSize": 8,
            "maxDequeueCount": 2,
            "visibilityTimeout": "00:00:00",
            "maxPollingInterval": "00:00:00.200",
        },
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A running ``durable-fx serve`` and how to talk to it."""

    process: subprocess.Popen[bytes]
    port: int
    store_url: str
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = KEY) -> httpx.Client:
        headers = {"x-functions-key": key} if key else {}
        return httpx.Client(base_url=f"{self.base}/api", headers=headers, timeout=15)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, and the exit code once it has shut down."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


def start_server(
    workdir: Path, target: str, env: dict[str, str], args: list[str] | None = None
) -> Server:
    """Start ``durable-fx serve target`` in ``workdir``; returns once it answers HTTP."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    command = [sys.executable, "-m", "durable_fx.cli", "serve", target, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command + (args or []), cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(process, port, env.get("DURABLE_FX_STORE", ""), log)
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}:\n{server.logs()}")
        try:
            if httpx.get(server.base + "/", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError(f"serve did not answer within 60 s:\n{server.logs()}")
        time.sleep(0.1)


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_FX_", "AzureWeb"))}
    pythonpath = os.pathsep.join(p for p in (str(APPS), str(REPO), env.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=pythonpath, DURABLE_FX_FUNCTION_KEYS=KEY, SHIPPED_SECRET=SECRET)
    env.update(extra)
    return env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp(f"serve-{request.param}")
    (workdir / "host.json").write_text(json.dumps(HOST_JSON))
    if request.param == "sqlite":
        url = f"sqlite:///{workdir / 'app.db'}"
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        url = azurite.connection_string(new_hub())
    running = start_server(workdir, "serve_app:app", server_env(), ["--store", url])
    running.store_url = url
    yield running
    code = running.stop()
    assert code == 0, running.logs()
    assert "stopped (SIGTERM)" in running.logs()


def new_id() -> str:
    return "o-" + uuid.uuid4().hex[:10]


def start_order(client: httpx.Client, order_id: str) -> dict[str, str]:
    response = client.post(
        f"orchestrators/fulfil/{order_id}", json={"order_id": order_id, "quantity": 2}
    )
    assert response.status_code == 202, response.text
    payload: dict[str, str] = response.json()
    # Once reserved it waits for Shipped events: the history has the activity's result.
    wait_until(
        lambda: (
            "TaskCompleted"
            in [
                e["kind"]
                for e in client.get(f"instances/{order_id}", params={"showHistory": "true"})
                .json()
                .get("historyEvents", [])
            ]
        )
    )
    return payload


def finished(client: httpx.Client, order_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        response = client.get(f"instances/{order_id}")
        return response.json() if response.status_code == 200 else None

    result: dict[str, Any] = wait_until(done)
    return result


def signed(body: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return raw, {"X-Timestamp": stamp, "X-Signature": f"sha256={digest}"}


def awaiting_receipt(client: httpx.Client, instance_id: str) -> str | None:
    status = client.get(f"instances/{instance_id}").json().get("customStatus") or {}
    return status.get("message_id") if status.get("stage") == "awaiting receipt" else None
