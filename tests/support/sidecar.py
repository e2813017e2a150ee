"""Fixtures for the gRPC sidecar tests: a sidecar on SQLite or Azurite, and the official SDK.

The tests drive the sidecar with ``durabletask`` (the official Python SDK),
exactly as an application would: ``TaskHubGrpcClient`` to start and steer
instances, ``TaskHubGrpcWorker`` to run the orchestrators and activities.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask import worker as dt_worker

from durable_fx.sidecar import SidecarServer
from tests.support.azurite import Azurite, new_hub

SIDECAR_STORES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("azure", id="azure", marks=pytest.mark.azurite),
]

WAIT = 30.0
"""Seconds a test waits for an instance: generous, so a slow CI machine does not flake."""

SDK_LOG = logging.getLogger("tests.durabletask")
"""The SDK logs every episode at INFO to stderr by default; through logging, pytest keeps it."""

Status = dt_client.OrchestrationStatus
Steps = Generator[task.Task[Any], Any, Any]
"""What an SDK orchestrator function returns."""


class RunCounter:
    """How many times each key (an instance, a task) has run.

    Activities run on the SDK worker's threads, so counting takes a lock.
    """

    def __init__(self) -> None:
        self._runs: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, key: str) -> int:
        """Count one more run of ``key``; returns its count so far."""
        with self._lock:
            self._runs[key] = self._runs.get(key, 0) + 1
            return self._runs[key]

    def __getitem__(self, key: str) -> int:
        return self._runs.get(key, 0)

    def __contains__(self, key: object) -> bool:
        return key in self._runs


def store_url_for(kind: str, directory: Path, request: pytest.FixtureRequest) -> str:
    """A fresh store of ``kind``: a new SQLite file, or a new task hub on the session's Azurite."""
    if kind == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        return azurite.connection_string(new_hub())
    return f"sqlite:///{directory / 'sidecar.db'}"


def start_worker(
    address: str, orchestrators: list[Any], activities: list[Any], **options: Any
) -> dt_worker.TaskHubGrpcWorker:
    """An SDK worker connected to ``address`` with these functions registered.

    ``options`` go to ``TaskHubGrpcWorker`` (``metadata``, or a ``channel``,
    which the SDK then uses instead of ``address``).
    """
    worker = dt_worker.TaskHubGrpcWorker(host_address=address, logger=SDK_LOG, **options)
    for orchestrator in orchestrators:
        worker.add_orchestrator(orchestrator)
    for activity in activities:
        worker.add_activity(activity)
    worker.start()
    return worker


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(condition: Callable[[], object], timeout: float = WAIT) -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)


def running_sidecar(url: str, **options: Any) -> SidecarServer:
    """A started in-process sidecar on a free port (stop it with ``stop()``)."""
    options.setdefault("max_poll_interval", 0.05)
    server = SidecarServer(url, port=0, **options)
    server.start()
    return server


def client_for(server: SidecarServer) -> Iterator[dt_client.TaskHubGrpcClient]:
    """An SDK client for ``server``, closed afterwards (for use in fixtures)."""
    sdk = dt_client.TaskHubGrpcClient(host_address=server.address, logger=SDK_LOG)
    try:
        yield sdk
    finally:
        sdk.close()
