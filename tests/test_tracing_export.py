"""Exported traces: the email app under ``durable-fx serve``, spans sent over OTLP/HTTP.

``OTEL_EXPORTER_OTLP_ENDPOINT`` is the one switch; the spans are decoded by
a real OTLP/HTTP receiver on loopback (``tests/support/otlp.py``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_fx.queues import encode_body, open_queues
from email_pipeline.localrun import AppProcess, signed
from email_pipeline.localsmtp import LocalSmtp
from tests.support.email_app import acs_report, awaiting, email, output, served_email_app
from tests.support.instances import wait_until
from tests.support.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver

pytestmark = pytest.mark.slow

SECRET = "trace-test-secret"
CALLER_TRACE = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest, receiver: OtlpReceiver) -> Iterator[AppProcess]:
    with LocalSmtp() as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "DELIVERY_WEBHOOK_SECRET": SECRET,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",  # export every 50 ms, not every 5 s
            "OTEL_SERVICE_NAME": "email-app",
        }
        with served_email_app(request, "traced-email-app", "sqlite", settings) as process:
            yield process


def only(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def test_an_email_is_one_trace_from_the_callers_request_to_the_recorded_outcome(
    app: AppProcess, receiver: OtlpReceiver
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    with app.client() as client:
        started = client.post(
            "emails", json=email("ada@example.com"), headers={"traceparent": traceparent}
        )
        assert started.status_code == 202, started.text
        instance_id = started.json()["id"]
        message_id = awaiting(client, instance_id)
        body = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}
        raw, headers = signed(body, SECRET)
        assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
        assert output(client, instance_id)["status"] == "delivered"

    run = only(receiver.wait_for("orchestration:email_delivery"))
    request = only(receiver.wait_for("POST emails"))
    create = only(receiver.wait_for("create_orchestration:email_delivery"))
    send = only(receiver.wait_for("activity:send_email"))
    record = only(receiver.wait_for("activity:record_outcome"))
    wait = only(receiver.wait_for("orchestration:email_delivery:event DeliveryReceipt"))
    webhook = only(receiver.wait_for("POST webhooks/delivery"))

    assert request.kind == "SPAN_KIND_SERVER" and request.service == "email-app"
    assert (request.trace_id, request.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert create.parent_span_id == request.span_id
    assert run.parent_span_id == create.span_id
    for child in (send, record, wait):
        assert (child.trace_id, child.parent_span_id) == (CALLER_TRACE, run.span_id), child.name
    assert run.attributes["durabletask.task.instance_id"] == instance_id
    assert run.attributes["durabletask.task.status"] == "COMPLETED"
    # The webhook is its own request (the provider has no trace of ours): the wait links to it.
    assert wait.links == [(webhook.trace_id, webhook.span_id)]
    assert run.start_ns <= send.start_ns <= send.end_ns <= wait.start_ns <= record.start_ns
    assert record.end_ns <= run.end_ns


def test_a_receipt_through_the_storage_queue_links_the_wait_to_its_message(
    app: AppProcess, receiver: OtlpReceiver
) -> None:
    with app.client() as client:
        started = client.post("emails", json=email("queue@example.com"))
        instance_id = started.json()["id"]
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

    [process] = receiver.wait_for("process email-delivery-events")
    assert process.kind == "SPAN_KIND_CONSUMER"
    assert process.attributes["messaging.destination.name"] == "email-delivery-events"
    [run] = [
        s
        for s in receiver.wait_for("orchestration:email_delivery", count=2)
        if s.attributes["durabletask.task.instance_id"] == instance_id
    ]
    [wait] = [
        s
        for s in receiver.named("orchestration:email_delivery:event DeliveryReceipt")
        if s.parent_span_id == run.span_id
    ]
    assert wait.links == [(process.trace_id, process.span_id)]


def test_a_malformed_traceparent_starts_a_new_trace(
    app: AppProcess, receiver: OtlpReceiver
) -> None:
    with app.client() as client:
        answer = client.get("instances/nobody", headers={"traceparent": "00-zz-not-a-trace-01"})
    assert answer.status_code == 404

    def nobody() -> list[ReceivedSpan]:
        spans = receiver.named("GET instances/{instanceId}")
        return [s for s in spans if str(s.attributes["url.path"]).endswith("/nobody")]

    [span] = wait_until(nobody, what="the span of the request for 'nobody'")
    assert span.parent_span_id == "" and span.trace_id != CALLER_TRACE
    assert span.attributes["http.response.status_code"] == 404


def test_without_the_setting_nothing_is_exported() -> None:
    """No endpoint, no SDK: configure_telemetry leaves the no-op API in place."""
    from durable_fx.telemetry import configure_telemetry

    assert configure_telemetry(environ={}) is None


def test_a_run_killed_midway_is_still_one_trace_with_one_span_for_its_life(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """SIGKILL while the email awaits its receipt; a new process finishes it on the same file."""
    caller_trace = uuid.uuid4().hex

    def of_this_run(name: str) -> list[ReceivedSpan]:
        return [s for s in receiver.named(name) if s.trace_id == caller_trace]

    with LocalSmtp() as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "DELIVERY_WEBHOOK_SECRET": SECRET,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "email-app",
        }
        app = AppProcess(f"sqlite:///{tmp_path / 'app.db'}", settings, tmp_path / "serve.log")
        app.start()
        try:
            with app.client() as client:
                started = client.post(
                    "emails",
                    json=email("grace@example.com"),
                    headers={"traceparent": f"00-{caller_trace}-{uuid.uuid4().hex[:16]}-01"},
                )
                instance_id = started.json()["id"]
                message_id = awaiting(client, instance_id)
            sent = lambda: of_this_run("activity:send_email") or None  # noqa: E731
            wait_until(sent, what="the send's span exported before the kill")
            app.kill()
            app.start()
            with app.client() as client:
                body = {"message_id": message_id, "status": "delivered", "event_id": "e-1"}
                raw, headers = signed(body, SECRET)
                answer = client.post("webhooks/delivery", content=raw, headers=headers)
                assert answer.status_code == 202
                assert output(client, instance_id)["status"] == "delivered"
        finally:
            app.stop()

    [run] = wait_until(lambda: of_this_run("orchestration:email_delivery") or None)
    [create] = of_this_run("create_orchestration:email_delivery")
    [send] = of_this_run("activity:send_email")  # in the first process
    [record] = wait_until(lambda: of_this_run("activity:record_outcome") or None)  # the second
    # The run's one span starts with the first process and ends in the second, where it closed.
    assert run.parent_span_id == create.span_id
    assert run.start_ns <= send.start_ns < send.end_ns <= record.start_ns <= run.end_ns
    assert send.parent_span_id == record.parent_span_id == run.span_id
    assert run.attributes["durabletask.task.status"] == "COMPLETED"
    spans = [s for s in receiver.spans if s.trace_id == caller_trace]
    assert len({s.span_id for s in spans}) == len(spans), "a span was exported twice"
    # Replays in the new process emitted nothing again: one span per wait, whatever replayed.
    assert len(of_this_run("orchestration:email_delivery:event DeliveryReceipt")) == 1
