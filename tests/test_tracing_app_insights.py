"""Application Insights: ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is the one switch.

The email app runs under ``durable-fx serve`` with a connection string whose
``IngestionEndpoint`` is a receiver on loopback (``tests/support/app_insights.py``):
what the Azure Monitor distro sends is what Application Insights would store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from email_pipeline.localrun import AppProcess, signed
from email_pipeline.localsmtp import LocalSmtp
from tests.support.app_insights import AppInsightsReceiver, Envelope, app_insights_receiver
from tests.support.email_app import awaiting, email, output, served_email_app

pytestmark = pytest.mark.slow

SECRET = "insights-test-secret"
CALLER_TRACE = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def receiver() -> Iterator[AppInsightsReceiver]:
    with app_insights_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def app(request: pytest.FixtureRequest, receiver: AppInsightsReceiver) -> Iterator[AppProcess]:
    with LocalSmtp() as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "DELIVERY_WEBHOOK_SECRET": SECRET,
            "APPLICATIONINSIGHTS_CONNECTION_STRING": receiver.connection_string,
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_BLRP_SCHEDULE_DELAY": "50",
            "OTEL_SERVICE_NAME": "email-app",
        }
        with served_email_app(request, "insights-email-app", "sqlite", settings) as process:
            yield process


def named(name: str, base_type: str) -> object:
    def test(envelope: Envelope) -> bool:
        return envelope.name == name and envelope.base_type == base_type

    return test


def test_an_email_appears_as_one_operation_of_requests_and_dependencies(
    app: AppProcess, receiver: AppInsightsReceiver
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    with app.client() as client:
        started = client.post(
            "emails", json=email("ada@example.com"), headers={"traceparent": traceparent}
        )
        assert started.status_code == 202, started.text
        instance_id = started.json()["id"]
        message_id = awaiting(client, instance_id)
        # A receipt for another send: the orchestration logs that it skips it (ctx.logger).
        stale = {"message_id": "an-earlier-send", "status": "delivered", "event_id": "e-stale"}
        raised = client.post(f"instances/{instance_id}/raiseEvent/DeliveryReceipt", json=stale)
        assert raised.status_code == 202, raised.text
        body = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}
        raw, headers = signed(body, SECRET)
        assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
        assert output(client, instance_id)["status"] == "delivered"

    def one(name: str, base_type: str) -> Envelope:
        [found] = receiver.wait_for(named(name, base_type), f"{base_type} {name}")  # type: ignore[arg-type]
        return found

    http = one("POST emails", "RequestData")
    create = one("create_orchestration:email_delivery", "RemoteDependencyData")
    run = one("orchestration:email_delivery", "RequestData")
    send = one("activity:send_email", "RequestData")
    record = one("activity:record_outcome", "RequestData")
    for envelope in (http, create, run, send, record):
        # One operation: the caller's trace id, shown under the service's cloud role.
        assert envelope.tags["ai.operation.id"] == CALLER_TRACE, envelope.name
        assert envelope.tags["ai.cloud.role"] == "email-app", envelope.name
        assert envelope.instrumentation_key == receiver.instrumentation_key
    assert http.tags["ai.operation.parentId"] == CALLER_SPAN
    assert create.data["type"] == "Queue Message"
    assert create.tags["ai.operation.parentId"] == http.data["id"]
    assert run.tags["ai.operation.parentId"] == create.data["id"]
    assert send.tags["ai.operation.parentId"] == run.data["id"]
    assert run.data["success"] is True and run.properties["durabletask.task.instance_id"] == (
        instance_id
    )

    # The orchestration's log line: in the operation, with the run's ids.
    [log] = receiver.wait_for(
        lambda e: e.base_type == "MessageData" and "an-earlier-send" in e.data["message"],
        "the orchestration's log line",
    )
    assert log.properties["instance_id"] == instance_id
    assert log.properties["orchestration"] == "email_delivery"
    assert log.tags["ai.operation.id"] == CALLER_TRACE
    assert log.data["severityLevel"] == 1  # Information


MISSING_DISTRO = """
import logging, sys
sys.modules["azure.monitor.opentelemetry"] = None  # as if the otel extra were not installed
logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
from durable_fx import DurableApp
from durable_fx.telemetry import configure_telemetry
app = DurableApp(store="memory://")  # under the Functions host: the app still indexes
print(len(app.get_functions()), "functions")
configure_telemetry()  # under serve: the error is the answer
"""


def test_a_missing_distro_is_named_and_the_key_is_not(tmp_path: Path) -> None:
    key = str(uuid.uuid4())
    env = {**os.environ, "APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={key}"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # this checkout's durable_fx
    done = subprocess.run(
        [sys.executable, "-c", MISSING_DISTRO],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode != 0 and "functions" in done.stdout
    for said in (done.stderr.splitlines()[0], done.stderr.splitlines()[-1]):
        assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in said and "durable-fx[otel]" in said
    assert key not in done.stderr
