"""The store conformance suite: instances, inboxes and orchestration episodes.

Each check builds a fresh store from a factory, drives it through the Store
protocol only, and asserts one guarantee of the storage contract
(docs/design/storage-contract.md).
Activity and poisoning checks live in ``_store_conformance_work``, those of
id reuse and remembered message keys in ``_store_conformance_keys``, those of
requeueing and deleting poisoned messages in ``_store_conformance_poison``, query,
housekeeping and concurrency checks in ``_store_conformance_reads``;
``STORE_CHECKS`` lists them all. Over 500 lines because it is a flat list of
independent checks, each a few lines, grouped by the guarantee they test.
"""

from __future__ import annotations

from datetime import timedelta

from .._errors import (
    ConflictError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
)
from .._history import (
    EntityOperationSignaled,
    EventRaised,
    ExecutionStarted,
    FailureDetails,
    OrchestratorStarted,
    ParentInstance,
    TaskScheduled,
    TimerFired,
)
from .._state import OrchestrationStatus
from ..storage import InstanceQuery, InstanceRecord, OrchestrationMessage
from ._store_conformance_keys import KEY_CHECKS
from ._store_conformance_poison import POISON_CHECKS
from ._store_conformance_reads import READ_CHECKS
from ._store_conformance_work import WORK_CHECKS
from ._store_harness import (
    LEASE,
    PAST_LEASE,
    StoreCheck,
    StoreFactory,
    expect_raises,
    fresh_store,
)

__all__ = ["STORE_CHECKS", "check_store"]

_TERMINAL = (
    OrchestrationStatus.COMPLETED,
    OrchestrationStatus.FAILED,
    OrchestrationStatus.TERMINATED,
)
_FINISHED = frozenset(_TERMINAL)


# -- instances ----------------------------------------------------------------


async def check_create_get_round_trips_every_field(factory: StoreFactory) -> None:
    """An instance row reads back exactly as created, then exactly as committed."""
    async with fresh_store(factory) as h:
        at = h.clock.advance(timedelta(microseconds=123_457))
        parent = ParentInstance(
            instance_id="parent", execution_id="p1", name="pw", task_scheduled_id=3
        )
        await h.start("child", name="child-wf", execution_id="c1", input='"héllo ✓"', parent=parent)
        created = await h.store.get_instance("child")
        assert created is not None, "create_instance stored nothing"
        assert isinstance(created.version, str) and created.version, "version must be non-empty"
        expected = InstanceRecord(
            instance_id="child",
            name="child-wf",
            execution_id="c1",
            status=OrchestrationStatus.PENDING,
            created_at=at,
            updated_at=at,
            input='"héllo ✓"',
            parent_instance_id="parent",
            version=created.version,
        )
        assert created == expected, f"created row differs:\n{created}\n!=\n{expected}"

        h.clock.advance(timedelta(seconds=5, microseconds=1))
        failure = FailureDetails(
            error_type="ValueError", message="bad ✗", stack_trace="Traceback...", non_retriable=True
        )
        version = await h.run_episode(
            "child",
            status=OrchestrationStatus.FAILED,
            output='{"out": [1, 2]}',
            custom_status='"step 2"',
            failure=failure,
        )
        committed = await h.store.get_instance("child")
        assert committed is not None
        assert version != created.version, "a commit must change the version"
        expected = InstanceRecord(
            instance_id="child",
            name="child-wf",
            execution_id="c1",
            status=OrchestrationStatus.FAILED,
            created_at=at,
            updated_at=h.clock.now(),
            input='"héllo ✓"',
            output='{"out": [1, 2]}',
            custom_status='"step 2"',
            failure=failure,
            parent_instance_id="parent",
            version=version,
        )
        assert committed == expected, f"committed row differs:\n{committed}\n!=\n{expected}"


async def check_unknown_instance_reads_empty(factory: StoreFactory) -> None:
    """An unknown id has no row and an empty history."""
    async with fresh_store(factory) as h:
        assert await h.store.get_instance("nobody") is None
        assert await h.store.load_history("nobody") == []


async def check_create_running_instance_twice_raises(factory: StoreFactory) -> None:
    """Creating an instance that exists and is not finished raises InstanceExistsError."""
    async with fresh_store(factory) as h:
        await h.start("dup")
        for status in (OrchestrationStatus.PENDING, OrchestrationStatus.RUNNING):
            if status is OrchestrationStatus.RUNNING:
                await h.run_episode("dup", status=status)
            before = await h.store.get_instance("dup")
            error = await expect_raises(
                InstanceExistsError,
                h.start("dup", execution_id="exec-2"),
                f"re-creating a {status} instance",
            )
            assert (error.instance_id, str(error.status)) == ("dup", status.value), error
            assert await h.store.get_instance("dup") == before, "a refused create changed the row"


async def check_create_replaces_terminal_instance(factory: StoreFactory) -> None:
    """Re-creating a finished instance replaces row, history, inbox, work items; new version."""
    async with fresh_store(factory) as h:
        for status in _TERMINAL:
            instance_id = f"done-{status.value.lower()}"
            await h.start(instance_id)
            first = await h.store.get_instance(instance_id)
            assert first is not None
            versions = {first.version}
            versions.add(
                await h.run_episode(instance_id, activities=[h.invocation(instance_id, 1)])
            )
            await h.store.enqueue(h.event(instance_id, "late"))
            # Finish while leaving the late event in the inbox and the activity pending.
            versions.add(await h.run_episode(instance_id, status=status, consumed=[]))
            assert await h.store.load_history(instance_id), "setup: history expected"

            started = await h.start(
                instance_id, name="wf-2", execution_id="exec-2", input="2", replaceable=_FINISHED
            )
            record = await h.store.get_instance(instance_id)
            assert record is not None
            assert (record.status, record.execution_id, record.name, record.input) == (
                OrchestrationStatus.PENDING,
                "exec-2",
                "wf-2",
                "2",
            ), f"re-created row is {record}"
            # Workers cache replay state by version: the new incarnation's must be new.
            assert record.version not in versions, f"version {record.version} was reused"
            assert await h.store.load_history(instance_id) == [], "old history survived"
            inbox = await h.inbox(instance_id)
            assert [m.event for m in inbox] == [started], f"old inbox survived: {inbox}"
        leftover = await h.lock_activities()
        assert leftover == [], f"old work items survived: {leftover}"


async def check_invalid_instance_ids_rejected(factory: StoreFactory) -> None:
    """create_instance and enqueue reject ids that break the key rules."""
    bad_ids = [
        "",
        " lead",
        "trail ",
        "a/b",
        "a\\b",
        "a#b",
        "a?b",
        "tab\there",
        "nul\x00",
        "x" * 257,
    ]
    async with fresh_store(factory) as h:
        for bad in bad_ids:
            create = h.store.create_instance(h.start_message(bad))
            await expect_raises(InvalidInstanceIdError, create, f"create_instance({bad!r})")
            enqueue = h.store.enqueue(h.event(bad))
            await expect_raises(InvalidInstanceIdError, enqueue, f"enqueue({bad!r})")
        for good in ("x" * 256, "ünïcode-id ok", "order:42|retry"):
            await h.start(good)
            assert await h.store.get_instance(good) is not None, f"valid id {good!r} was lost"


async def check_enqueue_to_missing_instance_raises(factory: StoreFactory) -> None:
    """Enqueueing to an instance that does not exist raises InstanceNotFoundError."""
    async with fresh_store(factory) as h:
        enqueue = h.store.enqueue(h.event("ghost"))
        error = await expect_raises(InstanceNotFoundError, enqueue, "enqueue to a missing instance")
        assert error.instance_id == "ghost", error
        assert await h.store.get_instance("ghost") is None, "enqueue created an instance"


async def check_inbox_dedupes_by_key(factory: StoreFactory) -> None:
    """At most one pending message exists per (instance, key); keyless events are distinct."""
    async with fresh_store(factory) as h:
        started = await h.start("a")
        result = h.result(h.invocation("a", 1), '"r"')
        await h.store.enqueue(result)
        await h.store.enqueue(h.result(h.invocation("a", 1), '"again"'))
        await h.store.enqueue(h.event("a", "approve", input="1", key="evt-1"))
        await h.store.enqueue(h.event("a", "approve", input="2", key="evt-1"))
        await h.store.enqueue(h.event("a", "note", input="x"))
        await h.store.enqueue(h.event("a", "note", input="x"))
        messages = [m.event for m in (await h.lock_one("a")).messages]
        kept = [
            started,
            result.event,
            EventRaised(timestamp=h.clock.now(), name="approve", input="1"),
            EventRaised(timestamp=h.clock.now(), name="note", input="x"),
            EventRaised(timestamp=h.clock.now(), name="note", input="x"),
        ]
        assert messages == kept, f"inbox after duplicates:\n{messages}\n!=\n{kept}"


async def check_delayed_messages_wait_for_clock(factory: StoreFactory) -> None:
    """A message is invisible until the clock reaches visible_at; next_due says when."""
    async with fresh_store(factory) as h:
        start_at = h.clock.now() + timedelta(hours=1)
        await h.start("later", visible_at=start_at)
        batch = await h.store.lock_orchestrations(owner="w", limit=10, lease=LEASE)
        assert batch.items == [], "a scheduled start was handed out early"
        assert batch.next_due == start_at, f"next_due {batch.next_due} != {start_at}"
        h.clock.advance(timedelta(hours=1))
        await h.run_episode("later")

        fire_at = h.clock.now() + timedelta(days=9)  # beyond any queue's visibility limit
        fired = TimerFired(timestamp=h.clock.now(), timer_id=1, fire_at=fire_at)
        await h.store.enqueue(OrchestrationMessage("later", fired, "exec-1", visible_at=fire_at))
        batch = await h.store.lock_orchestrations(owner="w", limit=10, lease=LEASE)
        assert (batch.items, batch.next_due) == ([], fire_at), f"timer not pending: {batch}"
        h.clock.advance(fire_at - h.clock.now() - timedelta(microseconds=1))
        assert await h.lock() == {}, "a timer fired a microsecond early"
        h.clock.advance(timedelta(microseconds=1))
        item = await h.lock_one("later")
        assert [m.event for m in item.messages] == [fired]
        assert item.messages[0].execution_id == "exec-1"


# -- orchestration locks ------------------------------------------------------


async def check_lock_hands_out_instance_once_until_lease_expires(factory: StoreFactory) -> None:
    """A locked instance is not handed out again until its lease expires."""
    async with fresh_store(factory) as h:
        await h.start("a")
        first = await h.lock_one("a", owner="w1")
        assert await h.lock(owner="w2") == {}, "a locked instance was handed out twice"
        await h.store.enqueue(h.event("a", "while-locked"))
        h.clock.advance(LEASE - timedelta(seconds=1))
        assert await h.lock(owner="w2") == {}, "new messages broke an unexpired lock"
        h.clock.advance(timedelta(seconds=2))
        second = await h.lock_one("a", owner="w2")
        assert second.lock_token != first.lock_token, "lock tokens must be unique per lock"
        counts = [(m.event.kind, m.dequeue_count) for m in second.messages]
        assert counts == [("ExecutionStarted", 2), ("EventRaised", 1)], counts


async def check_renewed_orchestration_lock_outlives_its_first_lease(factory: StoreFactory) -> None:
    """A renewed orchestration lock outlives its first lease; an unrenewed one is taken over."""
    async with fresh_store(factory) as h:
        await h.start("renewed")
        await h.start("unrenewed")
        items = await h.lock(owner="w1")
        assert sorted(items) == ["renewed", "unrenewed"], sorted(items)
        h.clock.advance(timedelta(seconds=20))
        await h.store.renew_orchestration_lease(items["renewed"], LEASE)
        h.clock.advance(timedelta(seconds=20))  # 10 s past the first lease, 10 s left of the new
        taken = await h.lock(owner="w2")
        assert sorted(taken) == ["unrenewed"], f"after a renewal of one of two: {sorted(taken)}"
        await h.commit(items["renewed"])  # still its holder's, after the first lease
        await h.commit(taken["unrenewed"])


async def check_renewing_a_lost_orchestration_lock_changes_nothing(factory: StoreFactory) -> None:
    """A renewal under a lock that was taken over or committed neither steals nor relocks it."""
    async with fresh_store(factory) as h:
        await h.start("a")
        stale = await h.lock_one("a", owner="w1")
        h.clock.advance(PAST_LEASE)
        current = await h.lock_one("a", owner="w2")
        await h.store.renew_orchestration_lease(stale, timedelta(hours=1))
        late = h.commit(stale)
        await expect_raises(ConflictError, late, "a commit after renewing a lost lock")
        h.clock.advance(PAST_LEASE)  # w2's lock runs out as usual: the renewal extended nothing
        again = await h.lock_one("a", owner="w3")
        assert again.lock_token != current.lock_token, "lock tokens must be unique per lock"
        await h.commit(again)
        await h.store.renew_orchestration_lease(again, LEASE)
        await h.store.enqueue(h.event("a"))
        assert "a" in await h.lock(owner="w4"), "a renewal after the commit locked the instance"


async def check_lock_returns_visible_messages_oldest_first(factory: StoreFactory) -> None:
    """A work item carries every visible message oldest first, and limit caps the batch."""
    async with fresh_store(factory) as h:
        started = await h.start("a")
        events = [h.event("a", f"e{n}") for n in range(3)]
        for message in events:
            await h.store.enqueue(message)
        item = await h.lock_one("a")
        assert [m.event for m in item.messages] == [started] + [m.event for m in events]
        assert len({m.message_id for m in item.messages}) == 4, "message ids must be unique"
        assert all(m.dequeue_count == 1 for m in item.messages)
        assert item.instance == await h.store.get_instance("a"), "item must carry the current row"

        for n in range(5):
            await h.start(f"b{n}")
        sizes = [len(await h.lock(limit=2)) for _ in range(4)]
        assert sizes == [2, 2, 1, 0], f"batches for 5 instances with limit=2: {sizes}"


# -- episodes -----------------------------------------------------------------


async def check_commit_persists_whole_episode(factory: StoreFactory) -> None:
    """A commit writes history, row, inbox removals, work items and messages together."""
    async with fresh_store(factory) as h:
        await h.start("other")
        await h.start("p")
        await h.store.enqueue(h.event("p", "e1"))
        item = await h.lock_one("p")
        await h.store.enqueue(h.event("p", "e2"))  # arrives during the episode
        start_id = item.messages[0].message_id

        history = [
            OrchestratorStarted(timestamp=h.clock.now()),
            item.messages[0].event,
            TaskScheduled(timestamp=h.clock.now(), event_id=0, name="act-0"),
        ]
        activity = h.invocation("p", 0)
        fire_at = h.clock.now() + timedelta(minutes=5)
        timer = TimerFired(timestamp=h.clock.now(), timer_id=1, fire_at=fire_at)
        parent = ParentInstance(
            instance_id="p", execution_id="exec-1", name="wf", task_scheduled_id=2
        )
        child_start = h.start_message("p-child", name="child", parent=parent)
        outgoing = [
            child_start,
            h.event("other", "hello"),
            OrchestrationMessage("p", timer, "exec-1", visible_at=fire_at),
            h.event("ghost", "dropped"),
        ]
        version = await h.commit(
            item,
            history=history,
            consumed=[start_id],
            activities=[activity],
            messages=outgoing,
            custom_status='"working"',
        )

        record = await h.store.get_instance("p")
        assert record is not None and record.version == version != item.instance.version
        assert (record.status, record.custom_status) == (OrchestrationStatus.RUNNING, '"working"')
        assert await h.store.load_history("p") == history
        work = await h.lock_activities()
        assert [w.invocation for w in work] == [activity], f"work items: {work}"
        child = await h.store.get_instance("p-child")
        assert child is not None and child.parent_instance_id == "p", f"child row: {child}"
        assert await h.store.get_instance("ghost") is None, "a non-start message created 'ghost'"

        items = await h.lock()
        kinds = {i: [m.event.kind for m in item.messages] for i, item in items.items()}
        names = [getattr(m.event, "name", None) for m in items["p"].messages]
        assert names == ["e1", "e2"], f"p's inbox after commit: {kinds['p']} {names}"
        assert kinds["other"] == ["ExecutionStarted", "EventRaised"], kinds["other"]
        assert [m.event for m in items["p-child"].messages] == [child_start.event]
        for locked in items.values():
            await h.commit(locked)
        h.clock.advance(fire_at - h.clock.now())
        assert [m.event for m in (await h.lock_one("p")).messages] == [timer]


async def check_conflicting_commit_changes_nothing(factory: StoreFactory) -> None:
    """A commit by a worker that lost its lease raises ConflictError and writes nothing."""
    async with fresh_store(factory) as h:
        await h.start("c")
        await h.start("neighbour")
        await h.run_episode("neighbour")
        await h.run_episode("c")
        await h.store.enqueue(h.event("c", "go"))
        stale = await h.lock_one("c", owner="w1")
        h.clock.advance(PAST_LEASE)
        current = await h.lock_one("c", owner="w2")
        row, history = await h.store.get_instance("c"), await h.store.load_history("c")

        late_commit = h.commit(
            stale,
            status=OrchestrationStatus.COMPLETED,
            history=[OrchestratorStarted(timestamp=h.clock.now())],
            reset_history=True,
            activities=[h.invocation("c", 7)],
            messages=[h.start_message("c-child"), h.event("neighbour", "from-c")],
        )
        error = await expect_raises(ConflictError, late_commit, "a commit after a lost lease")
        assert error.instance_id == "c", error

        assert await h.store.get_instance("c") == row, "the failed commit changed the row"
        assert await h.store.load_history("c") == history, "the failed commit changed history"
        assert await h.lock_activities() == [], "the failed commit created work items"
        assert await h.store.get_instance("c-child") is None, "the failed commit started a child"
        assert await h.inbox("neighbour") == [], "the failed commit sent a message"
        await h.store.abandon_orchestration(current, reason="test", retry_after=timedelta(0))
        inbox = [m.event.kind for m in await h.inbox("c")]
        assert inbox == ["EventRaised"], f"the failed commit consumed messages: {inbox}"


async def check_commit_with_stale_version_conflicts(factory: StoreFactory) -> None:
    """Committing a work item twice, or after a purge, raises ConflictError."""
    async with fresh_store(factory) as h:
        await h.start("a")
        item = await h.lock_one("a")
        await h.commit(item)
        second = h.commit(item, status=OrchestrationStatus.COMPLETED)
        await expect_raises(ConflictError, second, "committing one work item twice")
        record = await h.store.get_instance("a")
        assert record is not None and record.status is OrchestrationStatus.RUNNING

        await h.store.enqueue(h.event("a"))
        item = await h.lock_one("a")
        assert await h.store.purge_instance("a")
        await expect_raises(ConflictError, h.commit(item), "a commit for a purged instance")
        assert await h.store.get_instance("a") is None, "a stale commit resurrected the row"


async def check_reset_history_replaces_history(factory: StoreFactory) -> None:
    """With reset_history the new events replace the stored history."""
    async with fresh_store(factory) as h:
        started = await h.start("a")
        await h.run_episode("a")
        assert await h.store.load_history("a") == [started]
        await h.store.enqueue(h.event("a", "restart"))
        fresh = h.started("a", execution_id="exec-2", input="7")
        await h.run_episode("a", history=[fresh], reset_history=True, execution_id="exec-2")
        assert await h.store.load_history("a") == [fresh]
        record = await h.store.get_instance("a")
        assert record is not None and record.execution_id == "exec-2"


async def check_outgoing_start_creates_target_other_messages_need_one(
    factory: StoreFactory,
) -> None:
    """A sent ExecutionStarted creates its missing target; other messages to nobody are dropped."""
    async with fresh_store(factory) as h:
        await h.start("existing", input="old")
        await h.run_episode("existing")
        existing = await h.store.get_instance("existing")
        await h.start("parent")
        parent = ParentInstance(
            instance_id="parent", execution_id="exec-1", name="wf", task_scheduled_id=0
        )
        new_child = h.start_message("new-child", name="child", input="1", parent=parent)
        restart = h.start_message("existing", name="intruder", execution_id="exec-9")
        await h.run_episode(
            "parent",
            messages=[
                new_child,
                restart,
                h.result(h.invocation("missing", 1)),
                h.event("existing", "k", input="first", key="k1"),
                h.event("existing", "k", input="second", key="k1"),
            ],
        )
        child = await h.store.get_instance("new-child")
        assert child is not None, "a sent ExecutionStarted did not create its target"
        summary = (child.status, child.name, child.input, child.parent_instance_id)
        assert summary == (OrchestrationStatus.PENDING, "child", "1", "parent"), summary
        assert await h.store.get_instance("existing") == existing, "an existing target was replaced"
        assert await h.store.get_instance("missing") is None
        inbox = [m.event for m in await h.inbox("existing")]
        assert len(inbox) == 2 and inbox[0] == restart.event, f"existing's inbox: {inbox}"
        assert isinstance(inbox[1], EventRaised) and inbox[1].input == "first", inbox[1]
        assert isinstance((await h.inbox("new-child"))[0].event, ExecutionStarted)


async def check_entity_operations_create_their_entity_and_keep_commit_order(
    factory: StoreFactory,
) -> None:
    """A committed entity operation creates its missing entity; one sender's arrive in order."""
    # Entities (``@name@key`` instances) exist from their first operation on and
    # run operations in arrival order: a store delivers the operations one commit
    # sends, and those of later commits, oldest first. Queries list them apart.
    async with fresh_store(factory) as h:
        await h.start("caller")
        target = "@counter@k"

        def operation(n: int) -> OrchestrationMessage:
            signal = EntityOperationSignaled(
                timestamp=h.clock.now(),
                request_id=f"r{n}",
                operation="add",
                input=str(n),
                target_instance_id=target,
            )
            return OrchestrationMessage(target, signal)

        await h.run_episode("caller", messages=[operation(n) for n in range(3)])
        created = await h.store.get_instance(target)
        assert created is not None, "a committed entity operation did not create its entity"
        assert (created.name, created.status) == ("counter", OrchestrationStatus.PENDING), created
        await h.start("caller-2")
        await h.run_episode("caller-2", messages=[operation(n) for n in range(3, 6)])
        order = [m.event.input for m in await h.inbox(target)]  # type: ignore[union-attr]
        assert order == [str(n) for n in range(6)], f"operations out of order: {order}"
        orchestrations = await h.store.query_instances(InstanceQuery())
        assert target not in {r.instance_id for r in orchestrations.items}, "an entity listed"
        entities = await h.store.query_instances(InstanceQuery(entities=True))
        assert [r.instance_id for r in entities.items] == [target], entities.items


async def check_abandoned_orchestration_retries_after_delay(factory: StoreFactory) -> None:
    """An abandoned episode's messages come back after retry_after; a stale abandon is ignored."""
    async with fresh_store(factory) as h:
        await h.start("a")
        item = await h.lock_one("a")
        await h.store.abandon_orchestration(item, reason="boom", retry_after=timedelta(seconds=10))
        batch = await h.store.lock_orchestrations(owner="w", limit=10, lease=LEASE)
        due = h.clock.now() + timedelta(seconds=10)
        assert (batch.items, batch.next_due) == ([], due), f"retry not delayed: {batch}"
        h.clock.advance(timedelta(seconds=9))
        assert await h.lock() == {}, "an abandoned message came back early"
        h.clock.advance(timedelta(seconds=1))
        again = await h.lock_one("a", owner="w1")
        assert [m.dequeue_count for m in again.messages] == [2]

        h.clock.advance(PAST_LEASE)
        current = await h.lock_one("a", owner="w2")
        await h.store.abandon_orchestration(again, reason="late", retry_after=timedelta(hours=1))
        await h.commit(current)  # w1's abandon must not have released w2's lock


STORE_CHECKS: list[StoreCheck] = [
    check_create_get_round_trips_every_field,
    check_unknown_instance_reads_empty,
    check_create_running_instance_twice_raises,
    check_create_replaces_terminal_instance,
    check_invalid_instance_ids_rejected,
    check_enqueue_to_missing_instance_raises,
    check_inbox_dedupes_by_key,
    check_delayed_messages_wait_for_clock,
    check_lock_hands_out_instance_once_until_lease_expires,
    check_renewed_orchestration_lock_outlives_its_first_lease,
    check_renewing_a_lost_orchestration_lock_changes_nothing,
    check_lock_returns_visible_messages_oldest_first,
    check_commit_persists_whole_episode,
    check_conflicting_commit_changes_nothing,
    check_commit_with_stale_version_conflicts,
    check_reset_history_replaces_history,
    check_outgoing_start_creates_target_other_messages_need_one,
    check_entity_operations_create_their_entity_and_keep_commit_order,
    check_abandoned_orchestration_retries_after_delay,
    *KEY_CHECKS,
    *WORK_CHECKS,
    *POISON_CHECKS,
    *READ_CHECKS,
]
"""Every store check, in the order ``check_store`` runs them."""


async def check_store(factory: StoreFactory) -> None:
    """Run every check in ``STORE_CHECKS``, each on a fresh store from ``factory``.

    ``factory(clock)`` must return a new, empty store that reads time from
    ``clock`` and poisons after at least 3 deliveries. The first failing check
    raises, with a note naming it and the guarantee it proves.
    """
    for check in STORE_CHECKS:
        try:
            await check(factory)
        except BaseException as error:
            error.add_note(f"in store check {check.__name__}: {check.__doc__}")
            raise
