"""Run a worker over ``durability_app`` until SIGTERM: ``python -m tests.apps.run_worker``.

Usage: ``python -m tests.apps.run_worker STORE_URL READY_FILE [LEASE_SECONDS]``. The
ready file is created once the worker runs, so a test knows when to start work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType

from durable_fx import Store, Worker, open_store
from durable_fx.storage.azure import open_azure_store

from .durability_app import registry


def main(argv: list[str]) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    store_url, ready_file = argv[0], Path(argv[1])
    lease = timedelta(seconds=float(argv[2])) if len(argv) > 2 else timedelta(seconds=60)
    log_format = f"[worker {os.getpid()}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.WARNING, format=log_format)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    store = _open(store_url)
    try:
        with Worker(registry, store, lease=lease, max_poll_interval=0.05, shutdown_grace=2.0):
            ready_file.touch()
            stop.wait()
    finally:
        asyncio.run(store.close())
    return 0


def _open(store_url: str) -> Store:
    """The store; an Azure one polls its control queues at least every 2 s while idle.

    The tests' workers race for work that another process starts. With the
    default idle back-off (up to 80 s between polls) a worker that idled
    while the other started up could find its first message only after the
    other had done all the work.
    """
    if "TaskHub=" in store_url:
        return open_azure_store(store_url, idle_poll=(0.05, 2.0))
    return open_store(store_url)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
