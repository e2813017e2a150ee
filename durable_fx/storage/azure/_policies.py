"""Pipeline policies: count every storage request, and (in tests) inject faults.

Both run once per attempt (``per_retry_policies``), so a retried call counts
twice and can fail twice, as on the wire.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from typing import Any

from azure.core.exceptions import (
    ServiceRequestError,
    ServiceResponseError,
    StreamConsumedError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy, SansIOHTTPPolicy

__all__ = ["FaultInjector", "RequestCounter"]


class RequestCounter:
    """Counts requests sent to storage, by ``"<service> <HTTP method>"``.

    Thread-safe; ``snapshot()`` and ``total`` read it at any time. Each SDK
    client gets its own ``policy(service)``, all counting here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def policy(self, service: str) -> SansIOHTTPPolicy[Any, Any]:
        """A pipeline policy that counts each attempt of a ``service`` client."""
        return _Count(self, service)

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    @property
    def total(self) -> int:
        """Requests counted so far."""
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """Counts so far by ``"<service> <method>"``."""
        with self._lock:
            return dict(self._counts)


class _Count(SansIOHTTPPolicy[Any, Any]):
    def __init__(self, counter: RequestCounter, service: str) -> None:
        self._counter = counter
        self._service = service

    def on_request(self, request: PipelineRequest[Any]) -> None:
        self._counter.add(f"{self._service} {request.http_request.method}")


class FaultInjector(AsyncHTTPPolicy[Any, Any]):
    """Fails a fraction of requests, half of them *after* the service applied them.

    A failure before sending is a connection error (nothing happened); one
    after is a lost response (it happened, the client cannot tell). Both are
    what a flaky network does, and the store must survive both.

    Args:
        rate: Fraction of requests to fail (0.05 = 5 %).
        seed: Makes a run repeatable.
    """

    def __init__(self, rate: float, *, seed: int = 0) -> None:
        self.rate = rate
        self._random = random.Random(seed)
        self.failed_before = 0
        self.failed_after = 0
        self.enabled = True

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        """Send, or fail before or after sending."""
        roll = self._random.random()
        if self.enabled and roll < self.rate / 2:
            self.failed_before += 1
            raise ServiceRequestError("injected fault: connection dropped before sending")
        response = await self.next.send(request)
        if self.enabled and roll < self.rate:
            self.failed_after += 1
            # Read the body so the connection goes back to the pool cleanly.
            load_body = getattr(response.http_response, "load_body", None)
            if load_body is not None:
                # An empty body (204) counts as consumed once read: reading it again raises.
                with contextlib.suppress(StreamConsumedError):
                    await load_body()
            raise ServiceResponseError("injected fault: response lost after the service applied it")
        return response
