"""A Functions app for ``tests/test_security_events.py``: signed webhooks and declared events.

Run as ``events_app:app`` (this directory on PYTHONPATH) with ``HOOK_SECRET``
set. ``collect`` declares the one event it waits for, ``Ping``, and counts them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from durable_fx import DurableApp, EventTimeoutError, OrchestrationContext, Orchestrator
from durable_fx.bindings import event_grid_handshake, github_signature, hmac_sha256

app = DurableApp()


class Ping(BaseModel):
    """A signed notice for ``instance``; ``n < 0`` ends the orchestration."""

    instance: str
    n: int


@app.orchestrator(events={"Ping": Ping})
def collect(ctx: OrchestrationContext) -> Orchestrator[list[int]]:
    """Receive Ping events until one has ``n < 0`` or a quiet minute passes."""
    received: list[int] = []
    while True:
        try:
            ping = yield ctx.wait_for_event("Ping", timeout=timedelta(seconds=60), result_type=Ping)
        except EventTimeoutError:
            break
        received.append(ping.n)
        ctx.set_custom_status({"received": len(received)})
        if ping.n < 0:
            break
    return received


@app.event_webhook(
    route="hooks/github",
    event_name="Ping",
    instance_id=lambda ping: ping.instance,
    verify=github_signature("HOOK_SECRET"),
)
def github_hook(ping: Ping) -> Ping:
    """GitHub-style: ``X-Hub-Signature-256`` over the body, no timestamp."""
    return ping


@app.event_webhook(
    route="hooks/signed",
    event_name="Ping",
    instance_id=lambda ping: ping.instance,
    verify=hmac_sha256("HOOK_SECRET"),
)
def signed_hook(ping: Ping) -> Ping:
    """HMAC of ``<X-Timestamp>.<body>``."""
    return ping


@app.event_webhook(
    route="hooks/composed",
    event_name="Ping",
    instance_id=lambda event: event["data"]["instance"],
    event_id=lambda event: event["id"],
    verify=[event_grid_handshake(), hmac_sha256("HOOK_SECRET")],
    batch=True,
)
def composed_hook(event: dict[str, Any]) -> dict[str, Any]:
    """Event Grid handshakes plus a signature: the route keeps its function key."""
    data: dict[str, Any] = event["data"]
    return data
