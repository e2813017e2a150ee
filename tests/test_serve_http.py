"""``durable-fx serve`` end to end: a real process, real HTTP (httpx), SQLite and Azurite.

One server per store kind serves ``tests/apps/serve_app.py`` for the module;
each test uses its own instance ids. The last tests start their own servers:
the repository's ``function_app.py`` on a fresh directory (no settings: the
embedded SQLite store), with JSON logs, stopped by SIGTERM.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_fx.queues import decode_body, encode_body, open_queues
from email_pipeline.localsmtp import LocalSmtp
from tests.support.instances import wait_until
from tests.support.serve import (
    KEY,
    REPO,
    Server,
    awaiting_receipt,
    finished,
    new_id,
    server_env,
    signed,
    start_order,
    start_server,
)
from tests.support.serve import server as server  # the fixture: sqlite and azure servers

pytestmark = pytest.mark.slow

# -- the management API -----------------------------------------------------------------------


def test_start_status_raise_complete(server: Server) -> None:
    order_id = new_id()
    with server.client() as client:
        payload = start_order(client, order_id)
        assert payload["id"] == order_id
        # The URLs carry no key (a key in a URL ends up in logs): the caller sends its own.
        assert "code=" not in json.dumps(payload)
        running = client.get(payload["statusQueryGetUri"])
        assert running.status_code == 202
        assert running.json()["runtimeStatus"] == "Running"
        event_url = payload["sendEventPostUri"].replace("{eventName}", "Shipped")
        raised = client.post(event_url, json={"order_id": order_id, "carrier": "last"})
        assert raised.status_code == 202
        done = finished(client, order_id)
    assert done["runtimeStatus"] == "Completed"
    assert done["output"] == {"reserved": f"reserved 2 for {order_id}", "carriers": ["last"]}


def test_entities_are_signalled_read_and_listed(server: Server) -> None:
    item = f"item-{new_id()}"
    with server.client() as client:
        url = f"entities/stock/{item}"
        assert client.get(url).status_code == 404  # no state yet
        assert client.post(url, params={"op": "add"}, json=5).status_code == 202
        assert client.post(url, params={"op": "take"}, json=2).status_code == 202
        assert client.post(url, params={"op": "take"}, json=100).status_code == 202  # fails
        keyed = {"Idempotency-Key": f"restock-{item}"}
        assert client.post(url, params={"op": "add"}, json=10, headers=keyed).status_code == 202
        again = client.post(url, params={"op": "add"}, json=10, headers=keyed)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        wait_until(lambda: client.get(url).status_code == 200 and client.get(url).json() == 13)
        listed = client.get("entities/stock", params={"fetchState": "true", "top": "1000"})
        assert listed.status_code == 200
        mine = [e for e in listed.json() if e["entityId"]["key"] == item]
        assert mine == [
            {
                "entityId": {"name": "stock", "key": item},
                "lastOperationTime": mine[0]["lastOperationTime"],
                "state": 13,
            }
        ]
        assert any(e["entityId"]["key"] == item for e in client.get("entities").json())


def test_hostile_entity_requests_are_refused_with_the_field(server: Server) -> None:
    with server.client() as client:
        no_op = client.post("entities/stock/k", json=1)
        assert no_op.status_code == 400 and "op" in no_op.text
        bad_name = client.post("entities/st@ck/k", params={"op": "add"}, json=1)
        assert bad_name.status_code == 400 and "entityName" in bad_name.text
        bad_json = client.post(
            "entities/stock/k",
            params={"op": "add"},
            content=b"{nope",
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status_code == 400 and "body" in bad_json.text
        huge = client.post("entities/stock/k", params={"op": "add"}, content=b"1" * 2_000_000)
        assert huge.status_code == 413
        assert client.get("entities/stock/k", params={"top": "0"}).status_code in (400, 404)
        assert client.get("entities", params={"top": "nope"}).status_code == 400


def test_schedules_are_created_read_steered_and_deleted(server: Server) -> None:
    schedule_id = f"nightly-{new_id()}"
    url = f"schedules/{schedule_id}"
    with server.client() as client:
        assert client.get(url).status_code == 404
        body = {"orchestration": "nightly", "input": "eu", "every_seconds": 1}
        assert client.post(url, json=body).status_code == 202

        def completed() -> list[dict[str, Any]]:
            found = client.get(url)
            runs = found.json()["recent_runs"] if found.status_code == 200 else []
            return [run for run in runs if run["outcome"] == "completed"]

        wait_until(lambda: completed(), what="a completed run")
        run = completed()[0]
        assert run["instance_id"].startswith(f"{schedule_id}-")
        status = client.get(f"instances/{run['instance_id']}").json()
        assert (status["runtimeStatus"], status["output"]) == ("Completed", "report for eu")
        assert client.post(url, json=body).status_code == 409
        listed = client.get("schedules", params={"prefix": schedule_id, "orchestration": "nightly"})
        assert [d["id"] for d in listed.json()] == [schedule_id]
        assert client.post(f"{url}/pause").status_code == 202
        # Paused with nothing running: the manual run is not skipped by the overlap policy.
        described = lambda: client.get(url).json()  # noqa: E731
        wait_until(lambda: described()["paused"] and not described()["running"], what="the pause")
        assert client.post(f"{url}/trigger").status_code == 202
        runs = lambda: client.get(url).json()["recent_runs"]  # noqa: E731
        wait_until(
            lambda: any("-manual-" in (r["instance_id"] or "") for r in runs()),
            what="the manual run",
        )
        assert client.delete(url).status_code == 202
        wait_until(lambda: client.get(url).status_code == 404, what="the deletion")


def test_hostile_schedule_requests_are_refused_with_the_field(server: Server) -> None:
    with server.client() as client:
        cases = [
            ({"input": 1, "every_seconds": 5}, 400, "orchestration"),
            ({"orchestration": "nightly", "cron": "now and then"}, 400, "cron"),
            ({"orchestration": "nightly", "every_seconds": 0}, 400, "every"),
            ({"orchestration": "nightly", "every_seconds": 5, "overlap": "queue"}, 400, "overlap"),
            ({"orchestration": "nightly", "every_seconds": 5, "colour": "red"}, 400, "colour"),
            ({"orchestration": "nope", "every_seconds": 5}, 404, "nope"),
        ]
        for body, status, field in cases:
            answer = client.post(f"schedules/s-{new_id()}", json=body)
            assert answer.status_code == status and field in answer.text, (body, answer.text)
        bad_id = client.post(
            "schedules/%20x%20", json={"orchestration": "nightly", "every_seconds": 5}
        )
        assert bad_id.status_code == 400 and "scheduleId" in bad_id.text
        huge = client.post(f"schedules/s-{new_id()}", content=b"1" * 2_000_000)
        assert huge.status_code == 413
        assert client.post(f"schedules/s-{new_id()}/pause").status_code == 404
        unknown = client.post(f"schedules/s-{new_id()}/explode")
        assert unknown.status_code == 400 and "action" in unknown.text
        assert client.delete(f"schedules/s-{new_id()}").status_code == 404
        vague = client.get("schedules", params={"paused": "maybe"})
        assert vague.status_code == 400 and "paused" in vague.text


def test_keys_and_routes(server: Server) -> None:
    with server.client(key=None) as anonymous, server.client(key="wrong") as wrong:
        assert anonymous.post("orchestrators/fulfil", json={}).status_code == 401
        assert wrong.get("instances").status_code == 401
        ok = anonymous.get("instances", params={"code": KEY, "top": "1"})
        assert ok.status_code == 200
        assert anonymous.get("echo/hi", params={"x": "1"}).text == "hi:1"
        assert anonymous.get("echo/123").status_code == 404  # {word:alpha}
        assert anonymous.get("blueprint/ping").text == "pong"
        assert anonymous.get("nowhere").status_code == 404
        assert anonymous.delete("echo/hi").status_code == 404  # GET only


def test_bad_requests_are_explained(server: Server) -> None:
    with server.client() as client:
        invalid = client.post("orchestrators/fulfil", json={"order_id": "x", "quantity": "lots"})
        assert invalid.status_code == 400
        assert invalid.json()["fields"][0]["field"] == "input.quantity"
        assert client.post("orchestrators/fulfil", content=b"{").status_code == 400
        assert client.post("orchestrators/missing").status_code == 404
        big = b'"' + b"x" * (1024 * 1024 + 10) + b'"'
        assert client.post("orchestrators/fulfil", content=big).status_code == 413
        assert client.get("instances/nobody").status_code == 404
        assert client.get("instances", params={"runtimeStatus": "Bogus"}).status_code == 400


def test_a_user_route_starts_through_the_durable_client(server: Server) -> None:
    order_id = new_id()
    with server.client() as client:
        started = client.put(f"orders/{order_id}", params={"n": "5"})
        assert started.status_code == 202
        assert started.headers["location"] == f"{server.base}/api/instances/{order_id}"
        wait_until(lambda: client.get(f"instances/{order_id}").json()["runtimeStatus"] == "Running")
        client.post(
            f"instances/{order_id}/raiseEvent/Shipped",
            json={"order_id": order_id, "carrier": "last"},
        )
        assert finished(client, order_id)["output"]["reserved"] == f"reserved 5 for {order_id}"


# -- webhooks -----------------------------------------------------------------------------


def test_webhook_signatures_and_replays(server: Server) -> None:
    order_id = new_id()
    with server.client() as client, server.client(key=None) as anonymous:
        start_order(client, order_id)
        raw, headers = signed({"order_id": order_id, "carrier": "ups"})
        forged = {**headers, "X-Signature": "sha256=" + "0" * 64}
        assert anonymous.post("hooks/shipped", content=raw, headers=forged).status_code == 401
        _, other = signed({"order_id": order_id, "carrier": "ups"}, secret="guess")
        assert anonymous.post("hooks/shipped", content=raw, headers=other).status_code == 401
        accepted = anonymous.post("hooks/shipped", content=raw, headers=headers)
        assert (accepted.status_code, accepted.json()["raised"]) == (202, 1)
        time.sleep(0.5)  # consumed by now: only the ledger can tell the replay apart
        replayed = anonymous.post("hooks/shipped", content=raw, headers=headers)
        assert (replayed.status_code, replayed.json()["duplicates"]) == (200, 1)
        last, last_headers = signed({"order_id": order_id, "carrier": "last"})
        assert (
            anonymous.post("hooks/shipped", content=last, headers=last_headers).status_code == 202
        )
        assert finished(client, order_id)["output"]["carriers"] == ["ups", "last"]


def test_event_grid_handshake_and_delivery(server: Server) -> None:
    order_id = new_id()
    code = "0d4f2f3e-57c5-4a7b-9c1e-1234567890ab"
    validation = [
        {
            "id": "1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": code},
        }
    ]
    with server.client() as client, server.client(key=None) as anonymous:
        assert anonymous.post("hooks/grid", json=validation).status_code == 401  # needs the key
        handshake = client.post(
            "hooks/grid", json=validation, headers={"aeg-event-type": "SubscriptionValidation"}
        )
        assert handshake.json() == {"validationResponse": code}
        options = client.options(
            "hooks/grid", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
        )
        assert options.headers["webhook-allowed-origin"] == "eventgrid.azure.net"
        start_order(client, order_id)
        events = [
            {
                "id": f"{order_id}-{n}",
                "eventType": "Shipped",
                "data": {"order_id": order_id, "carrier": c},
            }
            for n, c in enumerate(["dhl", "last"])
        ]
        delivered = client.post(
            "hooks/grid", json=events, headers={"aeg-event-type": "Notification"}
        )
        assert delivered.json() == {
            "raised": 2,
            "duplicates": 0,
            "ignored": 0,
            "items": [
                {"index": n, "outcome": "raised", "id": event["id"]}
                for n, event in enumerate(events)
            ],
        }
        again = client.post("hooks/grid", json=events, headers={"aeg-event-type": "Notification"})
        assert again.json()["duplicates"] == 2
        assert finished(client, order_id)["output"]["carriers"] == ["dhl", "last"]


# -- queues ---------------------------------------------------------------------------------


def send(server: Server, queue: str, text: str) -> None:
    import asyncio

    async def put() -> None:
        queues = open_queues(server.store_url)
        try:
            await queues.send(queue, text)
        finally:
            await queues.close()

    asyncio.run(put())


def poisoned(server: Server, queue: str) -> list[str]:
    import asyncio

    async def read() -> list[str]:
        queues = open_queues(server.store_url)
        try:
            found = await queues.receive(queue, limit=32, visibility=timedelta(seconds=30))
            return [m.text for m in found]
        finally:
            await queues.close()

    return asyncio.run(read())


def test_a_queue_message_raises_its_event(server: Server) -> None:
    order_id = new_id()
    with server.client() as client:
        start_order(client, order_id)
        send(
            server, "shipments", encode_body(json.dumps({"order_id": order_id, "carrier": "last"}))
        )
        assert finished(client, order_id)["output"]["carriers"] == ["last"]


def test_malformed_queue_messages_end_in_the_poison_queue_with_their_reason(server: Server) -> None:
    marker = uuid.uuid4().hex
    send(server, "shipments", encode_body(f"not json {marker}"))
    send(server, "shipments", encode_body(json.dumps({"order_id": marker})))
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        for text in poisoned(server, "shipments-poison"):
            envelope = json.loads(decode_body(text))
            if marker in envelope["message"]:
                found.append(envelope)
        return len(found) == 2

    wait_until(arrived)
    reasons = sorted(e["reason"] for e in found)
    assert "not valid JSON" in reasons[1]
    assert "message.carrier: Field required" in reasons[0]


def test_a_failing_trigger_is_retried_then_poisoned(server: Server) -> None:
    marker = f"fail-{uuid.uuid4().hex}"
    send(server, "always-fails", encode_body(marker))
    found = wait_until(
        lambda: [
            t for t in poisoned(server, "always-fails-poison") if marker.encode() in decode_body(t)
        ]
    )
    assert len(found) == 1
    failures = [
        line
        for line in server.logs().splitlines()
        if "function=always_fails" in line and "outcome=failed" in line and marker in line
    ]
    assert len(failures) == 2  # maxDequeueCount tries, one log line each


# -- a fresh machine, logs, signals ------------------------------------------------------------


def test_the_email_app_runs_on_a_fresh_directory_and_stops_on_sigterm(tmp_path: Path) -> None:
    shutil.copy(REPO / "function_app.py", tmp_path)
    shutil.copy(REPO / "host.json", tmp_path)
    with LocalSmtp() as smtp:
        env = server_env(
            DELIVERY_WEBHOOK_SECRET="s", SMTP_HOST="127.0.0.1", SMTP_PORT=str(smtp.port)
        )
        running = start_server(tmp_path, "function_app:app", env, ["--log-format", "json"])
        try:
            with running.client() as client:
                job = {"request": {"from": "a@example.com", "to": ["b@example.com"],
                                   "subject": "hi", "text": "hello"}}  # fmt: skip
                started = client.post("orchestrators/email_delivery", json=job)
                assert started.status_code == 202
                instance_id = started.json()["id"]
                message_id = wait_until(lambda: awaiting_receipt(client, instance_id))
                receipt = {"message_id": message_id, "status": "delivered", "event_id": "e1"}
                raw, headers = signed(receipt, "s")
                assert (
                    client.post("webhooks/delivery", content=raw, headers=headers).status_code
                    == 202
                )
                done = finished(client, instance_id)
            assert done["output"]["status"] == "delivered"
        finally:
            code = running.stop()
        assert [m["Message-ID"] for m in smtp.messages] == [message_id]
    assert code == 0
    assert (tmp_path / ".durable_fx" / "durable_fx.db").exists()  # the embedded default
    records = [json.loads(line) for line in running.logs().splitlines() if line.startswith("{")]
    invocations = [r for r in records if r["message"] == "invocation"]
    assert {r["function"] for r in invocations} >= {"dfx_start", "dfx_status"}
    start_record = next(r for r in invocations if r["function"] == "dfx_start")
    assert start_record["status"] == 202
    assert start_record["outcome"] == "succeeded"
    assert isinstance(start_record["duration_ms"], float)
    assert any(r["message"] == "stopped (SIGTERM)" for r in records)
    # On SQLite a worker runs durable work: no durable queue function is served, none of
    # the control partitions' (dfx_control_NN), the legacy queue's or the work items'.
    served = [r["message"].split(":")[0] for r in records if r["message"].startswith("function ")]
    assert "function dfx_start" in served
    assert not [f for f in served if f.startswith(("function dfx_control", "function dfx_work"))]


def test_serve_refuses_a_bad_target(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "durable_fx.cli", "serve", "no_such_module:app"],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot import 'no_such_module'" in result.stderr


def test_base64_helpers_match_the_hosts_encoding() -> None:
    assert encode_body("hi") == base64.b64encode(b"hi").decode()
