"""An Application Insights ingestion endpoint on loopback: the envelopes it would store.

Serves ``POST /v2.1/track`` (and ``/v2/track``) as the Azure Monitor exporter
sends them: a JSON array of telemetry envelopes, gzip or not. Point a process
at it with ``APPLICATIONINSIGHTS_CONNECTION_STRING=receiver.connection_string``
(and ``APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL=true`` and
``APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED=true``, which keep the exporter's
usage reports and configuration polls from leaving the machine). Live
Metrics' pings are answered "nobody is watching".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.support.loopback import QuietHandler, serving


@dataclass(frozen=True)
class Envelope:
    """One telemetry item: its type (``RequestData``, ``RemoteDependencyData``, ...)."""

    base_type: str
    data: dict[str, Any]
    tags: dict[str, str]
    instrumentation_key: str

    @property
    def name(self) -> str:
        return str(self.data.get("name", ""))

    @property
    def properties(self) -> dict[str, Any]:
        return dict(self.data.get("properties") or {})


@dataclass
class AppInsightsReceiver:
    """The envelopes received so far."""

    connection_string: str = ""
    instrumentation_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    envelopes: list[Envelope] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, items: list[dict[str, Any]]) -> None:
        found = [
            Envelope(
                base_type=str(item["data"]["baseType"]),
                data=dict(item["data"]["baseData"]),
                tags=dict(item.get("tags") or {}),
                instrumentation_key=str(item.get("iKey", "")),
            )
            for item in items
        ]
        with self._lock:
            self.envelopes.extend(found)

    def where(self, test: Callable[[Envelope], bool]) -> list[Envelope]:
        with self._lock:
            return [e for e in self.envelopes if test(e)]

    def wait_for(
        self, test: Callable[[Envelope], bool], what: str, timeout: float = 30.0
    ) -> list[Envelope]:
        """The envelopes ``test`` accepts, once there is one at least."""
        deadline = time.monotonic() + timeout
        while not (found := self.where(test)):
            if time.monotonic() > deadline:
                with self._lock:
                    seen = sorted({f"{e.base_type} {e.name}" for e in self.envelopes})
                raise AssertionError(f"no {what}; got: {seen}")
            time.sleep(0.05)
        return found


@contextmanager
def app_insights_receiver() -> Iterator[AppInsightsReceiver]:
    """Serve an ingestion endpoint on a free loopback port for the block."""
    receiver = AppInsightsReceiver()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.body()
            if self.path.split("?")[0] not in ("/v2.1/track", "/v2/track"):
                # Live Metrics' ping (LiveEndpoint): nobody is watching.
                self._answer(200, {}, {"x-ms-qps-subscribed": "false"})
                return
            text = body.decode()
            items = (
                json.loads(text)
                if text.lstrip().startswith("[")
                else [json.loads(line) for line in text.splitlines() if line.strip()]
            )
            receiver.add(items)
            self._answer(200, {"itemsReceived": len(items), "itemsAccepted": len(items)})

        def _answer(
            self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            answer = json.dumps({**document, "errors": []}).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    with serving(Handler) as base:
        endpoint = f"{base}/"
        receiver.connection_string = (
            f"InstrumentationKey={receiver.instrumentation_key};IngestionEndpoint={endpoint};"
            f"LiveEndpoint={endpoint}"
        )
        yield receiver
