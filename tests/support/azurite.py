"""A real Azurite for the Azure store tests: started once per session, on free ports.

``node_modules/.bin/azurite`` comes from ``npm ci`` (``make test`` runs it,
pinned by package-lock.json). Each test gets its own task hub, so tests share
one Azurite without seeing each other's data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite"
_ACCOUNT = "devstoreaccount1"
# The emulator's documented, public development key.
_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class Azurite:
    """A running Azurite: its ports and how to reach it."""

    blob_port: int
    queue_port: int
    table_port: int

    def connection_string(self, hub: str | None = None) -> str:
        """A connection string for this Azurite, with a durable_fx task hub if given."""
        base = "http://127.0.0.1"
        text = (
            f"DefaultEndpointsProtocol=http;AccountName={_ACCOUNT};AccountKey={_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{_ACCOUNT};"
            f"QueueEndpoint={base}:{self.queue_port}/{_ACCOUNT};"
            f"TableEndpoint={base}:{self.table_port}/{_ACCOUNT};"
        )
        return text + (f"TaskHub={hub};" if hub else "")


def new_hub() -> str:
    """A task hub name no other test uses."""
    return "t" + uuid.uuid4().hex[:16]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_listening(ports: list[int], process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            raise RuntimeError(f"azurite exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"azurite did not listen on {pending} within {timeout} s"
                ) from None
            time.sleep(0.05)


class AzuriteProcess:
    """Starts Azurite with its data in ``workdir/azurite-data``; ``stop()`` ends it.

    The data is removed at the stop unless ``keep_data`` (a benchmark that parks
    work in one run and resumes it from a copy in another).
    """

    def __init__(self, workdir: Path, *, keep_data: bool = False) -> None:
        if not AZURITE_BIN.exists():
            raise FileNotFoundError(
                f"{AZURITE_BIN} is missing: run `npm ci` (make test does) to install Azurite"
            )
        blob, queue, table = _free_ports(3)
        self.azurite = Azurite(blob, queue, table)
        self._data = workdir / "azurite-data"
        self._keep_data = keep_data
        self._data.mkdir(parents=True, exist_ok=True)
        self._log = (workdir / "azurite.log").open("wb")
        command = [
            str(AZURITE_BIN),
            "--location", str(self._data),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
            "--blobPort", str(blob),
            "--queuePort", str(queue),
            "--tablePort", str(table),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        try:
            _wait_listening([blob, queue, table], self.process, timeout=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate Azurite (kill it if it lingers) and remove its data unless kept."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                # On SIGTERM Azurite saves its metadata databases: give a big one time.
                self.process.wait(timeout=120 if self._keep_data else 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        if not self._keep_data:
            shutil.rmtree(self._data, ignore_errors=True)
