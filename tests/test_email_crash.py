"""The email pipeline's promise: a host killed at any point sends each email exactly once.

Each test runs ``durable-fx serve function_app:app`` on SQLite in a child
process, with a real SMTP server (aiosmtpd) in the test process that survives
the kill, SIGKILLs the host, starts it again on the same file, and counts what
the SMTP server received.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from email_pipeline.localrun import AppProcess, signed, wait_until
from email_pipeline.localsmtp import LocalSmtp

pytestmark = pytest.mark.slow

SECRET = "crash-test-secret"
EMAILS = 20


@pytest.fixture
def smtp() -> Iterator[LocalSmtp]:
    # Slow enough that a kill lands while sends are in flight.
    with LocalSmtp(delay=1.0) as server:
        yield server


def host(tmp_path: Path, smtp: LocalSmtp) -> AppProcess:
    settings = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "DELIVERY_WEBHOOK_SECRET": SECRET,
        "EMAIL_SEND_RETRY_SECONDS": "1",
        "EMAIL_RECEIPT_TIMEOUT_SECONDS": "600",
    }
    return AppProcess(f"sqlite:///{tmp_path / 'app.db'}", settings, tmp_path / "serve.log")


def post_email(client: httpx.Client, n: int) -> str:
    answer = client.post(
        "emails",
        json={
            "from": "shop@example.com",
            "to": [f"customer{n}@example.com"],
            "subject": f"order {n}",
            "text": "thanks",
            "idempotency_key": f"order-{n}",
        },
    )
    assert answer.status_code == 202, answer.text
    instance_id: str = answer.json()["id"]
    return instance_id


def awaiting_receipt(client: httpx.Client, instance_id: str) -> str | None:
    status = client.get(f"instances/{instance_id}").json().get("customStatus") or {}
    found = status.get("message_id") if status.get("stage") == "awaiting receipt" else None
    return str(found) if found else None


def all_awaiting(client: httpx.Client, ids: list[str], timeout: float = 90) -> dict[str, str]:
    found: dict[str, str] = {}

    def check() -> dict[str, str] | None:
        for instance_id in ids:
            if instance_id not in found:
                message_id = awaiting_receipt(client, instance_id)
                if message_id:
                    found[instance_id] = message_id
        return found if len(found) == len(ids) else None

    return wait_until(check, timeout, "every email to await its receipt")


def deliver_all(client: httpx.Client, message_ids: dict[str, str]) -> list[dict[str, Any]]:
    for message_id in message_ids.values():
        body = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}
        raw, headers = signed(body, SECRET)
        answer = client.post("webhooks/delivery", content=raw, headers=headers)
        assert answer.status_code == 202, answer.text
    outputs = []
    for instance_id in message_ids:

        def finished(i: str = instance_id) -> Any:
            r = client.get(f"instances/{i}")
            return (r.status_code == 200 and r.json()) or None

        state = wait_until(
            finished,
            60,
            f"{instance_id} to finish",
        )
        assert state["runtimeStatus"] == "Completed", state
        outputs.append(state["output"])
    return outputs


def assert_one_message_each(smtp: LocalSmtp, message_ids: dict[str, str]) -> None:
    received = Counter(str(m["To"]) for m in smtp.messages)
    assert received == Counter(f"customer{n}@example.com" for n in range(EMAILS))
    assert sorted(str(m["Message-ID"]) for m in smtp.messages) == sorted(message_ids.values())


def test_a_host_killed_while_emails_await_receipts_sends_none_again(
    tmp_path: Path, smtp: LocalSmtp
) -> None:
    app = host(tmp_path, smtp).start()
    try:
        with app.client() as client:
            ids = [post_email(client, n) for n in range(EMAILS)]
            message_ids = all_awaiting(client, ids)
        app.kill()
        app.start()
        with app.client() as client:
            outputs = deliver_all(client, message_ids)
    finally:
        app.stop()
    assert {o["status"] for o in outputs} == {"delivered"}
    assert {o["sends"] for o in outputs} == {1}
    assert_one_message_each(smtp, message_ids)


def test_a_host_killed_while_sending_sends_each_email_exactly_once(
    tmp_path: Path, smtp: LocalSmtp
) -> None:
    app = host(tmp_path, smtp).start()
    try:
        with app.client() as client:
            # Five sent and recorded before the crash, the rest torn mid-send.
            early = [post_email(client, n) for n in range(5)]
            all_awaiting(client, early)
            ids = early + [post_email(client, n) for n in range(5, EMAILS)]
            wait_until(lambda: smtp.started >= 8 or None, 30, "sends to be in flight")
        app.kill()
        kept_at_kill = len(smtp.messages)
        time.sleep(1)  # the torn sends' handlers are cancelled, nothing more arrives
        assert len(smtp.messages) == kept_at_kill
        app.start()
        with app.client() as client:
            message_ids = all_awaiting(client, ids)
            outputs = deliver_all(client, message_ids)
    finally:
        app.stop()
    assert smtp.started > EMAILS  # some sends really were torn and made again
    assert {o["status"] for o in outputs} == {"delivered"}
    assert_one_message_each(smtp, message_ids)
