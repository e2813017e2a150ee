"""Security review probes H1 and D42 (findings 3 and 11), over HTTP against ``durable-fx serve``.

H1: reposting a finished email's idempotency key restarted it and wiped its
history. D42: the management API's ``Idempotency-Key`` / ``?eventId=`` deduped
only while the first copy was pending. Both are answered by the store now (id
reuse refused by default; event keys remembered for the instance's life).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from email_pipeline.localrun import AppProcess, signed
from email_pipeline.localrun import wait_until as wait_for
from email_pipeline.localsmtp import LocalSmtp
from tests.support.instances import wait_until
from tests.support.serve import (
    HOST_JSON,
    Server,
    finished,
    new_id,
    server_env,
    start_order,
    start_server,
)

pytestmark = pytest.mark.slow

SECRET = "data-loss-secret"


# -- H1: a finished email's idempotency key -------------------------------------------------


@pytest.fixture(scope="module")
def email_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    workdir = tmp_path_factory.mktemp("data-loss-email")
    with LocalSmtp() as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "DELIVERY_WEBHOOK_SECRET": SECRET,
            "EMAIL_RECEIPT_TIMEOUT_SECONDS": "30",
        }
        process = AppProcess(f"sqlite:///{workdir / 'app.db'}", settings, workdir / "serve.log")
        process.start()
        yield process
        assert process.stop() == 0


def _with_history(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    answer = client.get(f"instances/{instance_id}", params={"showHistory": "true"})
    assert answer.status_code in (200, 202), answer.text
    state: dict[str, Any] = answer.json()
    return state


def _delivered_email(client: httpx.Client, key: str) -> str:
    """Send an email under idempotency key ``key`` and deliver its receipt; its instance id."""
    body = {"from": "shop@example.com", "to": ["ada@example.com"], "subject": "s", "text": "t"}
    first = client.post("emails", json={**body, "idempotency_key": key})
    assert first.status_code == 202, first.text
    instance_id: str = first.json()["id"]

    def message_id() -> str | None:
        status = _with_history(client, instance_id).get("customStatus") or {}
        return status.get("message_id") if status.get("stage") == "awaiting receipt" else None

    sent = wait_for(message_id, 30, f"{instance_id} to await its receipt")
    raw, headers = signed(
        {"message_id": sent, "status": "delivered", "event_id": uuid.uuid4().hex}, SECRET
    )
    assert client.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
    wait_for(
        lambda: _with_history(client, instance_id)["runtimeStatus"] == "Completed" or None,
        30,
        f"{instance_id} to complete",
    )
    return instance_id


def test_h1_a_finished_emails_idempotency_key_answers_200_and_keeps_it(
    email_app: AppProcess,
) -> None:
    with email_app.client() as client:
        key = "c-done-" + uuid.uuid4().hex[:8]
        instance_id = _delivered_email(client, key)
        before = _with_history(client, instance_id)
        body = {"from": "shop@example.com", "to": ["ada@example.com"], "subject": "s"}
        again = client.post("emails", json={**body, "text": "t", "idempotency_key": key})
        assert again.status_code == 200, again.text
        assert again.json()["id"] == instance_id
        after = _with_history(client, instance_id)
        assert after["runtimeStatus"] == "Completed"
        assert after["createdTime"] == before["createdTime"]
        assert after["historyEvents"] == before["historyEvents"]


# -- D42: raiseEvent dedupe for the instance's life -----------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("data-loss-serve")
    (workdir / "host.json").write_text(json.dumps(HOST_JSON))
    url = f"sqlite:///{workdir / 'app.db'}"
    running = start_server(workdir, "serve_app:app", server_env(), ["--store", url])
    yield running
    assert running.stop() == 0, running.logs()


def _foo_events(client: httpx.Client, instance_id: str) -> list[Any]:
    history = _with_history(client, instance_id).get("historyEvents", [])
    return [e["input"] for e in history if e["kind"] == "EventRaised" and e["name"] == "Foo"]


def _consumed(client: httpx.Client, instance_id: str, name: str, count: int) -> None:
    def seen() -> bool:
        history = _with_history(client, instance_id).get("historyEvents", [])
        return [e["name"] for e in history if e["kind"] == "EventRaised"].count(name) >= count

    wait_until(seen)


def test_d42_raise_event_dedupes_after_the_first_copy_was_consumed(server: Server) -> None:
    order_id = new_id()
    with server.client() as client:
        start_order(client, order_id)
        raise_foo = f"instances/{order_id}/raiseEvent/Foo"
        by_header = {"Idempotency-Key": "same-key"}
        assert client.post(raise_foo, json={"n": 1}, headers=by_header).status_code == 202
        _consumed(client, order_id, "Foo", 1)
        repeat = client.post(raise_foo, json={"n": 2}, headers=by_header)
        assert repeat.status_code in (200, 202), repeat.text
        by_query = {"eventId": "same-id"}
        assert client.post(raise_foo, json={"m": 1}, params=by_query).status_code == 202
        _consumed(client, order_id, "Foo", 2)
        repeat = client.post(raise_foo, json={"m": 2}, params=by_query)
        assert repeat.status_code in (200, 202), repeat.text
        # A marker raised last is handled after anything raised before it.
        marker = client.post(f"instances/{order_id}/raiseEvent/Marker", json=None)
        assert marker.status_code == 202
        _consumed(client, order_id, "Marker", 1)
        assert _foo_events(client, order_id) == ['{"n":1}', '{"m":1}']


def test_a_finished_instance_keeps_its_history_when_started_again(server: Server) -> None:
    order_id = new_id()
    with server.client() as client:
        start_order(client, order_id)
        shipped = {"order_id": order_id, "carrier": "last"}
        raised = client.post(f"instances/{order_id}/raiseEvent/Shipped", json=shipped)
        assert raised.status_code == 202, raised.text
        finished(client, order_id)
        before = _with_history(client, order_id)
        order = {"order_id": order_id, "quantity": 2}
        again = client.post(f"orchestrators/fulfil/{order_id}", json=order)
        assert again.status_code == 409, again.text
        assert "already exists and is COMPLETED" in again.json()["error"], again.text
        assert _with_history(client, order_id) == before
