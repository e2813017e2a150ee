"""The management API, event sources and client binding, called as the Functions worker calls them.

Each function is the indexed user function (``Function.get_user_function()``),
called with keyword arguments named after its bindings, with a real
``func.HttpRequest`` or ``func.QueueMessage`` built by azure-functions' own
converters from what the host sends. A ``Worker`` runs the orchestrations.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from pydantic import BaseModel

import durable_fx
from durable_fx import DurableApp, EventTimeoutError, OrchestrationContext, Orchestrator
from durable_fx.bindings import (
    HostConfig,
    MessageRejected,
    QueueOptions,
    event_grid_handshake,
    hmac_sha256,
)
from durable_fx.hosting import http_request, queue_message
from durable_fx.queues import MemoryQueues, QueuedMessage, decode_body, encode_body
from tests.support.azurite import AzuriteProcess, new_hub
from tests.support.instances import history_kinds

SECRET = "webhook-secret"


class Order(BaseModel):
    order_id: str
    quantity: int


class Shipped(BaseModel):
    order_id: str
    carrier: str


def build_app(store: durable_fx.Store, monkeypatch: pytest.MonkeyPatch) -> DurableApp:
    monkeypatch.setenv("SHIPPED_SECRET", SECRET)
    app = DurableApp(store=store)

    @app.activity()
    def reserve(order: Order) -> str:
        if order.quantity == 0:
            raise ValueError("nothing to reserve")
        return f"reserved {order.quantity}"

    @app.orchestrator()
    def fulfil(ctx: OrchestrationContext, order: Order) -> Orchestrator[dict[str, Any]]:
        reserved = yield ctx.call_activity(reserve, order)
        carriers: list[str] = []
        while True:
            try:
                shipped = yield ctx.wait_for_event(
                    "Shipped", timeout=timedelta(seconds=30), result_type=Shipped
                )
            except EventTimeoutError:
                break
            carriers.append(shipped.carrier)
            if shipped.carrier == "last":
                break
        return {"reserved": reserved, "carriers": carriers}

    @app.orchestrator()
    def no_input(ctx: OrchestrationContext) -> Orchestrator[str]:
        yield ctx.create_timer(timedelta(0))
        return "done"

    @app.event_webhook(
        route="hooks/shipped",
        event_name="Shipped",
        instance_id=lambda notice: notice.order_id,
        verify=hmac_sha256("SHIPPED_SECRET"),
    )
    def shipped_webhook(notice: Shipped) -> Shipped | None:
        return None if notice.carrier == "ignore-me" else notice

    @app.event_webhook(
        route="hooks/grid",
        event_name="Shipped",
        instance_id=lambda event: event["data"]["order_id"],
        event_id=lambda event: event["id"],
        verify=event_grid_handshake(),
        batch=True,
    )
    def shipped_grid(event: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = event["data"]
        return data

    @app.event_queue(queue_name="shipments", event_name="Shipped", instance_id=lambda n: n.order_id)
    def shipped_queue(notice: Shipped) -> Shipped:
        return notice

    @app.route(route="orders/{orderId}", methods=["PUT"])
    @app.durable_client_input(client_name="client")
    def put_order(req: func.HttpRequest, client: durable_fx.DurableClient) -> func.HttpResponse:
        order = Order(order_id=req.route_params["orderId"], quantity=1)
        return app.create_check_status_response(req, client.start(fulfil, order))

    return app


@dataclass
class Harness:
    """An app, its store, a worker, and the functions as the worker would call them."""

    app: DurableApp
    store: durable_fx.Store
    client: durable_fx.DurableClient
    functions: dict[str, Callable[..., Any]]
    queues: MemoryQueues

    def http(
        self,
        function: str,
        method: str,
        path: str,
        *,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        params: dict[str, str] | None = None,
        route: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> func.HttpResponse:
        raw = json.dumps(body).encode() if isinstance(body, dict | list) else body or b""
        raw = raw.encode() if isinstance(raw, str) else raw
        query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
        url = f"http://localhost:7071/api/{path}" + (f"?{query}" if query else "")
        req = http_request(method, url, headers or {}, params or {}, route or {}, raw)
        result = self.functions[function](req=req)
        response: func.HttpResponse = asyncio.run(result) if asyncio.iscoroutine(result) else result
        return response

    def queue(self, function: str, body: bytes, *, message_id: str | None = None) -> None:
        now = datetime.now(UTC)
        message = QueuedMessage(
            queue="shipments",
            id=message_id or uuid.uuid4().hex,
            pop_receipt="receipt",
            text=encode_body(body),
            dequeue_count=1,
            inserted_at=now,
            next_visible_at=now + timedelta(minutes=10),
        )
        asyncio.run(self.functions[function](msg=queue_message(message, body)))

    def wait(self, instance_id: str) -> durable_fx.OrchestrationState:
        return self.client.wait(instance_id, timeout=20)

    def waiting_for_events(self, instance_id: str) -> None:
        """Block until the instance has reserved (so it waits for Shipped events)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = self.client.get(instance_id, history=True)
            kinds = [e.kind for e in state.history or []] if state else []
            if "TaskCompleted" in kinds:
                return
            time.sleep(0.02)
        pytest.fail(f"{instance_id} did not reach its wait")


@pytest.fixture(params=["memory", "sqlite"])
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'app.db'}"
    store = durable_fx.open_store(url)
    app = build_app(store, monkeypatch)
    queues = MemoryQueues()
    app.runtime.use_queues(queues)
    functions = {str(f.get_function_name()): f.get_user_function() for f in app.get_functions()}
    worker = durable_fx.Worker(app, store, max_poll_interval=0.05)
    with worker, durable_fx.DurableClient(store) as client:
        yield Harness(app, store, client, functions, queues)
    asyncio.run(app.runtime.aclose())
    asyncio.run(store.close())


def body_of(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


def start(h: Harness, instance_id: str, quantity: int = 1) -> func.HttpResponse:
    return h.http(
        "dfx_start",
        "POST",
        f"orchestrators/fulfil/{instance_id}",
        body={"order_id": instance_id, "quantity": quantity},
        route={"name": "fulfil", "instanceId": instance_id},
        params={"code": "k"},
    )


def signed(
    body: dict[str, Any], *, at: float | None = None, secret: str = SECRET
) -> dict[str, str]:
    raw = json.dumps(body)
    stamp = str(int(at if at is not None else time.time()))
    digest = hmac.new(secret.encode(), f"{stamp}.{raw}".encode(), hashlib.sha256).hexdigest()
    return {"x-timestamp": stamp, "x-signature": f"sha256={digest}"}


# -- the management API ---------------------------------------------------------------------


def test_start_returns_the_check_status_payload(harness: Harness) -> None:
    response = start(harness, "order-1")
    assert response.status_code == 202
    payload = body_of(response)
    base = "http://localhost:7071/api/instances/order-1"
    # The caller's key (?code=k) is not copied into the URLs; the origin is configuration's.
    assert payload == {
        "id": "order-1",
        "statusQueryGetUri": base,
        "sendEventPostUri": f"{base}/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{base}/terminate?reason={{text}}",
        "suspendPostUri": f"{base}/suspend?reason={{text}}",
        "resumePostUri": f"{base}/resume?reason={{text}}",
        "rewindPostUri": f"{base}/rewind?reason={{text}}",
        "restartPostUri": f"{base}/restart?restartWithNewInstanceId={{restartWithNewInstanceId}}",
        "purgeHistoryDeleteUri": base,
    }
    assert response.headers["Location"] == payload["statusQueryGetUri"]


def test_status_is_202_while_running_and_200_when_done(harness: Harness) -> None:
    start(harness, "order-2", quantity=3)
    harness.waiting_for_events("order-2")
    route = {"instanceId": "order-2"}
    running = harness.http("dfx_status", "GET", "instances/order-2", route=route)
    assert running.status_code == 202
    assert body_of(running)["runtimeStatus"] == "Running"
    assert body_of(running)["input"] == {"order_id": "order-2", "quantity": 3}
    raised = harness.http(
        "dfx_raise_event",
        "POST",
        "instances/order-2/raiseEvent/Shipped",
        body={"order_id": "order-2", "carrier": "last"},
        route={"instanceId": "order-2", "eventName": "Shipped"},
    )
    assert raised.status_code == 202
    assert harness.wait("order-2").output == {"reserved": "reserved 3", "carriers": ["last"]}
    done = harness.http(
        "dfx_status",
        "GET",
        "instances/order-2",
        route=route,
        params={"showHistory": "true", "showInput": "false"},
    )
    assert done.status_code == 200
    status = body_of(done)
    assert status["runtimeStatus"] == "Completed"
    assert "input" not in status
    assert [e["kind"] for e in status["historyEvents"]][-1] == "ExecutionCompleted"


def test_invalid_input_is_400_listing_the_fields(harness: Harness) -> None:
    response = harness.http(
        "dfx_start",
        "POST",
        "orchestrators/fulfil",
        body={"order_id": 7, "quantity": "many"},
        route={"name": "fulfil"},
    )
    assert response.status_code == 400
    fields = {f["field"] for f in body_of(response)["fields"]}
    assert fields == {"input.order_id", "input.quantity"}
    bad_json = harness.http(
        "dfx_start", "POST", "orchestrators/fulfil", body=b"{nope", route={"name": "fulfil"}
    )
    assert bad_json.status_code == 400
    assert body_of(bad_json)["fields"][0]["field"] == "body"
    extra = harness.http(
        "dfx_start", "POST", "orchestrators/no_input", body={"a": 1}, route={"name": "no_input"}
    )
    assert extra.status_code == 400
    bad_id = harness.http(
        "dfx_start",
        "POST",
        "orchestrators/fulfil/a%2Fb",
        body={"order_id": "x", "quantity": 1},
        route={"name": "fulfil", "instanceId": "a/b"},
    )
    assert bad_id.status_code == 400
    assert body_of(bad_id)["fields"][0]["field"] == "instanceId"
    assert harness.client.query().items == []


def test_unknown_names_are_404_and_big_bodies_413(harness: Harness) -> None:
    unknown = harness.http("dfx_start", "POST", "orchestrators/nope", route={"name": "nope"})
    assert unknown.status_code == 404
    assert "fulfil" in body_of(unknown)["error"]
    missing = harness.http("dfx_status", "GET", "instances/x", route={"instanceId": "x"})
    assert missing.status_code == 404
    huge = {"order_id": "x" * (1024 * 1024), "quantity": 1}
    too_big = harness.http(
        "dfx_start", "POST", "orchestrators/fulfil", body=huge, route={"name": "fulfil"}
    )
    assert too_big.status_code == 413
    raise_missing = harness.http(
        "dfx_raise_event",
        "POST",
        "instances/x/raiseEvent/E",
        route={"instanceId": "x", "eventName": "E"},
    )
    assert raise_missing.status_code == 404


def test_a_running_id_cannot_be_started_again(harness: Harness) -> None:
    assert start(harness, "order-3").status_code == 202
    assert start(harness, "order-3").status_code == 409


def test_list_filters_and_pages(harness: Harness) -> None:
    for n in range(3):
        start(harness, f"page-{n}")
    harness.http(
        "dfx_terminate",
        "POST",
        "instances/page-0/terminate",
        route={"instanceId": "page-0"},
        params={"reason": "test"},
    )
    assert harness.wait("page-0").status is durable_fx.OrchestrationStatus.TERMINATED
    first = harness.http("dfx_list", "GET", "instances", params={"top": "2"})
    assert first.status_code == 200
    assert len(body_of(first)) == 2
    token = first.headers["x-ms-continuation-token"]
    second = harness.http(
        "dfx_list",
        "GET",
        "instances",
        params={"top": "2"},
        headers={"x-ms-continuation-token": token},
    )
    ids = {s["instanceId"] for s in body_of(first) + body_of(second)}
    assert ids == {"page-0", "page-1", "page-2"}
    terminated = harness.http(
        "dfx_list", "GET", "instances", params={"runtimeStatus": "Terminated", "name": "fulfil"}
    )
    assert [s["instanceId"] for s in body_of(terminated)] == ["page-0"]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    none = harness.http("dfx_list", "GET", "instances", params={"createdTimeFrom": later})
    assert body_of(none) == []
    for params, field in [
        ({"runtimeStatus": "Sleeping"}, "runtimeStatus"),
        ({"top": "0"}, "top"),
        ({"createdTimeTo": "yesterday"}, "createdTimeTo"),
        ({"continuationToken": "garbage"}, "continuationToken"),
    ]:
        refused = harness.http("dfx_list", "GET", "instances", params=params)
        assert refused.status_code == 400, params
        assert body_of(refused)["fields"][0]["field"] == field


def test_suspend_resume_terminate_and_purge(harness: Harness) -> None:
    start(harness, "steer")
    harness.waiting_for_events("steer")
    route = {"instanceId": "steer"}
    suspended = harness.http("dfx_suspend", "POST", "instances/steer/suspend", route=route)
    assert suspended.status_code == 202
    deadline = time.monotonic() + 20
    suspended_status = durable_fx.OrchestrationStatus.SUSPENDED
    while (state := harness.client.get("steer")) is None or state.status is not suspended_status:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (
        harness.http("dfx_resume", "POST", "instances/steer/resume", route=route).status_code == 202
    )
    busy = harness.http("dfx_purge", "DELETE", "instances/steer", route=route)
    assert busy.status_code == 409
    harness.http("dfx_terminate", "POST", "instances/steer/terminate", route=route)
    assert harness.wait("steer").status is durable_fx.OrchestrationStatus.TERMINATED
    gone = harness.http("dfx_terminate", "POST", "instances/steer/terminate", route=route)
    assert gone.status_code == 410
    purged = harness.http("dfx_purge", "DELETE", "instances/steer", route=route)
    assert (purged.status_code, body_of(purged)) == (200, {"instancesDeleted": 1})
    assert harness.http("dfx_purge", "DELETE", "instances/steer", route=route).status_code == 404


def test_rewind_a_failed_instance(harness: Harness) -> None:
    start(harness, "rewound", quantity=0)
    assert harness.wait("rewound").status is durable_fx.OrchestrationStatus.FAILED
    route = {"instanceId": "rewound"}
    rewound = harness.http(
        "dfx_rewind", "POST", "instances/rewound/rewind", route=route, params={"reason": "why"}
    )
    assert rewound.status_code == 202
    deadline = time.monotonic() + 20
    while "ExecutionRewound" not in history_kinds(harness.client, "rewound"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # Nothing changed: the activity fails again, and so does the instance.
    assert harness.wait("rewound").status is durable_fx.OrchestrationStatus.FAILED
    for instance_id, status in [("nobody", 404), ("running", 410)]:
        if status == 410:
            start(harness, instance_id)
        refused = harness.http(
            "dfx_rewind",
            "POST",
            f"instances/{instance_id}/rewind",
            route={"instanceId": instance_id},
        )
        assert refused.status_code == status, refused.get_body()


def test_restart_under_the_same_or_a_new_id(harness: Harness) -> None:
    start(harness, "again")
    harness.waiting_for_events("again")
    route = {"instanceId": "again"}
    running = harness.http("dfx_restart", "POST", "instances/again/restart", route=route)
    assert running.status_code == 409
    assert "only a finished instance" in body_of(running)["error"]
    bad = harness.http(
        "dfx_restart",
        "POST",
        "instances/again/restart",
        route=route,
        params={"restartWithNewInstanceId": "maybe"},
    )
    assert bad.status_code == 400
    assert body_of(bad)["fields"][0]["field"] == "restartWithNewInstanceId"
    copy = harness.http(
        "dfx_restart",
        "POST",
        "instances/again/restart",
        route=route,
        params={"restartWithNewInstanceId": "true"},
    )
    assert copy.status_code == 202
    new_id = body_of(copy)["id"]
    assert new_id != "again"
    assert copy.headers["Location"].endswith(f"/instances/{new_id}")
    harness.waiting_for_events(new_id)
    assert harness.client.get(new_id).input == {"order_id": "again", "quantity": 1}  # type: ignore[union-attr]


# -- webhooks -----------------------------------------------------------------------------


def test_a_bad_signature_is_401_and_raises_nothing(harness: Harness) -> None:
    start(harness, "hook-1")
    harness.waiting_for_events("hook-1")
    notice = {"order_id": "hook-1", "carrier": "last"}
    for headers in [
        {},
        {**signed(notice), "x-signature": "sha256=" + "0" * 64},
        signed(notice, secret="not-the-secret"),
        signed(notice, at=time.time() - 3600),  # a replay of an old request
    ]:
        response = harness.http(
            "shipped_webhook", "POST", "hooks/shipped", body=notice, headers=headers
        )
        assert response.status_code == 401, headers
    time.sleep(0.2)
    history = harness.client.get("hook-1", history=True)
    assert history is not None
    assert "EventRaised" not in [e.kind for e in history.history or []]


def test_a_signed_webhook_raises_once_even_when_replayed(harness: Harness) -> None:
    start(harness, "hook-2")
    harness.waiting_for_events("hook-2")
    first = {"order_id": "hook-2", "carrier": "ups"}
    headers = signed(first)
    accepted = harness.http("shipped_webhook", "POST", "hooks/shipped", body=first, headers=headers)
    assert (accepted.status_code, body_of(accepted)["raised"]) == (202, 1)
    time.sleep(0.3)  # let the orchestration consume it: the ledger, not the inbox, dedupes now
    replay = harness.http("shipped_webhook", "POST", "hooks/shipped", body=first, headers=headers)
    assert (replay.status_code, body_of(replay)["duplicates"]) == (200, 1)
    ignored = {"order_id": "hook-2", "carrier": "ignore-me"}
    skipped = harness.http(
        "shipped_webhook", "POST", "hooks/shipped", body=ignored, headers=signed(ignored)
    )
    assert body_of(skipped) == {"raised": 0, "duplicates": 0, "ignored": 1}
    last = {"order_id": "hook-2", "carrier": "last"}
    harness.http("shipped_webhook", "POST", "hooks/shipped", body=last, headers=signed(last))
    assert harness.wait("hook-2").output["carriers"] == ["ups", "last"]
    finished = {"order_id": "hook-2", "carrier": "late"}
    gone = harness.http(
        "shipped_webhook", "POST", "hooks/shipped", body=finished, headers=signed(finished)
    )
    assert gone.status_code == 410


def test_webhook_payloads_are_validated(harness: Harness) -> None:
    wrong = {"order_id": "x"}
    response = harness.http(
        "shipped_webhook", "POST", "hooks/shipped", body=wrong, headers=signed(wrong)
    )
    assert response.status_code == 400
    assert body_of(response)["fields"] == [{"field": "body.carrier", "message": "Field required"}]
    nobody = {"order_id": "nobody", "carrier": "x"}
    missing = harness.http(
        "shipped_webhook", "POST", "hooks/shipped", body=nobody, headers=signed(nobody)
    )
    assert missing.status_code == 404


def test_a_missing_secret_setting_fails_closed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHIPPED_SECRET")
    notice = {"order_id": "x", "carrier": "y"}
    response = harness.http(
        "shipped_webhook", "POST", "hooks/shipped", body=notice, headers=signed(notice)
    )
    assert response.status_code == 500


def test_event_grid_handshakes_and_batches(harness: Harness) -> None:
    validation = [
        {
            "id": "v1",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
        }
    ]
    answer = harness.http(
        "shipped_grid",
        "POST",
        "hooks/grid",
        body=validation,
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert body_of(answer) == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    options = harness.http(
        "shipped_grid",
        "OPTIONS",
        "hooks/grid",
        headers={"webhook-request-origin": "eventgrid.azure.net"},
    )
    assert options.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    start(harness, "grid-1")
    harness.waiting_for_events("grid-1")

    def event(event_id: str, carrier: str) -> dict[str, Any]:
        return {
            "id": event_id,
            "eventType": "Shipped",
            "data": {"order_id": "grid-1", "carrier": carrier},
        }

    batch = [event("e1", "dhl"), event("e1", "dhl"), event("e2", "last")]
    delivered = harness.http(
        "shipped_grid",
        "POST",
        "hooks/grid",
        body=batch,
        headers={"aeg-event-type": "Notification"},
    )
    assert body_of(delivered) == {
        "raised": 2,
        "duplicates": 1,
        "ignored": 0,
        "items": [
            {"index": 0, "outcome": "raised", "id": "e1"},
            {"index": 1, "outcome": "duplicate", "id": "e1"},
            {"index": 2, "outcome": "raised", "id": "e2"},
        ],
    }
    assert harness.wait("grid-1").output["carriers"] == ["dhl", "last"]


# -- queue event sources --------------------------------------------------------------------


def test_a_queue_message_raises_its_event_once(harness: Harness) -> None:
    start(harness, "q-1")
    harness.waiting_for_events("q-1")
    body = json.dumps({"order_id": "q-1", "carrier": "fedex"}).encode()
    harness.queue("shipped_queue", body, message_id="m-1")
    time.sleep(0.3)
    harness.queue("shipped_queue", body, message_id="m-1")  # the same message, redelivered
    harness.queue("shipped_queue", json.dumps({"order_id": "q-1", "carrier": "last"}).encode())
    assert harness.wait("q-1").output["carriers"] == ["fedex", "last"]


def test_malformed_queue_messages_are_poisoned_with_their_reason(harness: Harness) -> None:
    harness.queue("shipped_queue", b"not json")
    harness.queue("shipped_queue", b'{"order_id": "q"}')
    poisoned = asyncio.run(
        harness.queues.receive("shipments-poison", limit=10, visibility=timedelta(seconds=5))
    )
    envelopes = [json.loads(decode_body(m.text)) for m in poisoned]
    assert [e["message"] for e in envelopes] == ["not json", '{"order_id": "q"}']
    assert "not valid JSON" in envelopes[0]["reason"]
    assert "message.carrier" in envelopes[1]["reason"]


def test_a_message_for_an_unknown_instance_goes_back_to_the_host(harness: Harness) -> None:
    with pytest.raises(MessageRejected, match="no orchestration instance"):
        harness.queue("shipped_queue", b'{"order_id": "nobody", "carrier": "x"}')


# -- the durable client in user functions ---------------------------------------------------


def test_a_user_route_starts_an_orchestration_through_the_client(harness: Harness) -> None:
    response = harness.http("put_order", "PUT", "orders/o-9", route={"orderId": "o-9"})
    assert response.status_code == 202
    instance_id = body_of(response)["id"]
    harness.waiting_for_events(instance_id)
    harness.client.raise_event(instance_id, "Shipped", {"order_id": "o-9", "carrier": "last"})
    assert harness.wait(instance_id).output["carriers"] == ["last"]


def test_the_store_poisons_after_host_json_max_dequeue_count(tmp_path: Path) -> None:
    app = DurableApp(store=f"sqlite:///{tmp_path / 'hub.db'}")

    @app.orchestrator()
    def idle(ctx: OrchestrationContext, _: None) -> None:
        return None

    app.runtime.use_host_config(HostConfig(queues=QueueOptions(max_dequeue_count=2)))

    async def deliver_until_poisoned() -> int:
        store = app.runtime.store
        await app.runtime.client.start(idle, instance_id="host-json-dequeue")
        deliveries = 0
        while not await store.poisoned_messages():
            batch = await store.lock_orchestrations(
                owner="test", limit=1, lease=timedelta(seconds=30)
            )
            for item in batch.items:
                deliveries += 1
                await store.abandon_orchestration(item, reason="boom", retry_after=timedelta(0))
        await app.runtime.aclose()
        return deliveries

    # The host gives up on a queue message after maxDequeueCount deliveries; so does the store.
    assert asyncio.run(deliver_until_poisoned()) == 2


@pytest.mark.azurite
def test_a_webhook_while_azure_storage_is_down_is_busy_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider is told to come back (503, Retry-After), not that the app broke (500).

    The first thing a signed delivery touches is the event ledger's table: with
    Azure Storage gone it failed past its client's retries, and that error was a 500.
    """
    azurite = AzuriteProcess(tmp_path)
    try:
        store = durable_fx.open_store(azurite.azurite.connection_string(new_hub()))
        app = build_app(store, monkeypatch)
        functions = {str(f.get_function_name()): f.get_user_function() for f in app.get_functions()}
        with durable_fx.DurableClient(store) as client:
            harness = Harness(app, store, client, functions, MemoryQueues())
            azurite.stop()
            notice = {"order_id": "during-the-outage", "carrier": "ups"}
            answer = harness.http(
                "shipped_webhook", "POST", "hooks/shipped", body=notice, headers=signed(notice)
            )
        assert answer.status_code == 503, answer.get_body()
        assert int(answer.headers["Retry-After"]) >= 1
    finally:
        azurite.stop()
