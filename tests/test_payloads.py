"""Payloads: JSON on the wire, rebuilt into the annotated types on each side."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from durable_fx import (
    DurableClient,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    SerializationError,
    TaskFailedError,
    Worker,
)

WAIT = 20.0


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


class Level(enum.IntEnum):
    DEBUG = 10
    ERROR = 40


class Item(BaseModel):
    sku: str
    quantity: int
    price: Decimal


class Order(BaseModel):
    order_id: uuid.UUID
    placed_at: datetime
    priority: Priority
    items: list[Item]
    tags: dict[str, str] = {}


@dataclass
class Address:
    street: str
    city: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Shipment:
    order_id: uuid.UUID
    address: Address
    ship_on: date
    priority: Priority


class Receipt(BaseModel):
    order_id: uuid.UUID
    total: Decimal
    ship_on: date
    priority: Priority
    level: Level


class Opaque:
    """Not JSON: no pydantic schema, not a dataclass."""


ORDER = Order(
    order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed_at=datetime(2024, 5, 17, 9, 30, tzinfo=UTC),
    priority=Priority.HIGH,
    items=[
        Item(sku="A-1", quantity=2, price=Decimal("9.99")),
        Item(sku="B-2", quantity=1, price=Decimal("0.02")),
    ],
    tags={"channel": "web"},
)


def test_models_dataclasses_datetimes_and_enums_round_trip(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def plan_shipment(order: Order) -> Shipment:
        assert isinstance(order, Order), type(order)
        assert isinstance(order.items[0], Item)
        assert order.placed_at.tzinfo is not None
        assert order.priority is Priority.HIGH
        return Shipment(
            order_id=order.order_id,
            address=Address("1 Main St", "Springfield", ["Apt 2"]),
            ship_on=(order.placed_at + timedelta(days=1)).date(),
            priority=order.priority,
        )

    @registry.activity()
    def bill(shipment: Shipment) -> Receipt:
        assert isinstance(shipment, Shipment), type(shipment)
        assert isinstance(shipment.address, Address)
        assert isinstance(shipment.ship_on, date)
        return Receipt(
            order_id=shipment.order_id,
            total=Decimal("20.00"),
            ship_on=shipment.ship_on,
            priority=shipment.priority,
            level=Level.ERROR,
        )

    @registry.orchestrator()
    def fulfil(ctx: OrchestrationContext, order: Order) -> Orchestrator[Receipt]:
        assert isinstance(order, Order), type(order)
        shipment = yield ctx.call_activity(plan_shipment, order)
        assert isinstance(shipment, Shipment), type(shipment)
        assert shipment.address.lines == ["Apt 2"]
        receipt = yield ctx.call_activity(bill, shipment)
        assert isinstance(receipt, Receipt), type(receipt)
        assert receipt.level is Level.ERROR
        return receipt

    iid = client.start(fulfil, ORDER)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    receipt = state.output_as(Receipt)
    assert receipt == Receipt(
        order_id=ORDER.order_id,
        total=Decimal("20.00"),
        ship_on=date(2024, 5, 18),
        priority=Priority.HIGH,
        level=Level.ERROR,
    )
    # The client sees JSON values; output_as rebuilds the model.
    assert state.output["order_id"] == str(ORDER.order_id)
    assert Order.model_validate(state.input) == ORDER


def test_builtin_collections_round_trip(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def summarize(values: dict[str, list[int]]) -> dict[str, tuple[int, float]]:
        assert all(isinstance(v, list) for v in values.values())
        return {k: (sum(v), sum(v) / len(v)) for k, v in values.items()}

    @registry.activity()
    def stamp(when: datetime) -> list[datetime]:
        assert isinstance(when, datetime)
        return [when, when + timedelta(hours=1)]

    @registry.orchestrator()
    def collections(ctx: OrchestrationContext, values: dict[str, list[int]]) -> Orchestrator[Any]:
        summary = yield ctx.call_activity(summarize, values)
        assert summary["a"] == (6, 2.0), summary
        stamps = yield ctx.call_activity(stamp, ctx.current_utc_datetime)
        assert all(isinstance(s, datetime) for s in stamps)
        return {"summary": summary, "gap": (stamps[1] - stamps[0]).total_seconds()}

    state = client.wait(client.start(collections, {"a": [1, 2, 3], "b": [10]}), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"summary": {"a": [6, 2.0], "b": [10, 10.0]}, "gap": 3600.0}


def test_output_as_rebuilds_dataclasses_and_builtins(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def address(ctx: OrchestrationContext) -> Address:
        return Address("2 Side St", "Shelbyville")

    state = client.wait(client.start(address), timeout=WAIT)
    assert state.output_as(Address) == Address("2 Side St", "Shelbyville")
    assert state.output_as(dict) == {"street": "2 Side St", "city": "Shelbyville", "lines": []}
    with pytest.raises(SerializationError, match="Order"):
        state.output_as(Order)


def test_untyped_activity_gets_plain_json(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def untyped(value) -> Any:  # type: ignore[no-untyped-def]  # untyped on purpose
        return {"type": type(value).__name__, "value": value}

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(untyped, Address("x", "y")))

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"type": "dict", "value": {"street": "x", "city": "y", "lines": []}}


def test_parameter_defaults_apply_when_no_input_is_given(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def greet(name: str = "world") -> str:
        return f"hello {name}"

    @registry.orchestrator()
    def greeter(ctx: OrchestrationContext, times: int = 2) -> Orchestrator[list[str]]:
        defaulted = yield ctx.call_activity(greet)
        given = yield ctx.call_activity(greet, "ada")
        return [defaulted, given] * times

    state = client.wait(client.start(greeter), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["hello world", "hello ada"] * 2
    state = client.wait(client.start(greeter, 1), timeout=WAIT)
    assert state.output == ["hello world", "hello ada"]


def test_sub_orchestrator_output_is_rebuilt(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def child(ctx: OrchestrationContext, order: Order) -> Orchestrator[Shipment]:
        yield ctx.create_timer(timedelta(0))
        return Shipment(order.order_id, Address("s", "c"), date(2024, 1, 2), order.priority)

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext, order: Order) -> Orchestrator[Any]:
        shipment = yield ctx.call_sub_orchestrator(child, order)
        assert isinstance(shipment, Shipment), type(shipment)
        return shipment.ship_on.isoformat()

    state = client.wait(client.start(parent, ORDER), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "2024-01-02"


def test_activity_returning_an_unserializable_value_fails_the_task(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def leaky() -> Any:
        return Opaque()

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity(leaky)
        except TaskFailedError as error:
            return {"type": error.error_type, "message": error.message}
        return "no error"

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["type"] == "SerializationError"
    assert "Opaque" in state.output["message"]


def test_start_with_an_unserializable_input_raises(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext, value: Any) -> Any:
        return value

    with pytest.raises(SerializationError, match="Opaque") as raised:
        client.start(orchestrate, Opaque(), instance_id="never-created")
    assert raised.value.type_name is not None and raised.value.type_name.endswith("Opaque")
    assert client.get("never-created") is None


def test_raise_event_with_unserializable_data_raises(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
) -> None:
    @registry.orchestrator()
    def waits(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("e"))

    iid = client.start(waits)
    with pytest.raises(SerializationError, match="Opaque"):
        client.raise_event(iid, "e", Opaque())
    client.raise_event(iid, "e", "fine")
    assert client.wait(iid, timeout=WAIT).output == "fine"


def test_orchestrator_input_not_matching_its_annotation_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def typed(ctx: OrchestrationContext, order: Order) -> str:
        return str(order.order_id)

    bad = {"order_id": "not-a-uuid"}
    state = client.wait(client.start(typed, bad), timeout=WAIT)  # type: ignore[arg-type]
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "SerializationError"
    assert "does not match Order" in state.failure.message
    assert "order_id" in state.failure.message
    assert "placed_at" in state.failure.message


def test_activity_input_not_matching_its_annotation_fails_the_task(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    calls: list[object] = []

    @registry.activity()
    def needs_order(order: Order) -> None:
        calls.append(order)

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.call_activity(needs_order, {"items": "nope"})  # type: ignore[arg-type]
        except TaskFailedError as error:
            return {"type": error.error_type, "message": error.message}
        return "no error"

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["type"] == "SerializationError"
    assert "does not match Order" in state.output["message"]
    assert calls == []


def test_orchestrator_returning_an_unserializable_value_fails(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def leaky(ctx: OrchestrationContext) -> Any:
        return Opaque()

    state = client.wait(client.start(leaky), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "SerializationError"
    assert "Opaque" in state.failure.message


def test_scheduling_with_an_unserializable_input_raises_in_the_orchestrator(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.activity()
    def anything(value: Any) -> Any:
        return value

    @registry.orchestrator()
    def orchestrate(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            ctx.call_activity(anything, Opaque())
        except SerializationError as error:
            caught = str(error)
        else:
            caught = "nothing"
        try:
            ctx.set_custom_status(Opaque())
        except SerializationError as error:
            status_error = str(error)
        else:
            status_error = "nothing"
        result = yield ctx.call_activity(anything, "after")
        return {"caught": caught, "status_error": status_error, "result": result}

    state = client.wait(client.start(orchestrate), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert "Opaque" in state.output["caught"]
    assert "Opaque" in state.output["status_error"]
    assert state.output["result"] == "after"
