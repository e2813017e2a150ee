"""The durable_fx quick start: orders processed by a durable orchestration.

Runs on the embedded SQLite store (``.durable_fx/quickstart.db``) with no
services. Each order goes through a sequence (validate, charge), a fan-out
(reserve every item in parallel) and a wait for a "Shipped" event, which this
script raises itself, as a warehouse webhook would. One order is never
shipped and times out, to show the timeout path.

    make demo        # or: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from durable_fx import (
    DurableClient,
    EventTimeoutError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    Worker,
    open_store,
    when_all,
)
from durable_fx.cli import render_timeline

registry = Registry()


class Order(BaseModel):
    order_id: str
    customer: str
    items: list[str]
    amount_cents: int


class Shipment(BaseModel):
    carrier: str
    tracking: str


class OrderOutcome(BaseModel):
    order_id: str
    charge_id: str
    reservations: list[str]
    shipped_with: str | None


@registry.activity()
def validate(order: Order) -> Order:
    if not order.items:
        raise ValueError(f"order {order.order_id} has no items")
    return order


@registry.activity()
def charge(order: Order) -> str:
    return f"ch_{order.order_id}_{order.amount_cents}"


@registry.activity()
def reserve(item: str) -> str:
    time.sleep(0.01)  # a call to the inventory service
    return f"{item}:reserved"


@registry.orchestrator()
def process_order(ctx: OrchestrationContext, order: Order) -> Orchestrator[OrderOutcome]:
    retry = RetryPolicy(first_interval=timedelta(milliseconds=200), backoff=2.0, max_attempts=4)
    ctx.set_custom_status("validating")
    order = yield ctx.call_activity(validate, order)
    charge_id = yield ctx.call_activity(charge, order, retry=retry)

    ctx.set_custom_status("reserving")
    reservations = yield when_all([ctx.call_activity(reserve, item) for item in order.items])

    ctx.set_custom_status("awaiting shipment")
    try:
        shipment = yield ctx.wait_for_event(
            "Shipped", timeout=timedelta(seconds=3), result_type=Shipment
        )
        shipped_with = f"{shipment.carrier} {shipment.tracking}"
    except EventTimeoutError:
        shipped_with = None
    ctx.set_custom_status("done")
    return OrderOutcome(
        order_id=order.order_id,
        charge_id=charge_id,
        reservations=reservations,
        shipped_with=shipped_with,
    )


ORDERS = [
    Order(order_id="A-100", customer="ada", items=["book", "lamp"], amount_cents=4200),
    Order(order_id="A-101", customer="grace", items=["desk", "chair", "mat"], amount_cents=31900),
    Order(order_id="A-102", customer="linus", items=["pen"], amount_cents=250),
    Order(
        order_id="A-103",
        customer="barbara",
        items=["mug", "tea", "kettle", "tray"],
        amount_cents=7700,
    ),
]
NEVER_SHIPPED = "A-103"


def main() -> None:
    console = Console()
    database = Path(".durable_fx/quickstart.db")
    for leftover in database.parent.glob(database.name + "*"):
        leftover.unlink()
    store = open_store(f"sqlite:///{database}")
    console.print(f"[bold]durable_fx quick start[/] on the embedded SQLite store ({database})")

    with Worker(registry, store), DurableClient(store) as client:
        started = time.perf_counter()
        ids = [client.start(process_order, order, instance_id=order.order_id) for order in ORDERS]
        _ship_when_waiting(client, [i for i in ids if i != NEVER_SHIPPED])
        console.print(f"Order {NEVER_SHIPPED} is never shipped: it waits 3 s, then times out.")
        states = [client.wait(i, timeout=30) for i in ids]
        elapsed = time.perf_counter() - started

        console.print(_outcome_table(states))
        console.print(f"{len(states)} orders finished in {elapsed:.2f} s.\n")
        detailed = client.get(ids[1], history=True)
        assert detailed is not None
        console.print(render_timeline(detailed))
    console.print(
        "Inspect it yourself: .venv/bin/durable-fx --store sqlite:///.durable_fx/quickstart.db list"
    )


def _ship_when_waiting(client: DurableClient, instance_ids: list[str]) -> None:
    """Raise "Shipped" on each order once it waits for it, as a warehouse would."""
    pending = set(instance_ids)
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for instance_id in sorted(pending):
            state = client.get(instance_id)
            if state is not None and state.custom_status == "awaiting shipment":
                shipment = Shipment(carrier="DHL", tracking=f"TRK-{instance_id}")
                client.raise_event(instance_id, "Shipped", shipment)
                pending.discard(instance_id)
        time.sleep(0.02)


def _outcome_table(states: list[Any]) -> Table:
    table = Table(title="Orders")
    for column in ("order", "status", "charge", "reserved", "shipped with"):
        table.add_column(column)
    for state in states:
        if state.status is OrchestrationStatus.COMPLETED:
            outcome = state.output_as(OrderOutcome)
            table.add_row(
                outcome.order_id,
                state.status.value,
                outcome.charge_id,
                str(len(outcome.reservations)),
                outcome.shipped_with or "[yellow]timed out[/]",
            )
        else:
            table.add_row(state.instance_id, state.status.value, "", "", str(state.failure))
    return table


if __name__ == "__main__":
    main()
