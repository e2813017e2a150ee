"""Durable timers, external events (buffering, timeouts, typing) and send_event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from durable_fx import (
    DurableClient,
    EventTimeoutError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    Worker,
    when_all,
    when_any,
)
from tests.support.instances import custom_status_of, history_kinds

WAIT = 20.0
SHORT = timedelta(seconds=0.2)


def test_timer_with_timedelta(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def sleeper(ctx: OrchestrationContext) -> Orchestrator[Any]:
        before = ctx.current_utc_datetime
        yield ctx.create_timer(SHORT)
        return [before.isoformat(), ctx.current_utc_datetime.isoformat()]

    started = time.monotonic()
    state = client.wait(client.start(sleeper), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert time.monotonic() - started >= SHORT.total_seconds()
    before, after = (datetime.fromisoformat(v) for v in state.output)
    assert after >= before + SHORT


def test_timer_with_datetime(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def sleeper(ctx: OrchestrationContext) -> Orchestrator[Any]:
        fire_at = ctx.current_utc_datetime + SHORT
        yield ctx.create_timer(fire_at)
        return [fire_at.isoformat(), ctx.current_utc_datetime.isoformat()]

    state = client.wait(client.start(sleeper), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    fire_at, after = (datetime.fromisoformat(v) for v in state.output)
    assert after >= fire_at
    history = client.get(state.instance_id, history=True)
    assert history is not None and history.history is not None
    kinds = [e.kind for e in history.history]
    assert "TimerCreated" in kinds
    assert "TimerFired" in kinds


def test_timer_in_the_past_fires_at_once(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def past(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.create_timer(ctx.current_utc_datetime - timedelta(hours=1))
        return "done"

    state = client.wait(client.start(past), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "done"


def test_naive_datetime_timer_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def naive(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.create_timer(datetime(2030, 1, 1))

    state = client.wait(client.start(naive), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "timezone-aware" in state.failure.message


def test_concurrent_timers(registry: Registry, worker: Worker, client: DurableClient) -> None:
    @registry.orchestrator()
    def many(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_all([ctx.create_timer(timedelta(milliseconds=50 * i)) for i in range(1, 6)])
        return "all fired"

    state = client.wait(client.start(many), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "all fired"


def test_wait_for_event_returns_data(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def waiter(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("waiting")
        data = yield ctx.wait_for_event("Approval")
        return data

    iid = client.start(waiter)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.raise_event(iid, "Approval", {"approved": True, "by": "ana"})
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"approved": True, "by": "ana"}


def test_events_raised_before_the_wait_are_buffered_in_order(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def buffered(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("gated")
        yield ctx.wait_for_event("go")
        first = yield ctx.wait_for_event("A")
        second = yield ctx.wait_for_event("A")
        return [first, second]

    iid = client.start(buffered)
    wait_until(lambda: custom_status_of(client, iid) == "gated")
    client.raise_event(iid, "A", 1)
    # A second episode for the second A, so buffering works across episodes too.
    wait_until(lambda: history_kinds(client, iid).count("EventRaised") == 1)
    client.raise_event(iid, "A", 2)
    wait_until(lambda: history_kinds(client, iid).count("EventRaised") == 2)
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [1, 2]


def test_events_raised_before_the_instance_runs_are_kept(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def early(ctx: OrchestrationContext) -> Orchestrator[Any]:
        got = []
        for _ in range(3):
            got.append((yield ctx.wait_for_event("item")))
        return got

    iid = client.start(early)
    for i in range(3):
        client.raise_event(iid, "item", i)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [0, 1, 2]


def test_two_waiters_for_one_name_get_events_in_order(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def two(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("waiting")
        results = yield when_all([ctx.wait_for_event("x"), ctx.wait_for_event("x")])
        return results

    iid = client.start(two)
    wait_until(lambda: custom_status_of(client, iid) == "waiting")
    client.raise_event(iid, "x", "first")
    client.raise_event(iid, "x", "second")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["first", "second"]


def test_event_timeout_raises_at_the_yield(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def impatient(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.wait_for_event("Never", timeout=SHORT)
        except EventTimeoutError as error:
            return {
                "event": error.event_name,
                "seconds": error.timeout_seconds,
                "is_timeout": isinstance(error, TimeoutError),
            }
        return "no timeout"

    state = client.wait(client.start(impatient), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"event": "Never", "seconds": 0.2, "is_timeout": True}


def test_uncaught_event_timeout_fails_the_instance(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def impatient(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("Never", timeout=SHORT)

    state = client.wait(client.start(impatient), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "EventTimeoutError"
    assert "'Never'" in state.failure.message


def test_event_before_the_timeout_wins(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def racer(ctx: OrchestrationContext) -> Orchestrator[Any]:
        got = yield ctx.wait_for_event("reply", timeout=SHORT)
        # Outlive the timeout: its timer still fires, and must change nothing.
        yield ctx.create_timer(SHORT * 2)
        return got

    iid = client.start(racer)
    client.raise_event(iid, "reply", "in time")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "in time"


def test_waiting_again_after_a_timeout(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def retrying(ctx: OrchestrationContext) -> Orchestrator[Any]:
        try:
            yield ctx.wait_for_event("ping", timeout=timedelta(milliseconds=50))
        except EventTimeoutError:
            ctx.set_custom_status("timed out")
        got = yield ctx.wait_for_event("ping")
        return got

    iid = client.start(retrying)
    wait_until(lambda: custom_status_of(client, iid) == "timed out")
    client.raise_event(iid, "ping", "late")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "late"


def test_event_names_are_case_insensitive(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def approvals(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = yield ctx.wait_for_event("Approval")
        second = yield ctx.wait_for_event("APPROVAL")
        return [first, second]

    iid = client.start(approvals)
    client.raise_event(iid, "approval", 1)
    client.raise_event(iid, "aPPROVAL", 2)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [1, 2]


class Receipt(BaseModel):
    message_id: str
    delivered: bool
    attempts: int = 1


def test_result_type_rebuilds_a_model(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def typed(ctx: OrchestrationContext) -> Orchestrator[Any]:
        receipt = yield ctx.wait_for_event("receipt", result_type=Receipt)
        assert isinstance(receipt, Receipt)
        return {"id": receipt.message_id, "delivered": receipt.delivered, "n": receipt.attempts}

    iid = client.start(typed)
    client.raise_event(iid, "receipt", Receipt(message_id="m-1", delivered=True))
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"id": "m-1", "delivered": True, "n": 1}


def test_event_not_matching_result_type_fails_the_wait(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def typed(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield ctx.wait_for_event("receipt", result_type=Receipt)

    iid = client.start(typed)
    client.raise_event(iid, "receipt", {"unexpected": 1})
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "receipt" in state.failure.message
    assert "Receipt" in state.failure.message
    assert "message_id" in state.failure.message


def test_send_event_between_orchestrations(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def receiver(ctx: OrchestrationContext) -> Orchestrator[Any]:
        got = yield ctx.wait_for_event("ping")
        return got

    @registry.orchestrator()
    def sender(ctx: OrchestrationContext, target: str) -> Orchestrator[Any]:
        ctx.send_event(target, "ping", {"from": ctx.instance_id})
        yield when_all([])
        return "sent"

    receiver_id = client.start(receiver, instance_id="receiver-1")
    sender_id = client.start(sender, receiver_id, instance_id="sender-1")
    assert client.wait(sender_id, timeout=WAIT).output == "sent"
    state = client.wait(receiver_id, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"from": "sender-1"}
    sent = client.get(sender_id, history=True)
    assert sent is not None and sent.history is not None
    assert [e.kind for e in sent.history].count("EventSent") == 1


def test_raise_event_with_event_id_is_idempotent_while_pending(
    registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    @registry.orchestrator()
    def collect(ctx: OrchestrationContext) -> Orchestrator[Any]:
        items = []
        while True:
            try:
                items.append((yield ctx.wait_for_event("item", timeout=SHORT)))
            except EventTimeoutError:
                return items

    # No worker yet, so every event is still pending when the next one arrives.
    iid = client.start(collect)
    client.raise_event(iid, "item", "a", event_id="e1")
    client.raise_event(iid, "item", "a", event_id="e1")
    client.raise_event(iid, "item", "b", event_id="e2")
    make_worker()
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["a", "b"]


def test_timer_survives_a_worker_restart(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    wait_until: Callable[..., Any],
) -> None:
    @registry.orchestrator()
    def sleeper(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.set_custom_status("sleeping")
        yield ctx.create_timer(SHORT)
        try:
            yield ctx.wait_for_event("never", timeout=SHORT)
        except EventTimeoutError:
            return "timer and timeout fired"

    worker = make_worker()
    iid = client.start(sleeper)
    wait_until(lambda: custom_status_of(client, iid) == "sleeping")
    worker.stop()
    make_worker()
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "timer and timeout fired"


def test_send_event_to_an_unknown_instance_does_not_fail_the_sender(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def sender(ctx: OrchestrationContext) -> Orchestrator[Any]:
        ctx.send_event("nobody-home", "ping", 1)
        yield ctx.create_timer(timedelta(0))
        return "sent"

    state = client.wait(client.start(sender), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "sent"
    assert client.get("nobody-home") is None


# -- cancelled timers --------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)
def test_timers_that_can_no_longer_matter_never_wake_the_instance(
    store: Store, registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    """An answered wait's timeout, a finished activity's, a pending timer at the end: all gone.

    (The Azure store's timer index is checked in test_azure_timers.py.)
    """
    day = timedelta(days=1)

    @registry.activity()
    def quick(n: int) -> int:
        return n

    @registry.orchestrator()
    def tidy(ctx: OrchestrationContext) -> Orchestrator[Any]:
        answer = yield ctx.wait_for_event("go", timeout=day)
        doubled = yield ctx.call_activity(quick, answer * 2, timeout=day)
        nap = ctx.create_timer(day)
        go = ctx.wait_for_event("stop")
        yield when_any([nap, go])  # the event wins; the timer is pending when it returns
        return doubled

    worker = make_worker()
    iid = client.start(tidy)
    client.raise_event(iid, "go", 21)
    client.raise_event(iid, "stop")
    state = client.wait(iid, timeout=WAIT)
    assert state.output == 42
    assert history_kinds(client, iid).count("TimerCreated") == 3
    worker.stop()
    batch = asyncio.run(store.lock_orchestrations(owner="probe", limit=10, lease=day))
    assert batch.items == [] and batch.next_due is None, batch


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)
def test_a_timer_that_lost_a_when_any_is_cancelled_while_the_instance_runs_on(
    store: Store, registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    """The event won: the day-long timer it raced is deleted, not left to wake the instance."""
    day = timedelta(days=1)

    @registry.orchestrator()
    def raced(ctx: OrchestrationContext) -> Orchestrator[Any]:
        yield when_any([ctx.wait_for_event("go"), ctx.create_timer(day)])
        ctx.set_custom_status("raced")
        yield ctx.wait_for_event("finish")  # still running, with nothing due
        return "done"

    worker = make_worker()
    iid = client.start(raced)
    client.raise_event(iid, "go")
    deadline = time.monotonic() + WAIT
    while custom_status_of(client, iid) != "raced" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert custom_status_of(client, iid) == "raced"
    worker.stop()
    batch = asyncio.run(store.lock_orchestrations(owner="probe", limit=10, lease=day))
    assert batch.items == [] and batch.next_due is None, batch
    make_worker()
    client.raise_event(iid, "finish")
    assert client.wait(iid, timeout=WAIT).output == "done"


def test_a_timer_the_code_still_holds_fires_after_losing_a_when_any(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    """A deadline raced in a loop loses every round but the last, and still fires."""

    @registry.orchestrator()
    def until_deadline(ctx: OrchestrationContext) -> Orchestrator[int]:
        deadline = ctx.create_timer(SHORT * 3)
        ticks = 0
        while True:
            winner = yield when_any([ctx.wait_for_event("tick"), deadline])
            if winner is deadline:
                return ticks
            ticks += 1

    iid = client.start(until_deadline)
    client.raise_event(iid, "tick")
    client.raise_event(iid, "tick")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == 2
