"""Run the app with ``durable-fx serve`` in a child process and talk to it: demo and tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from .localsmtp import free_port

__all__ = ["AppProcess", "signed", "wait_until"]

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def signed(body: dict[str, Any], secret: str) -> tuple[bytes, dict[str, str]]:
    """A body and the headers ``hmac_sha256`` checks: HMAC of ``"<timestamp>.<body>"``."""
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
    headers = {"X-Timestamp": stamp, "X-Signature": f"sha256={digest}"}
    return raw, {**headers, "Content-Type": "application/json"}


class AppProcess:
    """``durable-fx serve function_app:app`` on a free port, with the given settings."""

    def __init__(self, store_url: str, settings: dict[str, str], log: Path) -> None:
        self.store_url = store_url
        self.key = "local-key"
        self.settings = settings
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> AppProcess:
        """Start the host; returns once it answers HTTP."""
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLE_FX_", "AzureWeb"))}
        path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.update(PYTHONPATH=path, DURABLE_FX_FUNCTION_KEYS=self.key, **self.settings)
        command = [sys.executable, "-m", "durable_fx.cli", "serve", "function_app:app"]
        command += ["--store", self.store_url, "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}; see {self.log}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"serve did not answer within {timeout:g} s; see {self.log}")
            time.sleep(0.1)

    def client(self) -> httpx.Client:
        """An HTTP client for ``/api/`` with the function key."""
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/api/",
            headers={"x-functions-key": self.key},
            timeout=30,
        )

    def kill(self) -> None:
        """SIGKILL the host (a crash: nothing is flushed or released)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> int:
        """SIGTERM and wait: the graceful stop."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode


def wait_until(check: Callable[[], T | None], timeout: float = 60.0, what: str = "") -> T:
    """Poll ``check`` until it answers; ``TimeoutError`` naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what or check}")
        time.sleep(0.1)
