"""Durable entities: ids, definitions, and running a batch of operations (issue 17).

The batch runner is pure (``durable_fx._replay.entities``), like the replay
engine: the first tests run it without a store. The rest run entities on
every store through a worker and the client (issue 17, part 2);
orchestrations calling and locking entities come next
(docs/design/entities.md, "Order of work").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    DurableEntity,
    EntityContext,
    EntityId,
    EntityStorageCleanup,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    TaskFailedError,
    Worker,
)
from durable_fx._replay.entities import EntityOperation, run_entity_batch
from durable_fx.history import EntityLockRequested
from durable_fx.storage import OrchestrationMessage
from tests.support.instances import WAIT, wait_until

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@dataclass
class Suppression:
    reason: str
    since: str


registry = Registry()


@registry.entity()
def counter(ctx: EntityContext, amount: int = 1) -> int | None:
    match ctx.operation:
        case "add":
            total = ctx.get_state(int, 0) + amount
            ctx.set_state(total)
            return total
        case "get":
            return ctx.get_state(int, 0)
        case "reset":
            ctx.delete_state()
            return None
        case "set":
            ctx.set_state(amount)
            return amount
        case "add_then_fail":
            ctx.set_state(ctx.get_state(int, 0) + amount)
            ctx.signal_entity(EntityId("counter", "audit"), "add", amount)
            raise RuntimeError("refused after changing things")
    raise ValueError(f"no operation {ctx.operation}")


@registry.orchestrator()
def follow_up(ctx: OrchestrationContext, address: str) -> Orchestrator[str]:
    return address
    yield


@registry.entity(name="Suppressions")
class SuppressionList(DurableEntity):
    def suppress(self, reason: str) -> None:
        self.set_state(Suppression(reason, self.context.now().isoformat()))
        self.start_orchestration(follow_up, self.context.entity_id.key)

    def lift(self) -> None:
        self.delete_state()

    def is_suppressed(self) -> bool:
        return self.get_state(Suppression) is not None

    def remind_later(self, hours: int) -> None:
        later = self.context.now() + timedelta(hours=hours)
        self.signal_entity(self.context.entity_id, "lift", at=later)


def run(name: str, key: str, state: str | None, *operations: EntityOperation) -> Any:
    definition = registry.find_entity(name)
    assert definition is not None
    ids = (f"id-{n}" for n in itertools.count())
    return run_entity_batch(
        definition, EntityId(name, key), state, operations, now=NOW, new_id=lambda: next(ids)
    )


def op(
    operation: str, input: str | None = None, *, caller: str | None = "orch-1"
) -> EntityOperation:
    return EntityOperation(operation, input, request_id=f"r-{operation}", caller=caller)


def test_ids_are_lower_case_names_and_keys_and_round_trip() -> None:
    entity = EntityId("Counter", "Ada@example.com")
    assert (entity.name, entity.key) == ("counter", "Ada@example.com")
    assert entity.instance_id == str(entity) == "@counter@Ada@example.com"
    assert EntityId.parse(entity.instance_id) == entity
    bad_ids = [("", "k"), ("a@b", "k"), ("name", ""), ("name", "k\x00"), ("x" * 257, "k")]
    for bad in [*bad_ids, ("name", "a/b")]:  # "/": no store keys an instance id with it
        with pytest.raises(ValueError, match=r"entity (name|key)"):
            EntityId(*bad)
    for not_an_entity in ("counter@k", "@counter", "plain"):
        with pytest.raises(ValueError, match="not an entity's instance id"):
            EntityId.parse(not_an_entity)


def test_operations_run_in_order_each_on_the_state_the_last_left() -> None:
    outcome = run("counter", "a", None, op("add", "2"), op("add", "3"), op("get"))
    assert [r.output for r in outcome.results] == ["2", "5", "5"]
    assert outcome.state == "5"
    assert [r.request_id for r in outcome.results] == ["r-add", "r-add", "r-get"]


def test_a_failed_operation_is_undone_and_the_batch_goes_on() -> None:
    outcome = run("counter", "a", "10", op("add_then_fail", "5"), op("add", "1"))
    failed, added = outcome.results
    assert failed.failure is not None and failed.failure.error_type == "RuntimeError"
    assert "refused after changing things" in failed.failure.message
    assert failed.output is None
    assert added.output == "11" and outcome.state == "11"  # the failed +5 never happened
    assert outcome.signals == ()  # nor its signal


def test_deleting_the_state_leaves_none() -> None:
    outcome = run("counter", "a", "7", op("reset"), op("get"))
    assert outcome.state is None and outcome.results[1].output == "0"


def test_bad_input_fails_its_operation_only() -> None:
    outcome = run("counter", "a", "1", op("add", '"many"'), op("add", "1"))
    bad, good = outcome.results
    assert bad.failure is not None and bad.failure.error_type == "SerializationError"
    assert good.output == "2"


def test_a_class_entity_dispatches_on_its_methods_with_typed_input() -> None:
    outcome = run(
        "suppressions",
        "ada@example.com",
        None,
        op("Suppress", '"hard bounce"'),
        op("is_suppressed"),
        op("no_such_thing"),
        op("lift", '"unexpected input"'),
    )
    suppress, asked, unknown, lift = outcome.results
    assert suppress.failure is None and asked.output == "true"
    assert unknown.failure is not None and "no operation 'no_such_thing'" in unknown.failure.message
    assert "is_suppressed" in unknown.failure.message  # names the ones it has
    assert lift.failure is not None and "takes no input" in lift.failure.message
    assert outcome.state == '{"reason":"hard bounce","since":"2026-12-07T12:00:00+00:00"}'
    [start] = outcome.starts
    assert (start.name, start.input, start.instance_id) == (
        "follow_up",
        '"ada@example.com"',
        "id-0",
    )


def test_signals_carry_their_target_input_id_and_time() -> None:
    outcome = run("suppressions", "k", None, op("remind_later", "2", caller=None))
    [signal] = outcome.signals
    assert signal.target == EntityId("suppressions", "k")
    assert (signal.operation, signal.input, signal.request_id) == ("lift", None, "id-0")
    assert signal.at == NOW + timedelta(hours=2)
    assert outcome.results[0].caller is None  # a signal: nobody waits for its result


def test_definitions_are_checked_when_registered() -> None:
    app = Registry()
    with pytest.raises(TypeError, match="run synchronously"):

        @app.entity()
        async def slow(ctx: EntityContext) -> None: ...

    with pytest.raises(TypeError, match="must subclass DurableEntity"):

        @app.entity()
        class NotAnEntity:
            def op(self) -> None: ...

    with pytest.raises(TypeError, match="takes 2 inputs"):

        @app.entity()
        def two(ctx: EntityContext, a: int, b: int) -> None: ...

    @app.entity()
    def once(ctx: EntityContext) -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @app.entity(name="ONCE")
        def again(ctx: EntityContext) -> None: ...

    assert app.entity_names == ["once"] and app.find_entity("Once") is not None


def test_signal_times_must_be_timezone_aware() -> None:
    ctx = EntityContext(EntityId("c", "k"), "op", None, NOW, name_of=str)
    with pytest.raises(ValueError, match="timezone-aware"):
        ctx.signal_entity(EntityId("c", "k"), "op", at=datetime(2026, 1, 1))


# -- on a store, through a worker and the client (every store) ---------------------------------


@registry.entity()
def forwarder(ctx: EntityContext, amount: int = 1) -> None:
    """Passes each amount on to a counter and starts an orchestration about it."""
    ctx.signal_entity(EntityId("counter", ctx.entity_id.key), "add", amount)
    ctx.start_orchestration(follow_up, f"forwarded {amount}", instance_id=f"fwd-{amount}")


def state_of(client: DurableClient, entity: EntityId) -> Any:
    found = client.get_entity(entity, int)
    return None if found is None else found.state


def test_signals_run_in_order_and_the_state_is_kept(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    ada = EntityId("counter", "ada")
    assert client.get_entity(ada) is None  # nothing was sent to it yet
    for amount in range(1, 31):
        assert client.signal_entity(ada, "add", amount) is True
    wait_until(lambda: state_of(client, ada) == 465, what="the 30 additions")
    found = client.get_entity(ada, int)
    assert found is not None and found.id == ada and found.state_json == "465"
    assert found.last_modified.tzinfo is not None
    client.signal_entity(ada, "reset")
    wait_until(lambda: client.get_entity(ada) is None, what="the state deleted")


def test_a_request_id_sent_twice_is_applied_once(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    bob = EntityId("counter", "bob")
    assert client.signal_entity(bob, "add", 5, request_id="r-1") is True
    assert client.signal_entity(bob, "add", 5, request_id="r-1") is False
    make_worker(registry)
    wait_until(lambda: state_of(client, bob) == 5, what="the first add")
    # Sent again once the first was run: still remembered.
    assert client.signal_entity(bob, "add", 5, request_id="r-1") is False
    client.signal_entity(bob, "add", 1)
    wait_until(lambda: state_of(client, bob) == 6, what="the next add")


def test_a_delayed_signal_runs_at_its_time(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    later = EntityId("counter", "later")
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    client.signal_entity(later, "add", 7, at=at)
    client.signal_entity(later, "add", 1)
    wait_until(lambda: state_of(client, later) == 1, what="the signal sent for now")
    assert datetime.now(UTC) < at, "the machine was too slow to see the delay"
    wait_until(lambda: state_of(client, later) == 8, what="the delayed signal")
    assert datetime.now(UTC) >= at
    with pytest.raises(ValueError, match="timezone-aware"):
        client.signal_entity(later, "add", 1, at=datetime(2030, 1, 1))


def test_a_failed_operation_changes_nothing_and_the_next_ones_run(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    carol = EntityId("counter", "carol")
    client.signal_entity(carol, "add", 10)
    client.signal_entity(carol, "add_then_fail", 5)
    client.signal_entity(carol, "no_such_operation")
    client.signal_entity(carol, "add", 1)
    wait_until(lambda: state_of(client, carol) == 11, what="the adds around the failures")
    time.sleep(0.3)  # the failed operation's signal to the audit counter would land by now
    assert client.get_entity(EntityId("counter", "audit")) is None


def test_entities_signal_entities_and_start_orchestrations(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    relay = EntityId("forwarder", "dave")
    client.signal_entity(relay, "forward", 2)
    client.signal_entity(relay, "forward", 3)
    wait_until(lambda: state_of(client, EntityId("counter", "dave")) == 5, what="forwarded adds")
    for amount in (2, 3):
        state = client.wait(f"fwd-{amount}", timeout=WAIT)
        assert state.status is OrchestrationStatus.COMPLETED
        assert state.output == f"forwarded {amount}"
    assert client.get_entity(relay) is None  # the forwarder keeps no state


def test_an_unknown_entity_keeps_its_operations_failed_not_lost(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    ghost = EntityId("ghost", "g")
    client.signal_entity(ghost, "anything", 1)
    wait_until(
        lambda: (
            (row := client.get(ghost.instance_id)) is not None
            and row.status is OrchestrationStatus.RUNNING
        ),
        what="the batch the worker could not run",
    )
    assert client.get_entity(ghost) is None


def test_hostile_names_and_ids_are_refused(client: DurableClient) -> None:
    target = EntityId("counter", "k")
    for bad in ("", "x" * 300, "op\x00"):
        with pytest.raises(ValueError, match="invalid operation name"):
            client.signal_entity(target, bad)
    with pytest.raises(ValueError, match="entities'"):
        client.start(follow_up, "x", instance_id="@counter@k")


# -- orchestrations call and signal entities -------------------------------------------------


@registry.orchestrator()
def tally(ctx: OrchestrationContext, key: str) -> Orchestrator[dict[str, Any]]:
    """Adds through calls, signals one more add, and reads the total back."""
    tallied = EntityId("counter", key)
    first = yield ctx.call_entity(tallied, "add", 2)
    second = yield ctx.call_entity(tallied, "add", 3)
    ctx.signal_entity(tallied, "add", 10)
    try:
        yield ctx.call_entity(tallied, "add_then_fail", 100)
        refused = None
    except TaskFailedError as error:
        refused = str(error)
    total = yield ctx.call_entity(tallied, "get", result_type=int)
    return {"first": first, "second": second, "total": total, "refused": refused}


def test_orchestrations_call_entities_and_get_results_or_failures(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    client.start(tally, "erin", instance_id="tally-erin")
    state = client.wait("tally-erin", timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    output = state.output
    # The signal is sent with the episode that makes the failing call, so the
    # entity runs it first: calls from one orchestration arrive in order.
    assert (output["first"], output["second"], output["total"]) == (2, 5, 15)
    assert "refused after changing things" in output["refused"]
    assert state_of(client, EntityId("counter", "erin")) == 15


def test_orchestrations_calling_entities_replay_from_history(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry, cache_size=0)  # every episode replays the history so far
    for n in range(3):
        client.start(tally, f"replay-{n}", instance_id=f"tally-replay-{n}")
    for n in range(3):
        state = client.wait(f"tally-replay-{n}", timeout=WAIT)
        assert state.status is OrchestrationStatus.COMPLETED, state.failure
        assert state.output["total"] == 15
        assert state_of(client, EntityId("counter", f"replay-{n}")) == 15
    detailed = client.get("tally-replay-0", history=True)
    assert detailed is not None and detailed.history is not None
    kinds = [event.kind for event in detailed.history]
    assert kinds.count("EntityOperationCalled") == 4
    assert kinds.count("EntityOperationSignaled") == 1
    assert kinds.count("EntityOperationCompleted") == 3
    assert kinds.count("EntityOperationFailed") == 1


def test_entities_are_listed_apart_from_orchestrations(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    for key in ("q-a1", "q-a2", "q-b1"):
        client.signal_entity(EntityId("counter", key), "add", 1)
    client.signal_entity(EntityId("counter", "q-empty"), "reset")  # never has state
    client.start(follow_up, "x", instance_id="plain-orchestration")
    client.wait("plain-orchestration", timeout=WAIT)
    wait_until(lambda: len(client.query_entities().items) == 3, what="3 entities with state")
    assert [s.instance_id for s in client.query().items] == ["plain-orchestration"]
    keys = sorted(m.id.key for m in client.query_entities(name="Counter", state_type=int).items)
    assert keys == ["q-a1", "q-a2", "q-b1"]
    found = client.query_entities(name="counter", key_prefix="q-a").items
    assert sorted(m.id.key for m in found) == ["q-a1", "q-a2"]
    assert all(m.state == 1 for m in found)
    first = client.query_entities(page_size=2)
    assert len(first.items) <= 2 and first.continuation is not None
    counts = client.count_by_status()  # None where the store cannot count (Azure)
    assert counts is None or sum(counts.values()) == 1, counts  # the orchestration only
    with pytest.raises(ValueError, match="key_prefix needs"):
        client.query_entities(key_prefix="q")


def test_many_callers_signal_one_entity_at_once(
    make_worker: Callable[..., Worker], store: Store, client: DurableClient
) -> None:
    hot = EntityId("counter", "hot")

    async def signal_all() -> list[bool]:
        sender = AsyncDurableClient(store)
        return await asyncio.gather(*(sender.signal_entity(hot, "add", 1) for _ in range(64)))

    assert asyncio.run(signal_all()) == [True] * 64  # none refused as busy
    make_worker(registry)
    wait_until(lambda: state_of(client, hot) == 64, what="the 64 adds")


def test_a_backlog_of_thousands_is_applied_in_full(
    make_worker: Callable[..., Worker], store: Store, client: DurableClient, store_kind: str
) -> None:
    backlog = EntityId("counter", "backlog")
    # More than a lock hands out on Azure (90). SQLite and memory hand out all
    # 6,000 at once, and every one must be consumed: one left behind would be
    # delivered again at each lock, and poisoned after a few.
    count = 1_200 if store_kind == "azure" else 6_000

    async def signal_all() -> None:
        sender = AsyncDurableClient(store)
        gate = asyncio.Semaphore(32)

        async def one() -> None:
            async with gate:
                await sender.signal_entity(backlog, "add", 1)

        await asyncio.gather(*(one() for _ in range(count)))

    asyncio.run(signal_all())
    make_worker(registry)
    wait_until(lambda: state_of(client, backlog) == count, timeout=90, what="every add applied")


# -- critical sections -------------------------------------------------------------------------


@registry.orchestrator()
def increment_under_lock(ctx: OrchestrationContext, key: str) -> Orchestrator[int]:
    """Read, wait, write: without the lock, concurrent ones would lose updates."""
    target = EntityId("counter", key)
    with (yield ctx.lock_entities(target)):
        value = yield ctx.call_entity(target, "get", result_type=int)
        yield ctx.create_timer(timedelta(milliseconds=20))  # others try to get in meanwhile
        yield ctx.call_entity(target, "set", value + 1)
    return int(value + 1)


@registry.orchestrator()
def transfer(ctx: OrchestrationContext, move: list[str]) -> Orchestrator[None]:
    """Move 1 from one counter to another; two locks taken in either order never deadlock."""
    source, target = EntityId("counter", move[0]), EntityId("counter", move[1])
    with (yield ctx.lock_entities(source, target)):
        have = yield ctx.call_entity(source, "get", result_type=int)
        owed = yield ctx.call_entity(target, "get", result_type=int)
        yield ctx.call_entity(source, "set", have - 1)
        yield ctx.call_entity(target, "set", owed + 1)


@registry.orchestrator()
def hold_until_told(ctx: OrchestrationContext, key: str) -> Orchestrator[list[int]]:
    """Reads twice inside a section, around an external event; then fails if asked to."""
    target = EntityId("counter", key)
    with (yield ctx.lock_entities(target)):
        ctx.set_custom_status("locked")
        before = yield ctx.call_entity(target, "get", result_type=int)
        fail = yield ctx.wait_for_event("go")
        after = yield ctx.call_entity(target, "get", result_type=int)
        if fail:
            raise RuntimeError("failed inside the critical section")
    return [before, after]


@registry.orchestrator()
def breaks_the_rules(ctx: OrchestrationContext, rule: str) -> Orchestrator[None]:
    locked, other = EntityId("counter", "rules-a"), EntityId("counter", "rules-b")
    with (yield ctx.lock_entities(locked)):
        if rule == "call another":
            yield ctx.call_entity(other, "get")
        elif rule == "signal the locked":
            ctx.signal_entity(locked, "add", 1)
        else:
            yield ctx.lock_entities(other)


def test_critical_sections_exclude_each_other(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    ids = [client.start(increment_under_lock, "cs", instance_id=f"inc-{n}") for n in range(6)]
    results = sorted(client.wait(i, timeout=WAIT).output for i in ids)
    assert results == [1, 2, 3, 4, 5, 6]  # each saw the last one's write: none was lost
    assert state_of(client, EntityId("counter", "cs")) == 6


def test_sections_locking_the_same_entities_in_any_order_never_deadlock(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    for key in ("left", "right"):
        client.signal_entity(EntityId("counter", key), "set", 10)
    moves = [["left", "right"], ["right", "left"]] * 4
    ids = [client.start(transfer, m, instance_id=f"move-{n}") for n, m in enumerate(moves)]
    for instance_id in ids:
        state = client.wait(instance_id, timeout=WAIT)
        assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state_of(client, EntityId("counter", "left")) == 10
    assert state_of(client, EntityId("counter", "right")) == 10


def test_others_wait_until_the_section_ends_even_when_it_fails(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    held = EntityId("counter", "held")
    client.signal_entity(held, "set", 1)
    client.start(hold_until_told, "held", instance_id="holder")
    wait_until(lambda: getattr(client.get("holder"), "custom_status", None) == "locked")
    client.signal_entity(held, "add", 100)  # waits for the section to end
    client.start(increment_under_lock, "held", instance_id="next-in-line")
    client.raise_event("holder", "go", False)
    state = client.wait("holder", timeout=WAIT)
    assert state.output == [1, 1]  # the signal did not get in between the two reads
    assert client.wait("next-in-line", timeout=WAIT).output == 102
    client.start(hold_until_told, "held", instance_id="failing-holder")
    wait_until(lambda: getattr(client.get("failing-holder"), "custom_status", None) == "locked")
    client.raise_event("failing-holder", "go", True)
    failed = client.wait("failing-holder", timeout=WAIT)
    assert failed.status is OrchestrationStatus.FAILED
    # Its failure released the lock: the next section gets it.
    assert client.wait(client.start(increment_under_lock, "held"), timeout=WAIT).output == 103


@pytest.mark.parametrize("rule", ["call another", "signal the locked", "nest"])
def test_a_section_that_breaks_the_locking_rules_fails_and_releases(
    make_worker: Callable[..., Worker], client: DurableClient, rule: str
) -> None:
    make_worker(registry)
    state = client.wait(client.start(breaks_the_rules, rule), timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None and state.failure.error_type == "ValueError"
    again = client.start(increment_under_lock, "rules-a")
    assert client.wait(again, timeout=WAIT).status is OrchestrationStatus.COMPLETED


def test_a_section_ended_while_it_waited_for_the_lock_never_takes_it(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(registry)
    client.signal_entity(EntityId("counter", "queued"), "set", 1)
    client.start(hold_until_told, "queued", instance_id="first-holder")
    wait_until(lambda: getattr(client.get("first-holder"), "custom_status", None) == "locked")
    client.start(increment_under_lock, "queued", instance_id="gives-up")
    wait_until(
        lambda: (
            "EntityLockRequested"
            in [
                e.kind
                for e in (getattr(client.get("gives-up", history=True), "history", None) or [])
            ]
        )
    )
    client.terminate("gives-up", "no longer needed")  # its request waits in the entity's queue
    assert client.wait("gives-up", timeout=WAIT).status is OrchestrationStatus.TERMINATED
    client.raise_event("first-holder", "go", False)
    client.wait("first-holder", timeout=WAIT)
    # The terminated one's request was dropped: the next section is not stuck behind it.
    assert client.wait(client.start(increment_under_lock, "queued"), timeout=WAIT).output == 2


def test_cleaning_releases_a_lock_whose_holder_is_gone(
    make_worker: Callable[..., Worker], store: Store, client: DurableClient
) -> None:
    make_worker(registry)
    stuck = EntityId("counter", "orphaned")
    client.signal_entity(stuck, "set", 1)
    wait_until(lambda: state_of(client, stuck) == 1)
    # What a lock request still travelling its set when its orchestration ended
    # leaves behind: the entity locked for an orchestration that is gone.
    late = EntityLockRequested(
        timestamp=datetime.now(UTC),
        critical_section_id="cs-of-an-ended-orchestration",
        lock_set=[stuck.instance_id],
        parent_instance_id="ended-long-ago",
    )
    asyncio.run(store.enqueue(OrchestrationMessage(stuck.instance_id, late)))
    client.signal_entity(stuck, "add", 10)  # waits behind the orphaned lock
    time.sleep(0.5)
    assert state_of(client, stuck) == 1
    assert client.clean_entity_storage().orphaned_locks_released == 1
    wait_until(lambda: state_of(client, stuck) == 11, what="the queued add after the release")
    assert client.clean_entity_storage() == EntityStorageCleanup(0, 0)  # nothing left to do


def test_cleaning_removes_empty_entities_and_keeps_the_rest(
    make_worker: Callable[..., Worker], store: Store, client: DurableClient
) -> None:
    make_worker(registry)
    emptied, kept, waiting = (EntityId("counter", key) for key in ("emptied", "kept", "waiting"))
    for entity in (emptied, kept, waiting):
        client.signal_entity(entity, "set", 1)
    wait_until(lambda: all(state_of(client, e) == 1 for e in (emptied, kept, waiting)))
    client.signal_entity(emptied, "reset")
    client.signal_entity(waiting, "reset")
    client.signal_entity(waiting, "add", 5, at=datetime.now(UTC) + timedelta(hours=1))
    wait_until(lambda: state_of(client, emptied) is None and state_of(client, waiting) is None)

    assert client.clean_entity_storage() == EntityStorageCleanup(1, 0)
    assert asyncio.run(store.get_instance(emptied.instance_id)) is None, "not removed"
    # A delayed signal on its way keeps its entity; so does state.
    assert asyncio.run(store.get_instance(waiting.instance_id)) is not None
    assert state_of(client, kept) == 1
    client.signal_entity(emptied, "add", 2)
    wait_until(lambda: state_of(client, emptied) == 2, what="a removed entity signalled again")
    cleaned = client.clean_entity_storage(remove_empty_entities=False)
    assert cleaned == EntityStorageCleanup(0, 0)
