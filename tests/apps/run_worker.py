"""Run a worker over ``durability_app`` until SIGTERM: ``python -m tests.apps.run_worker``.

Usage: ``python -m tests.apps.run_worker STORE_URL READY_FILE [LEASE_SECONDS]``. The
ready file is created once the worker runs, so a test knows when to start work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from types import FrameType

from durable_fx import Worker

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
    with Worker(registry, store_url, lease=lease, max_poll_interval=0.05, shutdown_grace=2.0):
        ready_file.touch()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
