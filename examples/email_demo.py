"""The email pipeline demo (``make demo``): real HTTP, real SMTP, real signed webhooks.

Starts ``durable-fx serve function_app:app`` on the embedded SQLite store
(``.durable_fx/email-demo.db``) and a local SMTP server (aiosmtpd), sends five
emails through ``POST /api/emails``, then plays the provider: receipts go to
the signed webhook ``POST /api/webhooks/delivery``. Timeouts are shortened
through settings (receipt wait 6 s instead of 24 h, resend back-off 1 s) so it
finishes in well under a minute.

    make demo        # or: .venv/bin/python examples/email_demo.py
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from durable_fx import DurableClient, open_store
from durable_fx.cli import render_timeline
from email_pipeline.localrun import AppProcess, signed, wait_until
from email_pipeline.localsmtp import LocalSmtp

SECRET = "demo-webhook-secret"
SETTINGS = {
    "EMAIL_PROVIDER": "smtp",
    "SMTP_HOST": "127.0.0.1",
    "DELIVERY_WEBHOOK_SECRET": SECRET,
    "EMAIL_RECEIPT_TIMEOUT_SECONDS": "6",
    "EMAIL_RESEND_BACKOFF_SECONDS": "1",
    "EMAIL_SEND_RETRY_SECONDS": "1",
    "EMAIL_OPERATIONS_ADDRESS": "ops@example.com",
}
# Which receipts the "provider" sends for each recipient, in order.
CASES = {
    "ada@example.com": ["delivered"],
    "grace@example.com": ["bounced_soft", "delivered"],
    "alan@example.com": ["bounced_hard"],
    "edsger@example.com": [],  # silence: escalated after the (shortened) timeout
    "barbara@example.com": ["deferred", "delivered"],
}


def stage(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    """The instance's custom status (``{}`` before the first episode)."""
    found = client.get(f"instances/{instance_id}").json().get("customStatus")
    return found if isinstance(found, dict) else {}


def awaiting(client: httpx.Client, instance_id: str, attempt: int) -> str:
    """Wait until send ``attempt`` awaits its receipt; returns its message id."""

    def check() -> str | None:
        status = stage(client, instance_id)
        if status.get("stage") == "awaiting receipt" and status.get("attempt") == attempt:
            return str(status["message_id"])
        return None

    return wait_until(check, 30, f"{instance_id} to await receipt {attempt}")


def receipt(client: httpx.Client, message_id: str, status: str) -> int:
    """POST a signed receipt, as the provider's webhook would."""
    body = {"message_id": message_id, "status": status, "event_id": uuid.uuid4().hex}
    raw, headers = signed(body, SECRET)
    return client.post("webhooks/delivery", content=raw, headers=headers).status_code


def main() -> None:
    console = Console()
    state = Path(".durable_fx")
    state.mkdir(exist_ok=True)
    db = state / "email-demo.db"
    for old in state.glob("email-demo.db*"):
        old.unlink()
    started = time.monotonic()
    console.print(
        "[bold]Email pipeline demo[/]: receipt timeout shortened to "
        f"{SETTINGS['EMAIL_RECEIPT_TIMEOUT_SECONDS']} s (24 h in production), "
        f"resend back-off {SETTINGS['EMAIL_RESEND_BACKOFF_SECONDS']} s, "
        "so it ends well within a minute."
    )
    with LocalSmtp() as smtp:
        settings = {**SETTINGS, "SMTP_PORT": str(smtp.port)}
        app = AppProcess(f"sqlite:///{db}", settings, state / "email-demo.log").start()
        try:
            with app.client() as client:
                ids: dict[str, str] = {}
                for n, to in enumerate(CASES):
                    answer = client.post(
                        "emails",
                        json={
                            "from": "shop@example.com",
                            "to": [to],
                            "subject": f"Your order #{1000 + n}",
                            "text": "Thanks for your order.",
                            "html": "<p>Thanks for your order.</p>",
                            "idempotency_key": f"order-{1000 + n}",
                        },
                    )
                    answer.raise_for_status()
                    ids[to] = answer.json()["id"]
                console.print(f"POST /api/emails x{len(ids)}: started {', '.join(ids.values())}")
                again = client.post(
                    "emails",
                    json={"from": "shop@example.com", "to": ["ada@example.com"],
                          "subject": "Your order #1000", "text": "Thanks for your order.",
                          "idempotency_key": "order-1000"},
                )  # fmt: skip
                console.print(
                    f"the same idempotency key again: {again.status_code}, {again.json()['id']}"
                )
                for to, receipts in CASES.items():
                    for attempt, status in enumerate(receipts, start=1):
                        message_id = awaiting(client, ids[to], attempt)
                        code = receipt(client, message_id, status)
                        console.print(f"  receipt {status:<12} for {to:<20} -> webhook {code}")
                for to, instance_id in ids.items():
                    wait_until(
                        lambda i=instance_id: (
                            client.get(f"instances/{i}").status_code == 200 or None
                        ),
                        60,
                        f"{to} to finish",
                    )
        finally:
            app.stop()
        show(console, db, ids, smtp)
    console.print(f"done in {time.monotonic() - started:.0f} s; look around with:")
    console.print(f"  .venv/bin/durable-fx --store sqlite:///{db} list")


def show(console: Console, db: Path, ids: dict[str, str], smtp: LocalSmtp) -> None:
    """The outcomes table and one instance's history."""
    from email_pipeline.records import SqliteRecords

    outcomes = {o.instance_id: o for o in SqliteRecords(db).outcomes()}
    table = Table(title="Outcomes (email_outcomes table)")
    for column in ("email", "to", "outcome", "sends", "last receipt"):
        table.add_column(column)
    for to, instance_id in ids.items():
        o = outcomes[instance_id]
        key = instance_id.removeprefix("email-")
        table.add_row(key, to, o.status, str(o.sends), o.receipt_status or "-")
    console.print(table)
    for instance_id in ids.values():
        if outcomes[instance_id].status != "delivered":
            console.print(f"  {instance_id}: {outcomes[instance_id].detail}")
    received = [str(m["To"]) for m in smtp.messages]
    console.print(
        f"SMTP server received {len(received)} messages "
        f"({received.count('ops@example.com')} to operations)"
    )
    with DurableClient(open_store(f"sqlite:///{db}")) as client:
        state = client.get(ids["grace@example.com"], history=True)
        assert state is not None
        console.print(render_timeline(state, title="order-1001: soft bounce, then delivered"))


if __name__ == "__main__":
    main()
