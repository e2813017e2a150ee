"""The email pipeline's parts: models, providers (real local SMTP, ACS with a fake client),
Event Grid receipts, and the sent-ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from pydantic import ValidationError

from email_pipeline.eventgrid import EMAIL_DELIVERY_REPORT, EventGridEvent, receipt_from_event
from email_pipeline.localsmtp import LocalSmtp, free_port
from email_pipeline.models import EmailRequest, SendResult
from email_pipeline.providers import (
    PermanentProviderError,
    TransientProviderError,
    open_provider,
)
from email_pipeline.providers.acs import AcsProvider, operation_id_for
from email_pipeline.providers.smtp import SmtpProvider
from email_pipeline.records import MemoryRecords, SqliteRecords
from email_pipeline.settings import policy_from_environment
from tests.support.azurite import Azurite, new_hub
from tests.support.tls import self_signed


def request(**changes: Any) -> EmailRequest:
    fields: dict[str, Any] = {
        "from": "shop@example.com",
        "to": ["ada@example.com"],
        "cc": ["grace@example.com"],
        "subject": "Your order",
        "text": "Thanks.",
        "html": "<p>Thanks.</p>",
    }
    return EmailRequest.model_validate({**fields, **changes})


def test_a_request_needs_a_body_and_valid_addresses() -> None:
    with pytest.raises(ValidationError, match="text or an html body"):
        request(text=None, html=None)
    with pytest.raises(ValidationError, match="to"):
        request(to=["not an address"])
    with pytest.raises(ValidationError, match="to"):
        request(to=[])
    assert request(html=None).text == "Thanks."


def test_the_policy_comes_from_settings() -> None:
    policy = policy_from_environment({"EMAIL_RECEIPT_TIMEOUT_SECONDS": "6", "EMAIL_MAX_SENDS": "2"})
    assert (policy.receipt_timeout_seconds, policy.max_sends) == (6, 2)
    assert policy_from_environment({}).receipt_timeout_seconds == 24 * 3600
    with pytest.raises(ValidationError):
        policy_from_environment({"EMAIL_MAX_SENDS": "0"})


def test_smtp_sends_a_multipart_message_with_a_deterministic_message_id() -> None:
    with LocalSmtp() as smtp:
        provider = SmtpProvider(host="127.0.0.1", port=smtp.port)
        first = provider.send(request(), "email-1.1")
        again = provider.send(request(), "email-1.1")
        other = provider.send(request(), "email-1.2")
        messages = smtp.messages
    assert first.message_id == again.message_id != other.message_id
    message = messages[0]
    assert message["Message-ID"] == first.message_id
    assert (message["From"], message["To"], message["Cc"]) == (
        "shop@example.com",
        "ada@example.com",
        "grace@example.com",
    )
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.walk()]
    assert kinds == ["multipart/alternative", "text/plain", "text/html"]


def test_smtp_errors_are_transient_or_permanent_by_their_code() -> None:
    with LocalSmtp() as smtp:
        smtp.refuse("gone@example.com", "550 5.1.1 no such user")
        smtp.refuse("busy@example.com", "451 4.3.0 try again later")
        provider = SmtpProvider(host="127.0.0.1", port=smtp.port)
        with pytest.raises(PermanentProviderError, match="550"):
            provider.send(request(to=["gone@example.com"], cc=[]), "k1")
        with pytest.raises(TransientProviderError, match="451"):
            provider.send(request(to=["busy@example.com"], cc=[]), "k2")
        assert smtp.messages == []
    with pytest.raises(TransientProviderError, match="SMTP"):
        SmtpProvider(host="127.0.0.1", port=free_port(), timeout=2).send(request(), "k3")


def test_settings_choose_the_provider() -> None:
    smtp = open_provider({"SMTP_HOST": "mail", "SMTP_PORT": "587", "SMTP_SECURITY": "starttls"})
    assert isinstance(smtp, SmtpProvider)
    assert (smtp.host, smtp.port, smtp.security) == ("mail", 587, "starttls")
    acs = open_provider({"EMAIL_PROVIDER": "acs", "ACS_EMAIL_CONNECTION_STRING": "endpoint=x"})
    assert isinstance(acs, AcsProvider)
    with pytest.raises(ValueError, match="ACS_EMAIL_CONNECTION_STRING"):
        open_provider({"EMAIL_PROVIDER": "acs"})
    with pytest.raises(ValueError, match="EMAIL_PROVIDER"):
        open_provider({"EMAIL_PROVIDER": "carrier-pigeon"})
    with pytest.raises(ValueError, match="SMTP_SECURITY"):
        open_provider({"SMTP_SECURITY": "maybe"})


class FakeEmailClient:
    """Stands in for ``azure.communication.email.EmailClient``: records sends."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[tuple[dict[str, Any], str]] = []
        self.fail = fail

    def begin_send(self, message: dict[str, Any], *, operation_id: str) -> Any:
        if self.fail is not None:
            raise self.fail
        self.sent.append((message, operation_id))
        client = self

        class Poller:
            def result(self) -> dict[str, Any]:
                return {"id": client.sent[-1][1], "status": "Succeeded"}

        return Poller()


def test_acs_sends_with_an_operation_id_from_the_idempotency_key() -> None:
    fake = FakeEmailClient()
    provider = AcsProvider("endpoint=https://x/;accesskey=k", client_factory=lambda _: fake)
    result = provider.send(request(), "email-9.1")
    assert result.message_id == operation_id_for("email-9.1") == fake.sent[0][1]
    assert provider.send(request(), "email-9.1").message_id == result.message_id
    message = fake.sent[0][0]
    assert message["senderAddress"] == "shop@example.com"
    assert message["recipients"]["to"] == [{"address": "ada@example.com"}]
    assert message["recipients"]["cc"] == [{"address": "grace@example.com"}]
    assert message["content"] == {
        "subject": "Your order",
        "plainText": "Thanks.",
        "html": "<p>Thanks.</p>",
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [(429, TransientProviderError), (503, TransientProviderError), (400, PermanentProviderError)],
)
def test_acs_errors_are_transient_or_permanent(status: int, expected: type[Exception]) -> None:
    error = HttpResponseError(message="nope")
    error.status_code = status
    fake = FakeEmailClient(fail=error)
    with pytest.raises(expected, match=str(status)):
        AcsProvider("endpoint=x", client_factory=lambda _: fake).send(request(), "k")


def test_acs_unreachable_is_transient() -> None:
    from azure.core.exceptions import ServiceRequestError

    fake = FakeEmailClient(fail=ServiceRequestError("connection refused"))
    with pytest.raises(TransientProviderError, match="unreachable"):
        AcsProvider("endpoint=x", client_factory=lambda _: fake).send(request(), "k")


def acs_event(status: str, event_type: str = EMAIL_DELIVERY_REPORT) -> EventGridEvent:
    return EventGridEvent.model_validate(
        {
            "id": "evt-1",
            "eventType": event_type,
            "subject": "sender/x/message/m-1",
            "eventTime": "2026-01-01T00:00:00Z",
            "data": {
                "sender": "shop@example.com",
                "recipient": "ada@example.com",
                "messageId": "m-1",
                "status": status,
                "deliveryStatusDetails": {"statusMessage": "the detail"},
                "deliveryAttemptTimestamp": "2026-01-01T00:00:01Z",
            },
        }
    )


@pytest.mark.parametrize(
    ("acs_status", "ours"),
    [
        ("Delivered", "delivered"),
        ("Bounced", "bounced_hard"),
        ("Suppressed", "suppressed"),
        ("Failed", "failed"),
        ("Quarantined", "failed"),
        ("FilteredSpam", "failed"),
    ],
)
def test_acs_delivery_reports_become_receipts(acs_status: str, ours: str) -> None:
    receipt = receipt_from_event(acs_event(acs_status))
    assert receipt is not None
    assert (receipt.message_id, receipt.status, receipt.event_id) == ("m-1", ours, "evt-1")
    assert receipt.detail == "the detail"


def test_other_events_and_statuses_are_ignored() -> None:
    assert receipt_from_event(acs_event("Expanded")) is None
    assert receipt_from_event(acs_event("Delivered", "Microsoft.Storage.BlobCreated")) is None


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_the_sent_ledger_keeps_the_first_result(kind: str, tmp_path: Path) -> None:
    records = SqliteRecords(tmp_path / "x.db") if kind == "sqlite" else MemoryRecords()
    first = SendResult(message_id="<a@x>", provider="smtp", idempotency_key="i.1")
    second = SendResult(message_id="<b@x>", provider="smtp", idempotency_key="i.1")
    assert records.sent("i.1") is None
    assert records.record_sent("i.1", first, "i") == first
    assert records.record_sent("i.1", second, "i") == first
    assert records.sent("i.1") == first
    assert records.instance_for("<a@x>") == "i"
    assert records.instance_for("<b@x>") is None


def test_smtp_starttls_and_login(tmp_path: Path) -> None:
    import ssl

    cert_file, key_file = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    with LocalSmtp(tls_context=context, users={"mailer": "s3cret"}) as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_SECURITY": "starttls",
            "SMTP_USERNAME": "mailer",
            "SMTP_PASSWORD": "s3cret",
            "SMTP_CA_FILE": str(cert_file),
        }
        sent = open_provider(settings).send(request(), "tls.1")
        with pytest.raises(PermanentProviderError, match="login refused"):
            open_provider({**settings, "SMTP_PASSWORD": "wrong"}).send(request(), "tls.2")
        with pytest.raises(PermanentProviderError, match="SMTP_SECURITY"):
            open_provider({**settings, "SMTP_SECURITY": "none"}).send(request(), "tls.3")
        with pytest.raises(TransientProviderError, match="CERTIFICATE_VERIFY_FAILED"):
            open_provider({**settings, "SMTP_CA_FILE": ""}).send(request(), "tls.4")
        anonymous = {k: v for k, v in settings.items() if not k.startswith("SMTP_USER")}
        with pytest.raises(PermanentProviderError, match="530"):
            open_provider(anonymous).send(request(), "tls.5")
        assert [m["Message-ID"] for m in smtp.messages] == [sent.message_id]


@pytest.mark.azurite
def test_the_azure_tables_keep_the_first_send_and_the_outcomes(azurite: Azurite) -> None:
    from durable_fx import open_store
    from email_pipeline.models import DeliveryOutcome
    from email_pipeline.records import AzureRecords, open_records

    hub = new_hub()
    store = open_store(azurite.connection_string(hub))
    try:
        records = open_records(store, hub)
        assert isinstance(records, AzureRecords)
        first = SendResult(message_id="<a@x>", provider="smtp", idempotency_key="i/1")
        second = SendResult(message_id="<b@x>", provider="smtp", idempotency_key="i/1")
        assert records.sent("i/1") is None
        assert records.record_sent("i/1", first, "inst") == first
        assert records.record_sent("i/1", second, "inst") == first
        assert records.instance_for("<a@x>") == "inst"
        assert records.instance_for("<b@x>") is None
        outcome = DeliveryOutcome(instance_id="inst", status="delivered", sends=1)
        records.record_outcome(outcome)
        records.record_outcome(outcome.model_copy(update={"sends": 2}))
        assert [o.sends for o in records.outcomes()] == [2]
    finally:
        import asyncio

        asyncio.run(store.close())
