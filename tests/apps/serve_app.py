"""A Functions app for the ``durable-fx serve`` tests: every kind of function the host runs.

Run by ``tests/test_serve_http.py`` as ``serve_app:app`` (this directory on
PYTHONPATH); settings come from the environment the test gives the process.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from durable_fx import (
    AsyncDurableClient,
    DurableApp,
    EntityContext,
    EventTimeoutError,
    OrchestrationContext,
    Orchestrator,
)
from durable_fx.bindings import event_grid_handshake, hmac_sha256

app = DurableApp()
blueprint = func.Blueprint()


class Order(BaseModel):
    """What ``fulfil`` is started with."""

    order_id: str
    quantity: int


class Shipped(BaseModel):
    """A shipping notice for an order (the instance id is the order id)."""

    order_id: str
    carrier: str


@app.activity()
def reserve(order: Order) -> str:
    """Reserve stock."""
    return f"reserved {order.quantity} for {order.order_id}"


@app.entity()
def stock(ctx: EntityContext, quantity: int = 0) -> int:
    """An item's stock level (the key is the item): ``add`` and ``take`` a quantity."""
    level = ctx.get_state(int, 0)
    match ctx.operation:
        case "add":
            level += quantity
        case "take":
            if quantity > level:
                raise ValueError(f"only {level} in stock")
            level -= quantity
    ctx.set_state(level)
    return level


@app.orchestrator()
def fulfil(ctx: OrchestrationContext, order: Order) -> Orchestrator[dict[str, Any]]:
    """Reserve, then wait for every Shipped event (counting them) until a quiet minute."""
    reserved = yield ctx.call_activity(reserve, order)
    carriers: list[str] = []
    while True:
        try:
            shipped = yield ctx.wait_for_event(
                "Shipped", timeout=timedelta(seconds=60), result_type=Shipped
            )
        except EventTimeoutError:
            break
        carriers.append(shipped.carrier)
        if shipped.carrier == "last":
            break
    return {"reserved": reserved, "carriers": carriers}


@app.orchestrator()
def nightly(ctx: OrchestrationContext, region: str) -> str:
    """A scheduled job (the schedule tests run it every second)."""
    return f"report for {region}"


@app.event_webhook(
    route="hooks/shipped",
    event_name="Shipped",
    instance_id=lambda notice: notice.order_id,
    verify=hmac_sha256("SHIPPED_SECRET"),
)
def shipped_webhook(notice: Shipped) -> Shipped:
    """Signed shipping notices."""
    return notice


@app.event_webhook(
    route="hooks/grid",
    event_name="Shipped",
    instance_id=lambda event: event["data"]["order_id"],
    event_id=lambda event: event["id"],
    verify=event_grid_handshake(),
    batch=True,
)
def shipped_grid(event: dict[str, Any]) -> dict[str, Any]:
    """Event Grid deliveries (arrays of events; the function key authenticates them)."""
    data: dict[str, Any] = event["data"]
    return data


@app.event_queue(
    queue_name="shipments",
    event_name="Shipped",
    instance_id=lambda notice: notice.order_id,
)
def shipped_queue(notice: Shipped) -> Shipped:
    """Shipping notices from a queue."""
    return notice


@app.route(route="orders/{orderId}", methods=["PUT"])
@app.durable_client_input(client_name="client")
async def put_order(req: func.HttpRequest, client: AsyncDurableClient) -> func.HttpResponse:
    """A user route starting ``fulfil`` through the durable client."""
    order = Order(order_id=req.route_params["orderId"], quantity=int(req.params.get("n", "1")))
    instance_id = await client.start(fulfil, order, instance_id=order.order_id)
    return app.create_check_status_response(req, instance_id)


@app.route(route="echo/{word:alpha}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    """An anonymous synchronous route with a constrained parameter."""
    return func.HttpResponse(f"{req.route_params['word']}:{req.params.get('x', '')}")


@blueprint.route(route="blueprint/ping", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def ping(req: func.HttpRequest) -> str:
    """A route registered through a blueprint."""
    return "pong"


@blueprint.queue_trigger(
    arg_name="msg", queue_name="always-fails", connection="AzureWebJobsStorage"
)
def always_fails(msg: func.QueueMessage) -> None:
    """Fails every time: its messages end in always-fails-poison."""
    raise RuntimeError(f"cannot handle {msg.get_body()!r}")


app.register_functions(blueprint)
