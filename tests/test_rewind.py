"""Rewind: a failed instance runs on from where it failed, keeping its successful results."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    InstanceNotFoundError,
    InvalidOperationError,
    OrchestrationContext,
    OrchestrationState,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    Store,
    Worker,
    when_all,
)
from durable_fx.storage import EpisodeCommit, OrchestrationWorkItem
from tests.support.instances import history_kinds, status_of, wait_until
from tests.support.spans import Spans

WAIT = 20.0


class Outage:
    """Activities fail while it lasts; counts every call by key."""

    def __init__(self) -> None:
        self.down = True
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def call(self, key: str) -> None:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
        if self.down:
            raise ConnectionError(f"{key}: the provider is down")


def _failed(client: DurableClient, iid: str) -> None:
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED, state


def _rewind(client: DurableClient, iid: str, reason: str | None = None) -> OrchestrationState:
    """Rewind ``iid``; its state once it has finished again."""
    client.rewind(iid, reason)
    # The store set it RUNNING as it took the rewind: this wait sees the new outcome.
    return client.wait(iid, timeout=WAIT)


def _register_send(registry: Registry, outage: Outage) -> Callable[[str], str]:
    """The ``send`` activity: fails while ``outage`` lasts."""

    @registry.activity()
    def send(text: str) -> str:
        outage.call(text)
        return f"sent: {text}"

    return send


def _register_send_once(registry: Registry, outage: Outage) -> None:
    """``once``: an orchestration of one ``send("x")``."""
    send = _register_send(registry, outage)

    @registry.orchestrator()
    def once(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_activity(send, "x"))


def test_a_failed_activity_runs_again_and_successful_ones_do_not(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    outage = Outage()

    @registry.activity()
    def prepare(order: str) -> str:
        outage.calls[f"prepare {order}"] = outage.calls.get(f"prepare {order}", 0) + 1
        return f"{order} prepared"

    @registry.activity()
    def send(text: str) -> str:
        outage.call("send")
        return f"sent: {text}"

    @registry.orchestrator()
    def order(ctx: OrchestrationContext, name: str) -> Orchestrator[Any]:
        prepared = yield ctx.call_activity(prepare, name)
        return (yield ctx.call_activity(send, prepared))

    iid = client.start(order, "o-1")
    _failed(client, iid)
    assert "the provider is down" in str(client.get(iid).failure)  # type: ignore[union-attr]
    outage.down = False
    state = _rewind(client, iid, "provider is back")
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "sent: o-1 prepared"
    assert outage.calls == {"prepare o-1": 1, "send": 2}
    assert "ExecutionRewound" in history_kinds(client, iid)


def test_rewind_gives_a_retried_activity_one_more_attempt(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    outage = Outage()
    retry = RetryPolicy(first_interval=timedelta(milliseconds=20), max_attempts=2)

    @registry.activity()
    def send(text: str) -> str:
        outage.call("send")
        return f"sent: {text}"

    @registry.orchestrator()
    def retried(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = yield ctx.call_activity(send, "a", retry=retry)
        second = yield ctx.call_activity(send, "b")
        return f"{first}; {second}"

    iid = client.start(retried)
    _failed(client, iid)
    assert outage.calls == {"send": 2}
    outage.down = False
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "sent: a; sent: b"
    assert outage.calls == {"send": 4}  # 2 failed, the rewound attempt, then "b"
    # The first attempt and its retry timer stay: the ids after them stay aligned.
    kinds = history_kinds(client, iid)
    assert kinds.count("TaskFailed") == 1
    assert kinds.count("TimerFired") == 1


def test_a_fan_out_completes_with_every_branch_run_at_most_twice(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()
    broken = {2, 5}

    @registry.activity()
    def square(n: int) -> int:
        with lock:
            calls[n] = calls.get(n, 0) + 1
        if n in broken:
            raise ValueError(f"cannot square {n} today")
        return n * n

    @registry.orchestrator()
    def squares(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield when_all([ctx.call_activity(square, n) for n in range(8)]))

    iid = client.start(squares)
    _failed(client, iid)
    broken.clear()
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [n * n for n in range(8)]
    # when_all fails on the first failure; results that came after the instance
    # failed were dropped with it, so those branches run again too, once.
    assert calls[2] == calls[5] == 2
    assert max(calls.values()) == 2


def test_a_failure_of_an_attempt_still_running_as_the_instance_failed_does_not_count(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    """The rewind sent ``slow`` again; the attempt that outlived the failed run is no answer.

    That attempt decided to fail before the rewind and reports after it: the
    rewound instance must wait for the attempt it sent (CI saw the fan-out
    test fail this way, one run in many).
    """
    outage = Outage()
    attempts: list[bool] = []  # whether the provider was down as each slow attempt began
    lock = threading.Lock()
    first_began, first_may_end, first_ended = (threading.Event() for _ in range(3))
    second_began, second_may_end = threading.Event(), threading.Event()

    @registry.activity()
    def fast(_: None) -> str:
        if outage.down:  # fail the instance only once slow's first attempt runs
            first_began.wait(WAIT)
        outage.call("fast")
        return "fast"

    @registry.activity()
    def slow(_: None) -> str:
        with lock:
            attempts.append(outage.down)
            number = len(attempts)
        if number == 1:
            first_began.set()
            first_may_end.wait(WAIT)
            first_ended.set()
            raise ConnectionError("slow: the provider was down when this attempt began")
        second_began.set()
        second_may_end.wait(WAIT)
        return "slow"

    @registry.orchestrator()
    def pair(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield when_all([ctx.call_activity(fast, None), ctx.call_activity(slow, None)]))

    iid = client.start(pair)
    _failed(client, iid)  # fast failed; the first slow attempt still runs
    outage.down = False
    client.rewind(iid)
    assert second_began.wait(WAIT), "the rewind did not send slow again"
    first_may_end.set()
    assert first_ended.wait(WAIT)
    with pytest.raises(TimeoutError):  # the old attempt's failure does not end it
        client.wait(iid, timeout=1.0)
    second_may_end.set()
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["fast", "slow"]
    assert attempts == [True, False]


def test_a_sub_orchestration_still_running_answers_the_rewound_parent(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    """The rewind does not start a running child again: its answer to the replaced run counts."""
    outage = Outage()

    @registry.activity()
    def fast(_: None) -> str:
        outage.call("fast")
        return "fast"

    @registry.orchestrator()
    def waiter(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("go"))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (
            yield when_all(
                [
                    ctx.call_activity(fast, None),
                    ctx.call_sub_orchestrator(waiter, instance_id="the-waiter"),
                ]
            )
        )

    iid = client.start(parent)
    _failed(client, iid)
    wait_until(lambda: status_of(client, "the-waiter") is OrchestrationStatus.RUNNING)
    outage.down = False
    client.rewind(iid)
    client.raise_event("the-waiter", "go", "went")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["fast", "went"]


@pytest.mark.parametrize("purged", [False, True], ids=["failed-child", "purged-child"])
def test_an_awaited_sub_orchestration_is_rewound_or_started_again(
    registry: Registry, worker: Worker, client: DurableClient, purged: bool
) -> None:
    outage = Outage()
    send = _register_send(registry, outage)

    @registry.orchestrator()
    def child(ctx: OrchestrationContext, text: str) -> Orchestrator[Any]:
        return (yield ctx.call_activity(send, text))

    @registry.orchestrator()
    def parent(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.call_sub_orchestrator(child, "hello", instance_id="the-child"))

    iid = client.start(parent)
    _failed(client, iid)
    assert status_of(client, "the-child") is OrchestrationStatus.FAILED
    if purged:
        assert client.purge("the-child") == 1
    outage.down = False
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "sent: hello"
    assert status_of(client, "the-child") is OrchestrationStatus.COMPLETED


def test_after_a_fix_is_deployed_the_code_runs_on(
    registry: Registry, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    @registry.activity()
    def price(item: str) -> int:
        return len(item)

    @registry.orchestrator(name="checkout")
    def buggy(ctx: OrchestrationContext, item: str) -> Orchestrator[Any]:
        cents = yield ctx.call_activity(price, item)
        raise ZeroDivisionError(f"{cents} / 0")

    old = make_worker()
    iid = client.start("checkout", "book")
    _failed(client, iid)
    old.stop()

    fixed = Registry()
    fixed.activity(name="price")(lambda item: 1000)  # must not run again: the result is kept

    @fixed.orchestrator(name="checkout")
    def checkout(ctx: OrchestrationContext, item: str) -> Orchestrator[Any]:
        cents = yield ctx.call_activity("price", item)
        return f"{item}: {cents}"

    make_worker(fixed)
    state = _rewind(client, iid, "deployed the fix")
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "book: 4"


def test_an_instance_can_be_rewound_twice(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    outage = Outage()
    _register_send_once(registry, outage)

    iid = client.start("once")
    _failed(client, iid)
    assert _rewind(client, iid).status is OrchestrationStatus.FAILED
    outage.down = False
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert outage.calls == {"x": 3}
    assert history_kinds(client, iid).count("ExecutionRewound") == 2


def test_values_the_code_made_before_the_failure_are_the_same_after_the_rewind(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    """A rewound run has a new execution id; its replay still makes the uuids it made."""
    outage = Outage()
    sent: list[str] = []

    @registry.activity()
    def send(key: str) -> str:
        sent.append(key)
        outage.call("send")
        return key

    @registry.orchestrator()
    def keyed(ctx: OrchestrationContext) -> Orchestrator[Any]:
        key = str(ctx.new_uuid())
        echoed = yield ctx.call_activity(send, key)
        return [key, echoed]

    iid = client.start(keyed)
    _failed(client, iid)
    outage.down = False
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert len(sent) == 2 and state.output == [sent[0], sent[0]] == [sent[1], sent[1]]


def test_a_wait_after_a_rewind_is_not_ended_by_the_run_before(
    registry: Registry, worker: Worker, client: DurableClient, spans: Spans
) -> None:
    """The worker tells waiters of a failure after its commit; the rewind may come between.

    A slow span export holds that notice while the client sees the failure,
    rewinds and waits again: the notice is of the run before, and the wait
    must go on to the rewound run's end (CI saw this wait return FAILED).
    """
    outage = Outage()
    _register_send_once(registry, outage)
    spans.slow_down("orchestration:once", 0.5)

    iid = client.start("once")
    _failed(client, iid)  # read from the store; the worker still ends the execution's span
    outage.down = False
    state = _rewind(client, iid)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "sent: x"


def test_rewind_sent_twice_at_once_rewinds_once(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    outage = Outage()
    _register_send_once(registry, outage)

    iid = client.start("once")
    _failed(client, iid)
    outage.down = False
    with ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(client.rewind, iid) for _ in range(2)]
        errors = [a.exception() for a in answers]
    refused = [e for e in errors if isinstance(e, InvalidOperationError)]
    assert len(refused) == 1 and errors.count(None) == 1, errors
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert outage.calls == {"x": 2}
    assert history_kinds(client, iid).count("ExecutionRewound") == 1


def test_only_a_failed_instance_can_be_rewound(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def waits(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("go"))

    iid = client.start(waits)
    with pytest.raises(InvalidOperationError, match="only a FAILED instance can be rewound"):
        client.rewind(iid)
    client.raise_event(iid, "go", 1)
    client.wait(iid, timeout=WAIT)
    with pytest.raises(InvalidOperationError, match="is COMPLETED"):
        client.rewind(iid)
    with pytest.raises(InstanceNotFoundError):
        client.rewind("no-such-instance")


class _CommitsHeldWhileFailed:
    """A store whose commits for a FAILED instance wait until ``go`` (the rest delegated)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.waiting = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit_episode(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> str:
        if item.instance.status is OrchestrationStatus.FAILED and not self.go.is_set():
            self.waiting.set()
            await asyncio.to_thread(self.go.wait, WAIT)
        return await self.inner.commit_episode(item, commit)


def test_a_rewind_accepted_under_a_workers_lock_runs_at_once(
    store: Store,
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
) -> None:
    """The worker was writing off a late result of the FAILED instance when the rewind came.

    Its commit conflicts (the rewind moved the row on): it must let go of the
    lock so the rewind runs now, not when its lease runs out a minute later.
    """
    outage, late = Outage(), threading.Event()

    @registry.activity()
    def send(key: str) -> str:
        outage.call(key)
        return f"sent: {key}"

    @registry.activity()
    def slow(_: None) -> str:
        late.wait(WAIT)
        return "late"

    @registry.orchestrator()
    def pair(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield when_all([ctx.call_activity(send, "a"), ctx.call_activity(slow, None)]))

    held = _CommitsHeldWhileFailed(store)
    make_worker(on=held)
    iid = client.start(pair)
    _failed(client, iid)
    late.set()  # slow's result reaches the FAILED instance: its episode waits to commit
    assert held.waiting.wait(WAIT)
    outage.down = False
    client.rewind(iid, "the provider is back")
    held.go.set()
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == ["sent: a", "late"]
