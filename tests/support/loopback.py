"""A small HTTP receiver on a free loopback port, for the telemetry collectors the tests play."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that reads bodies (gzip or not) and logs nothing."""

    def body(self) -> bytes:
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        return gzip.decompress(raw) if self.headers.get("content-encoding") == "gzip" else raw

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test reports what matters


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` for the block; yields its base URL (``http://127.0.0.1:PORT``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
