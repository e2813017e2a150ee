"""Event sources under attack and under load, over HTTP against ``durable-fx serve``.

Probes from ``../shared/reviews/security.md`` (their ids in the test names):
Event Grid batches that mix good and bad events (C10-C12), concurrent and
replayed signed webhooks (B17, B19, B20), ids from unsigned inputs (B22),
``X-Timestamp: nan`` (B5/V1), composed handshakes (K1-K3), management
``raiseEvent`` checks (D41-D44) and a held SQLite write lock (E1, E2).

Two servers: ``tests/apps/events_app.py`` (signed webhooks, a declared event)
and the repository's email app with a local SMTP server, both on SQLite.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from durable_fx import AsyncDurableClient, DurableApp
from durable_fx.bindings import hmac_sha256
from durable_fx.queues import decode_body, open_queues
from email_pipeline.localrun import AppProcess, signed
from email_pipeline.localsmtp import LocalSmtp
from tests.support.email_app import acs_report, awaiting, email, output, served_email_app
from tests.support.instances import wait_until
from tests.support.serve import HOST_JSON, Server, server_env, start_server
from tests.support.sqlite_lock import write_locked

pytestmark = pytest.mark.slow

HOOK_SECRET = "hook-secret"
RECEIPT_SECRET = "receipt-secret"


# -- the events app ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("events-app")
    (workdir / "host.json").write_text(json.dumps(HOST_JSON))
    url = f"sqlite:///{workdir / 'app.db'}"
    env = server_env(HOOK_SECRET=HOOK_SECRET)
    running = start_server(workdir, "events_app:app", env, ["--store", url])
    running.store_url = url
    yield running
    assert running.stop() == 0, running.logs()


def collecting(client: httpx.Client) -> str:
    """A new ``collect`` instance, started and waiting for Ping events."""
    instance_id = "c-" + uuid.uuid4().hex[:10]
    assert client.post(f"orchestrators/collect/{instance_id}").status_code == 202
    wait_until(lambda: client.get(f"instances/{instance_id}").json()["runtimeStatus"] == "Running")
    return instance_id


def pings(client: httpx.Client, instance_id: str) -> list[Any]:
    """The Ping events in the instance's history (raised, whether consumed or not)."""
    state = client.get(f"instances/{instance_id}", params={"showHistory": "true"}).json()
    return [e for e in state.get("historyEvents", []) if e["kind"] == "EventRaised"]


def received(client: httpx.Client, instance_id: str, count: int) -> None:
    """Wait until the instance has consumed ``count`` Ping events."""
    wait_until(
        lambda: (
            (client.get(f"instances/{instance_id}").json()["customStatus"] or {}).get("received")
            == count
        )
    )


def github_signed(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    digest = hmac.new(HOOK_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return raw, {"X-Hub-Signature-256": f"sha256={digest}"}


def timestamp_signed(body: Any, stamp: str) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    digest = hmac.new(HOOK_SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256)
    return raw, {"X-Timestamp": stamp, "X-Signature": f"sha256={digest.hexdigest()}"}


def test_b19_a_github_delivery_replayed_with_new_delivery_ids_raises_once(events: Server) -> None:
    with events.client() as client, events.client(key=None) as anonymous:
        instance_id = collecting(client)
        raw, headers = github_signed({"instance": instance_id, "n": 1})
        codes = [
            anonymous.post(
                "hooks/github", content=raw, headers={**headers, "X-GitHub-Delivery": delivery}
            ).status_code
            for delivery in ("d-1", "d-2", "d-3")
        ]
        assert codes == [202, 200, 200]
        received(client, instance_id, 1)  # the raised one is in the history, not only the inbox
        assert len(pings(client, instance_id)) == 1


def test_b20_a_signed_request_replayed_with_a_new_webhook_id_raises_once(events: Server) -> None:
    with events.client() as client, events.client(key=None) as anonymous:
        instance_id = collecting(client)
        raw, headers = timestamp_signed({"instance": instance_id, "n": 1}, str(int(time.time())))
        first = anonymous.post(
            "hooks/signed", content=raw, headers={**headers, "webhook-id": "w-1"}
        )
        again = anonymous.post(
            "hooks/signed", content=raw, headers={**headers, "webhook-id": "w-2"}
        )
        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json()["duplicates"] == 1
        received(client, instance_id, 1)
        assert len(pings(client, instance_id)) == 1


def test_b22_an_instance_from_an_unsigned_route_parameter_is_refused_at_decoration() -> None:
    app = DurableApp(store="memory://", management_api=False)

    def hook(ping: dict[str, Any]) -> dict[str, Any]:
        return ping

    webhook = app.event_webhook(
        route="hooks/{id}", event_name="Ping", instance_id="id", verify=hmac_sha256("S")
    )
    with pytest.raises(TypeError, match="signed payload"):
        webhook(hook)
    # With a key in front, the key holder names the instance: allowed.
    keyed = app.event_webhook(
        route="hooks/keyed/{id}",
        event_name="Ping",
        instance_id="id",
        verify=hmac_sha256("S"),
        auth_level="FUNCTION",
    )
    assert keyed(hook) is hook


_UNSIGNED_TARGET_APP = """
from typing import Any
from durable_fx import DurableApp
from durable_fx.bindings import hmac_sha256

app = DurableApp()


@app.event_webhook(route="hooks/{id}", event_name="Ping", instance_id="id", verify=hmac_sha256("S"))
def hook(ping: dict[str, Any]) -> dict[str, Any]:
    return ping
"""


def test_b22_serve_refuses_an_app_that_takes_the_instance_from_an_unsigned_parameter(
    tmp_path: Path,
) -> None:
    (tmp_path / "hook_app.py").write_text(_UNSIGNED_TARGET_APP)
    result = subprocess.run(
        [sys.executable, "-m", "durable_fx.cli", "serve", "hook_app:app", "--port", "0"],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "cannot load hook_app:app: webhook 'hook': instance_id='id'" in result.stderr
    assert "signed payload" in result.stderr
    assert "a bug in durable-fx" not in result.stderr


@pytest.mark.parametrize("stamp", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_b5_v1_a_timestamp_that_is_not_finite_is_refused(events: Server, stamp: str) -> None:
    with events.client() as client, events.client(key=None) as anonymous:
        instance_id = collecting(client)
        raw, headers = timestamp_signed({"instance": instance_id, "n": 1}, stamp)
        answer = anonymous.post("hooks/signed", content=raw, headers=headers)
        assert answer.status_code == 401
        assert "malformed timestamp" in answer.json()["error"]
        assert pings(client, instance_id) == []


def test_b6_a_signature_in_upper_case_hex_is_accepted_and_a_wrong_one_is_not(
    events: Server,
) -> None:
    with events.client() as client, events.client(key=None) as anonymous:
        instance_id = collecting(client)
        raw, headers = timestamp_signed({"instance": instance_id, "n": 1}, str(int(time.time())))
        upper = {**headers, "X-Signature": "sha256=" + headers["X-Signature"][7:].upper()}
        wrong = {**headers, "X-Signature": "sha256=" + "AB" * 32}
        assert anonymous.post("hooks/signed", content=raw, headers=wrong).status_code == 401
        assert anonymous.post("hooks/signed", content=raw, headers=upper).status_code == 202
        received(client, instance_id, 1)
        assert len(pings(client, instance_id)) == 1


def test_k1_k2_k3_handshakes_composed_with_a_signature_still_need_the_key(
    events: Server,
) -> None:
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "anyone-can-validate"},
        }
    ]
    handshake = {"aeg-event-type": "SubscriptionValidation"}
    origin = {"WebHook-Request-Origin": "attacker.example"}
    with events.client() as client, events.client(key=None) as anonymous:
        assert (
            anonymous.post("hooks/composed", json=validation, headers=handshake).status_code == 401
        )
        options = anonymous.options("hooks/composed", headers=origin)
        assert options.status_code == 401
        assert "webhook-allowed-origin" not in options.headers
        # With the key, Event Grid's handshakes work...
        answer = client.post("hooks/composed", json=validation, headers=handshake)
        assert answer.json() == {"validationResponse": "anyone-can-validate"}
        # ...and notifications still need the signature.
        instance_id = collecting(client)
        batch = [{"id": "k3", "eventType": "Ping", "data": {"instance": instance_id, "n": 1}}]
        unsigned = client.post("hooks/composed", json=batch)
        assert unsigned.status_code == 401
        raw, headers = timestamp_signed(batch, str(int(time.time())))
        assert client.post("hooks/composed", content=raw, headers=headers).status_code == 202


def test_b17_twenty_identical_signed_webhooks_at_once_raise_one_event(events: Server) -> None:
    with events.client() as client:
        instance_id = collecting(client)

    async def burst(n: int) -> list[httpx.Response]:
        raw, headers = timestamp_signed({"instance": instance_id, "n": n}, str(int(time.time())))
        async with httpx.AsyncClient(base_url=f"{events.base}/api", timeout=30) as http:
            return list(
                await asyncio.gather(
                    *(http.post("hooks/signed", content=raw, headers=headers) for _ in range(20))
                )
            )

    bursts = 4  # a race shows only sometimes: several bursts make it likely
    for n in range(bursts):
        answers = asyncio.run(burst(n))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 19 + [202], codes
        assert sum(a.json()["duplicates"] for a in answers) == 19
    with events.client() as client:
        received(client, instance_id, bursts)
        assert len(pings(client, instance_id)) == bursts


def test_d42_an_idempotency_key_dedupes_for_the_life_of_the_instance(events: Server) -> None:
    with events.client() as client:
        instance_id = collecting(client)
        route = f"instances/{instance_id}/raiseEvent/Ping"
        ping = {"instance": instance_id, "n": 1}
        first = client.post(route, json=ping, headers={"Idempotency-Key": "same-key"})
        assert first.status_code == 202
        received(client, instance_id, 1)
        again = client.post(route, json=ping, headers={"Idempotency-Key": "same-key"})
        assert (again.status_code, again.json()) == (
            200,
            {"duplicate": True, "eventId": "same-key"},
        )
        by_query = client.post(route, json=ping, params={"eventId": "same-id"})
        assert by_query.status_code == 202
        received(client, instance_id, 2)
        repeat = client.post(route, json=ping, params={"eventId": "same-id"})
        assert repeat.status_code == 200
        assert len(pings(client, instance_id)) == 2


def test_d41_d43_d44_raise_event_checks_names_and_declared_data(events: Server) -> None:
    with events.client() as client:
        instance_id = collecting(client)
        base = f"instances/{instance_id}/raiseEvent"
        wrong = client.post(f"{base}/Ping", json={"hello": "world"})
        assert wrong.status_code == 400
        fields = {f["field"] for f in wrong.json()["fields"]}
        assert fields == {"body.instance", "body.n"}
        undeclared = client.post(f"{base}/Pong", json={})
        assert undeclared.status_code == 400
        assert "declared: Ping" in undeclared.json()["error"]
        long_name = client.post(f"{base}/{'E' * 5000}", json={})
        assert long_name.status_code == 400
        assert long_name.json()["fields"][0]["field"] == "eventName"
        newline = client.post(f"{base}/a%0Ab", json={})
        assert newline.status_code == 400
        assert "U+000A" in newline.json()["error"]
        # Names are case-insensitive, as wait_for_event's are.
        ping = {"instance": instance_id, "n": -1}
        assert client.post(f"{base}/ping", json=ping).status_code == 202
        done = wait_until(
            lambda: (
                r.json()
                if (r := client.get(f"instances/{instance_id}")).status_code == 200
                else None
            )
        )
        assert (done["runtimeStatus"], done["output"]) == ("Completed", [-1])
        assert len(pings(client, instance_id)) == 1


# -- the email app -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def smtp(store_kind: str) -> Iterator[LocalSmtp]:
    with LocalSmtp() as server:
        yield server


@pytest.fixture(scope="module")
def email_app(
    request: pytest.FixtureRequest,
    smtp: LocalSmtp,
    store_kind: str,
) -> Iterator[AppProcess]:
    settings = {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "DELIVERY_WEBHOOK_SECRET": RECEIPT_SECRET,
        "EMAIL_RECEIPT_TIMEOUT_SECONDS": "120",
    }
    # A short lock budget, so the held-lock tests (E1) see the 503 soon.
    with served_email_app(
        request, f"email-app-events-{store_kind}", store_kind, settings, "?busy_timeout=1"
    ) as process:
        yield process


@pytest.fixture
def mail(email_app: AppProcess) -> Iterator[httpx.Client]:
    with email_app.client() as http:
        yield http


def sending(client: httpx.Client, to: str) -> tuple[str, str]:
    """A new email awaiting its receipt: (instance id, message id)."""
    answer = client.post("emails", json=email(to))
    assert answer.status_code == 202, answer.text
    instance_id: str = answer.json()["id"]
    return instance_id, awaiting(client, instance_id)


def grid(client: httpx.Client, batch: list[dict[str, Any]]) -> httpx.Response:
    return client.post(
        "webhooks/delivery/eventgrid", json=batch, headers={"aeg-event-type": "Notification"}
    )


def dead_letters(store_url: str) -> list[dict[str, Any]]:
    """The envelopes in ``email-delivery-events-poison`` (left there for the next read)."""

    async def read() -> list[dict[str, Any]]:
        queues = open_queues(store_url)
        try:
            found = await queues.receive(
                "email-delivery-events-poison", limit=32, visibility=timedelta(seconds=30)
            )
            for message in found:  # visible again for the next read
                await queues.update_visibility(message, timedelta(0))
            return [json.loads(decode_body(m.text)) for m in found]
        finally:
            await queues.close()

    return asyncio.run(read())


def test_c10_c12_a_finished_instance_in_a_batch_is_dead_lettered_and_the_rest_raised(
    mail: httpx.Client, email_app: AppProcess
) -> None:
    done_id, done_message = sending(mail, "c-done@example.com")
    raw, headers = signed(
        {"message_id": done_message, "status": "delivered", "event_id": "c10"}, RECEIPT_SECRET
    )
    assert mail.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
    assert output(mail, done_id)["status"] == "delivered"
    live_id, live_message = sending(mail, "c-live@example.com")
    late, current = acs_report(done_message, "Delivered"), acs_report(live_message, "Delivered")
    answer = grid(mail, [late, current])
    assert answer.status_code == 202, answer.text
    items = answer.json()["items"]
    assert [i["outcome"] for i in items] == ["poisoned", "raised"]
    assert "COMPLETED" in items[0]["reason"]
    assert output(mail, live_id)["status"] == "delivered"
    letters = [d for d in dead_letters(email_app.store_url) if late["id"] in d["message"]]
    assert len(letters) == 1
    assert json.loads(letters[0]["message"]) == late
    assert "COMPLETED" in letters[0]["reason"]
    # C12: Event Grid sends the same batch again: nothing new, nothing copied twice.
    again = grid(mail, [late, current])
    assert again.status_code == 200
    assert [i["outcome"] for i in again.json()["items"]] == ["poisoned", "duplicate"]
    assert len([d for d in dead_letters(email_app.store_url) if late["id"] in d["message"]]) == 1


def test_c11_an_unknown_message_in_a_batch_asks_for_a_retry_and_the_rest_is_raised(
    mail: httpx.Client,
) -> None:
    live_id, live_message = sending(mail, "c-live2@example.com")
    foreign, current = (
        acs_report("<not-ours@other-app>", "Delivered"),
        acs_report(live_message, "Delivered"),
    )
    answer = grid(mail, [foreign, current])
    assert answer.status_code == 503  # Event Grid retries 5xx; it drops 400/401/403/413
    assert int(answer.headers["Retry-After"]) >= 1
    outcomes = [(i["outcome"], i["id"]) for i in answer.json()["items"]]
    assert outcomes == [("retry", foreign["id"]), ("raised", current["id"])]
    assert "retry later" in answer.json()["items"][0]["reason"]
    assert output(mail, live_id)["status"] == "delivered"
    again = grid(mail, [foreign, current])
    assert [i["outcome"] for i in again.json()["items"]] == ["retry", "duplicate"]


def test_d41_a_malformed_receipt_through_the_management_api_is_400_and_the_email_runs_on(
    mail: httpx.Client,
) -> None:
    instance_id, message_id = sending(mail, "d41@example.com")
    answer = mail.post(
        f"instances/{instance_id}/raiseEvent/DeliveryReceipt", json={"hello": "world"}
    )
    assert answer.status_code == 400
    fields = {f["field"] for f in answer.json()["fields"]}
    assert {"body.message_id", "body.status", "body.event_id"} <= fields
    state = mail.get(f"instances/{instance_id}").json()
    assert (state["runtimeStatus"], state["customStatus"]["stage"]) == (
        "Running",
        "awaiting receipt",
    )
    receipt = {"message_id": message_id, "status": "delivered", "event_id": "d41"}
    assert (
        mail.post(f"instances/{instance_id}/raiseEvent/DeliveryReceipt", json=receipt).status_code
        == 202
    )
    assert output(mail, instance_id)["status"] == "delivered"


def test_a_malformed_receipt_raised_by_a_client_is_recorded_and_the_email_completes(
    mail: httpx.Client, email_app: AppProcess
) -> None:
    instance_id, message_id = sending(mail, "bad-receipt@example.com")

    async def raise_bad() -> None:
        async with AsyncDurableClient(email_app.store_url) as client:
            await client.raise_event(instance_id, "DeliveryReceipt", {"hello": "world"})

    asyncio.run(raise_bad())

    def noted() -> dict[str, Any] | None:
        status: dict[str, Any] = mail.get(f"instances/{instance_id}").json()["customStatus"]
        return status if status.get("malformed_receipts") == 1 else None

    status = wait_until(noted)
    assert status["stage"] == "awaiting receipt"
    assert "message_id: Field required" in status["last_malformed"]
    receipt = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}
    raw, headers = signed(receipt, RECEIPT_SECRET)
    assert mail.post("webhooks/delivery", content=raw, headers=headers).status_code == 202
    assert output(mail, instance_id)["status"] == "delivered"


def _webhook_while_locked(
    email_app: AppProcess, mail: httpx.Client, release_after_get: bool
) -> tuple[httpx.Response, list[str]]:
    """POST a signed receipt while the file is locked, GET / meanwhile; the order they answered."""
    _instance_id, message_id = sending(mail, f"e-{uuid.uuid4().hex[:6]}@example.com")
    receipt = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}
    raw, headers = signed(receipt, RECEIPT_SECRET)
    order: list[str] = []
    answers: list[httpx.Response] = []
    if not email_app.store_url.startswith("sqlite:"):
        pytest.skip("a SQLite file's write lock")
    path = Path(email_app.store_url.removeprefix("sqlite:///").split("?")[0])
    with write_locked(path) as holder:

        def post() -> None:
            with email_app.client() as http:
                answers.append(http.post("webhooks/delivery", content=raw, headers=headers))
            order.append("webhook")

        poster = threading.Thread(target=post)
        poster.start()
        time.sleep(0.3)  # the webhook is waiting on the lock by now
        assert httpx.get(f"http://127.0.0.1:{email_app.port}/", timeout=30).status_code == 200
        order.append("GET /")
        if release_after_get:
            holder.execute("ROLLBACK")
        poster.join(60)
    return answers[0], order


def test_e1_a_held_write_lock_answers_503_and_never_blocks_other_requests(
    mail: httpx.Client, email_app: AppProcess
) -> None:
    answer, order = _webhook_while_locked(email_app, mail, release_after_get=False)
    assert order == ["GET /", "webhook"]
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) >= 1


def test_e2_a_write_lock_released_in_time_lets_the_webhook_through(
    mail: httpx.Client, email_app: AppProcess
) -> None:
    answer, order = _webhook_while_locked(email_app, mail, release_after_get=True)
    assert order == ["GET /", "webhook"]
    assert answer.status_code == 202, answer.text
