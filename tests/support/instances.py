"""Reading an instance through the public client, and waiting for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from durable_fx import DurableClient, OrchestrationStatus

T = TypeVar("T")


WAIT = 30.0
"""How long a test waits for something the system does on its own."""


def wait_until(condition: Callable[[], T | None], timeout: float = WAIT, *, what: str = "") -> T:
    """Poll ``condition`` (5 ms, doubling to 50 ms) until truthy and return its value.

    Fails the test naming ``what`` (else the condition) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return value


def status_of(client: DurableClient, instance_id: str) -> OrchestrationStatus | None:
    """The instance's status, or ``None`` if there is no such instance."""
    state = client.get(instance_id)
    return None if state is None else state.status


def custom_status_of(client: DurableClient, instance_id: str) -> Any:
    """The instance's custom status, or ``None`` if there is no such instance."""
    state = client.get(instance_id)
    return None if state is None else state.custom_status


def history_kinds(client: DurableClient, instance_id: str) -> list[str]:
    """The kinds of the instance's history events, oldest first (none if no instance)."""
    state = client.get(instance_id, history=True)
    return [] if state is None or state.history is None else [e.kind for e in state.history]
