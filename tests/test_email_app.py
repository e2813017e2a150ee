"""The email app end to end: ``durable-fx serve function_app:app`` on SQLite, a real
SMTP server, and receipts through the signed webhook, Event Grid and the queue.

Timeouts are shortened through settings (receipt wait 4 s, back-offs 0.5-1 s).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from durable_fx import open_store
from durable_fx.bindings import FunctionsSettings
from durable_fx.queues import encode_body, open_queues
from email_pipeline.localrun import AppProcess, signed
from email_pipeline.localsmtp import LocalSmtp
from email_pipeline.models import DeliveryOutcome
from email_pipeline.records import open_records
from tests.support.email_app import acs_report, awaiting, email, output, served_email_app

pytestmark = pytest.mark.slow

SECRET = "app-test-secret"


@pytest.fixture(scope="module", params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def smtp(store_kind: str) -> Iterator[LocalSmtp]:
    # One server per store kind: the tests count messages per address.
    with LocalSmtp() as server:
        yield server


@pytest.fixture(scope="module")
def app(
    request: pytest.FixtureRequest,
    smtp: LocalSmtp,
    store_kind: str,
) -> Iterator[AppProcess]:
    settings = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "DELIVERY_WEBHOOK_SECRET": SECRET,
        "EMAIL_RECEIPT_TIMEOUT_SECONDS": "4",
        "EMAIL_RESEND_BACKOFF_SECONDS": "0.5",
        "EMAIL_SEND_RETRY_SECONDS": "0.5",
        "EMAIL_MAX_SENDS": "2",
        "EMAIL_OPERATIONS_ADDRESS": "ops@example.com",
    }
    with served_email_app(request, f"email-app-{store_kind}", store_kind, settings) as process:
        yield process


@pytest.fixture
def client(app: AppProcess) -> Iterator[httpx.Client]:
    with app.client() as http:
        yield http


def start(client: httpx.Client, to: str, **changes: Any) -> str:
    answer = client.post("emails", json=email(to, **changes))
    assert answer.status_code == 202, answer.text
    instance_id: str = answer.json()["id"]
    return instance_id


def receipt(client: httpx.Client, message_id: str, status: str) -> httpx.Response:
    body = {"message_id": message_id, "status": status, "event_id": uuid.uuid4().hex}
    raw, headers = signed(body, SECRET)
    return client.post("webhooks/delivery", content=raw, headers=headers)


def to_addresses(smtp: LocalSmtp, address: str) -> list[str]:
    return [str(m["Message-ID"]) for m in smtp.messages if m["To"] == address]


def test_a_delivered_email_is_recorded(
    client: httpx.Client, smtp: LocalSmtp, app: AppProcess
) -> None:
    instance_id = start(client, "ada@example.com", cc=["cc@example.com"], html="<b>t</b>")
    message_id = awaiting(client, instance_id)
    assert receipt(client, message_id, "delivered").status_code == 202
    result = output(client, instance_id)
    assert result["status"] == "delivered"
    assert result["sends"] == 1
    assert result["message_id"] == message_id
    assert to_addresses(smtp, "ada@example.com") == [message_id]
    assert recorded_outcomes(app)[instance_id].status == "delivered"


def recorded_outcomes(app: AppProcess) -> dict[str, DeliveryOutcome]:
    """The outcomes table, read as the app reads it (next to its store)."""
    store = open_store(app.store_url)
    hub = FunctionsSettings.from_environment({}, store_url=app.store_url).hub
    try:
        return {o.instance_id: o for o in open_records(store, hub).outcomes()}
    finally:
        asyncio.run(store.close())


def test_an_invalid_request_is_400_naming_the_field(client: httpx.Client) -> None:
    answer = client.post("emails", json={"from": "x@example.com", "to": ["nope"], "text": "t"})
    assert answer.status_code == 400
    fields = {f["field"] for f in answer.json()["fields"]}
    assert {"to.0", "subject"} <= fields
    assert client.post("emails", content=b"{not json").status_code == 400
    bad_key = client.post("emails", json=email("k@example.com", idempotency_key="a/b"))
    assert bad_key.status_code == 400
    assert bad_key.json()["fields"][0]["field"] == "idempotency_key"


def test_a_repeated_idempotency_key_answers_with_the_same_instance(
    client: httpx.Client, smtp: LocalSmtp
) -> None:
    key = uuid.uuid4().hex
    first = client.post("emails", json=email("once@example.com", idempotency_key=key))
    again = client.post("emails", json=email("once@example.com", idempotency_key=key))
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] == f"email-{key}"
    message_id = awaiting(client, f"email-{key}")
    receipt(client, message_id, "delivered")
    output(client, f"email-{key}")
    assert len(to_addresses(smtp, "once@example.com")) == 1


def test_a_soft_bounce_is_sent_again_with_a_new_message_id(
    client: httpx.Client, smtp: LocalSmtp
) -> None:
    instance_id = start(client, "soft@example.com")
    first = awaiting(client, instance_id, 1)
    receipt(client, first, "bounced_soft")
    second = awaiting(client, instance_id, 2)
    assert receipt(client, first, "delivered").status_code == 202  # a late one: skipped
    receipt(client, second, "delivered")
    result = output(client, instance_id)
    assert (result["status"], result["sends"], result["message_id"]) == ("delivered", 2, second)
    assert to_addresses(smtp, "soft@example.com") == [first, second]


def test_soft_bounces_give_up_after_max_sends(client: httpx.Client) -> None:
    instance_id = start(client, "full@example.com")
    receipt(client, awaiting(client, instance_id, 1), "deferred")
    receipt(client, awaiting(client, instance_id, 2), "bounced_soft")
    result = output(client, instance_id)
    assert (result["status"], result["sends"], result["receipt_status"]) == (
        "failed",
        2,
        "bounced_soft",
    )


@pytest.mark.parametrize("status", ["bounced_hard", "suppressed"])
def test_a_hard_bounce_or_suppression_fails_without_resending(
    client: httpx.Client, smtp: LocalSmtp, status: str
) -> None:
    address = f"{status}@example.com"
    instance_id = start(client, address)
    receipt(client, awaiting(client, instance_id), status)
    result = output(client, instance_id)
    assert (result["status"], result["receipt_status"], result["sends"]) == ("failed", status, 1)
    assert len(to_addresses(smtp, address)) == 1


def test_no_receipt_in_time_escalates_to_operations(client: httpx.Client, smtp: LocalSmtp) -> None:
    instance_id = start(client, "silent@example.com", subject="quiet one")
    awaiting(client, instance_id)
    result = output(client, instance_id)
    assert result["status"] == "escalated"
    assert "no delivery receipt within 4 s" in result["detail"]
    notices = [m for m in smtp.messages if instance_id in str(m["Subject"])]
    assert len(notices) == 1
    assert notices[0]["To"] == "ops@example.com"


def test_a_transient_smtp_error_is_retried(client: httpx.Client, smtp: LocalSmtp) -> None:
    smtp.refuse("flaky@example.com", "451 4.3.0 try later", times=2)
    instance_id = start(client, "flaky@example.com")
    receipt(client, awaiting(client, instance_id), "delivered")
    assert output(client, instance_id)["status"] == "delivered"
    assert len(to_addresses(smtp, "flaky@example.com")) == 1


def test_a_permanent_smtp_error_fails_fast(client: httpx.Client) -> None:
    instance_id = start(client, "rejected@example.com")
    result = output(client, instance_id)
    assert result["status"] == "failed"
    assert result["sends"] == 1
    assert "550" in result["detail"]


@pytest.fixture(scope="module", autouse=True)
def _refusals(smtp: LocalSmtp) -> None:
    smtp.refuse("rejected@example.com", "550 5.1.1 no such user")


def test_a_bad_signature_is_refused_and_raises_nothing(client: httpx.Client) -> None:
    raw, headers = signed({"message_id": "m", "status": "delivered", "event_id": "e"}, "wrong")
    assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 401


def test_a_replayed_receipt_is_a_duplicate(client: httpx.Client) -> None:
    instance_id = start(client, "twice@example.com")
    message_id = awaiting(client, instance_id)
    body = {"message_id": message_id, "status": "delivered", "event_id": "same-event"}
    raw, headers = signed(body, SECRET)
    assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
    assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 200
    assert output(client, instance_id)["status"] == "delivered"


def test_event_grid_handshake_and_delivery_reports(client: httpx.Client) -> None:
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "code-123"},
        }
    ]
    answer = client.post(
        "webhooks/delivery/eventgrid",
        json=validation,
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert answer.status_code == 200
    assert answer.json() == {"validationResponse": "code-123"}
    instance_id = start(client, "grid@example.com")
    message_id = awaiting(client, instance_id)
    expanded, bounced = acs_report(message_id, "Expanded"), acs_report(message_id, "Bounced")
    answer = client.post(
        "webhooks/delivery/eventgrid",
        json=[expanded, bounced],
        headers={"aeg-event-type": "Notification"},
    )
    assert answer.status_code == 202
    assert answer.json() == {
        "raised": 1,
        "duplicates": 0,
        "ignored": 1,
        "items": [
            {"index": 0, "outcome": "ignored", "id": expanded["id"]},
            {"index": 1, "outcome": "raised", "id": bounced["id"]},
        ],
    }
    result = output(client, instance_id)
    assert (result["status"], result["receipt_status"]) == ("failed", "bounced_hard")


def test_reports_through_the_storage_queue(client: httpx.Client, app: AppProcess) -> None:
    instance_id = start(client, "queued@example.com")
    message_id = awaiting(client, instance_id)

    async def put() -> None:
        queues = open_queues(app.store_url)
        try:
            body = json.dumps(acs_report(message_id, "Delivered"))
            await queues.send("email-delivery-events", encode_body(body))
        finally:
            await queues.close()

    asyncio.run(put())
    assert output(client, instance_id)["status"] == "delivered"


def test_a_receipt_for_an_unknown_message_is_404_so_that_it_is_retried(
    client: httpx.Client,
) -> None:
    answer = receipt(client, "<unknown@nowhere>", "delivered")
    assert answer.status_code == 404
    assert "retry later" in answer.text
