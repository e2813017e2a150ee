"""Work-item dispatch: the ``GetWorkItems`` streams and the completions that come back.

Each connected SDK worker holds one stream. Two fetch loops per stream lock
orchestrations and activities in the store, up to the concurrency the worker
asked for, and send them with a completion token; the token names the locked
item until the worker completes or abandons it. When the stream ends (the
worker disconnected, or the sidecar stops) everything it still holds is
released at once, so another worker gets it without waiting for the lease.

Completions are taken on the gRPC call's thread and handed to the loop;
activity results are written in batches (``ResultBatcher``).

A work item larger than the worker can receive is never sent: it would end
the worker's whole stream, and every reconnect would meet it again (and
count a delivery of everything the worker held). Its instance fails instead,
or its activity fails as a ``TaskFailed`` the orchestrator can handle; so
does an answer over the limit (``_message_limit``).

What is held (streams, tokens, lease renewal) is in ``_held``, the hand-off
from gRPC threads in ``_handoff``. The dispatcher stays one class, a little
over 500 lines with this essay, because streams, completions and releases
share one table of held items (``_take``) and its busy/nudged bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from .._clock import Clock
from .._entity import is_entity_instance_id
from .._errors import ConflictError
from .._history import FailureDetails
from .._replay.entities import BatchOutcome
from ..storage._protocol import Store
from ..storage._records import (
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    LockBatch,
    OrchestrationWorkItem,
)
from ..worker._backoff import Backoff
from ..worker._entity_batch import EntityBatch, entity_commit, schedule
from ..worker._result_batches import ResultBatcher
from ._entities import EntityShape, entity_request, failed_outcome, outcome_of
from ._episodes import EpisodeBridge, EpisodePlan, PreparedEpisode
from ._filters import orchestration_accept
from ._handoff import Handoff
from ._held import (
    Connection,
    HeldActivity,
    HeldEntityBatch,
    HeldEpisode,
    HeldItem,
    Send,
    StreamClosed,
    UnknownTokenError,
    activity_token,
    episode_token,
    free,
    locked_instance,
    renew_held,
    unless_lost,
)
from ._message_limit import TOO_LARGE_ERROR, MessageLimit, failed_activity
from ._proto import pb
from ._results import activity_request, activity_result
from ._watch import InstanceWatch

__all__ = ["UnknownTokenError", "WorkItemDispatcher"]

log = logging.getLogger("durable_fx.sidecar")

T = TypeVar("T")
H = TypeVar("H", "HeldEpisode", "HeldEntityBatch", "HeldActivity")

_LOCK_BATCH = 500
_RETRY_AFTER_ERROR = timedelta(seconds=1)


class WorkItemDispatcher:
    """Hands locked work to SDK workers and commits what they send back.

    Args:
        store: The store work is locked in.
        clock: Source of timestamps for results.
        bridge: Turns orchestration work items into requests and responses into commits.
        watch: Told about every commit, for clients waiting on an instance.
        owner: This sidecar's name in the store's locks.
        lease: How long locked work stays ours; work a worker holds is renewed.
        ping_interval: Seconds of silence after which a stream gets a health ping.
        max_poll_interval: Longest sleep between polls of an idle stream.
        max_message_bytes: The largest work item a worker can receive, and
            the largest answer taken from one.
        activity_timeout: Fail an activity a worker holds longer (``None``: never).
        entity_shape: How entity work items go out (``_entities``).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        bridge: EpisodeBridge,
        watch: InstanceWatch,
        *,
        owner: str,
        lease: timedelta,
        ping_interval: float,
        max_poll_interval: float,
        max_message_bytes: int,
        activity_timeout: timedelta | None = None,
        entity_shape: EntityShape = "batch",
    ) -> None:
        self._store = store
        self._entity_shape = entity_shape
        self._activity_timeout = activity_timeout
        self._clock = clock
        self._bridge = bridge
        self._watch = watch
        self._owner = owner
        self._lease = lease
        self._ping_interval = ping_interval
        self._max_poll = max_poll_interval
        self._limit = MessageLimit(max_message_bytes)
        self._held: dict[str, HeldItem] = {}
        self._committing: set[asyncio.Task[None]] = set()
        self._results = ResultBatcher(store, self._results_settled, log)
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._arrivals: dict[str, set[asyncio.Event]] = {"episodes": set(), "activities": set()}
        self._busy: set[str] = set()
        """Instances with an episode at a worker or being committed: they cannot be locked."""
        self._nudged: set[str] = set()
        """Busy instances that got messages meanwhile: look for work once they are free."""
        # Tokens only need to be unique: a per-sidecar prefix and a counter, since
        # uuid4 per item costs a syscall and a GIL round trip on the hot path.
        self._token_prefix = uuid.uuid4().hex[:12]
        self._token_counter = itertools.count(1)
        # Completions arrive on gRPC threads; a burst of them wakes the loop once.
        self._handoff = Handoff(log, "handling a completion failed; it runs again after its lease")

    def start(self) -> None:
        """Start the result writer and the lease renewer (on the running loop)."""
        self._handoff.start()
        self._tasks = [
            asyncio.create_task(self._results.run(), name="durable-fx-sidecar-results"),
            asyncio.create_task(
                renew_held(self._held, self._store, self._lease),
                name="durable-fx-sidecar-renewals",
            ),
        ]
        if self._activity_timeout is not None:
            seconds = self._activity_timeout.total_seconds()
            self._tasks.append(
                asyncio.create_task(
                    self._time_out_activities(seconds), name="durable-fx-sidecar-timeouts"
                )
            )

    def begin_close(self) -> None:
        """End every stream (their work is released); completions are still accepted."""
        self._closing.set()

    async def close(self) -> None:
        """Release whatever is still held, write pending results, stop the background tasks."""
        self._closing.set()
        for token in list(self._held):
            await self._release(token, "the sidecar stopped")
        await asyncio.gather(*self._committing, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._results.flush()

    def work_arrived(self) -> None:
        """Wake the idle episode fetch loops: this process just enqueued an orchestration message.

        Call on the loop.
        """
        self._wake("episodes")

    def _wake(self, kind: str) -> None:
        for arrived in self._arrivals[kind]:
            arrived.set()

    # -- streams ---------------------------------------------------------------------------

    async def serve(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        """Feed one worker's stream until it disconnects or the sidecar stops."""
        lock = asyncio.Lock()

        async def send_one(item: pb.WorkItem) -> None:
            async with lock:  # one writer at a time on a stream
                try:
                    await send(item)
                except Exception as error:
                    raise StreamClosed(str(error)) from error
            connection.last_sent = asyncio.get_running_loop().time()

        connection = Connection(
            max_episodes=request.maxConcurrentOrchestrationWorkItems or 100,
            max_activities=request.maxConcurrentActivityWorkItems or 100,
            send=send_one,
            last_sent=asyncio.get_running_loop().time(),
            accept=orchestration_accept(request),
        )
        loops = [
            asyncio.create_task(self._fetch_loop(connection, self._fetch_episodes, "episodes")),
            asyncio.create_task(self._fetch_loop(connection, self._fetch_activities, "activities")),
            asyncio.create_task(self._ping_loop(connection)),
            asyncio.create_task(self._closing.wait()),
        ]
        limits = connection.max_episodes, connection.max_activities
        log.info("worker connected (up to %d episodes, %d activities)", *limits)
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.info("work item stream ended: %s", task.exception())
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await asyncio.gather(*connection.locking, return_exceptions=True)
            held = [*connection.episodes, *connection.activities]
            for token in held:
                await self._release(token, "the worker's stream ended")
            log.info("worker disconnected; %d held work items released", len(held))

    async def _fetch_loop(
        self,
        connection: Connection,
        fetch: Callable[[Connection], Awaitable[LockBatch[Any] | None]],
        kind: str,
    ) -> None:
        """Fetch until the stream ends; back off while there is nothing to do.

        Work this sidecar makes visible wakes the loop at once (``_wake``);
        work from other processes on the store is found by polling, at least
        every ``max_poll_interval`` seconds.
        """
        arrived = asyncio.Event()
        self._arrivals[kind].add(arrived)
        backoff = Backoff(self._clock, self._max_poll)
        try:
            while True:
                # Cleared before looking: work made visible during the lock call wakes us.
                arrived.clear()
                try:
                    batch = await fetch(connection)
                except StreamClosed:
                    raise
                except Exception:
                    log.exception("fetching work failed; retrying")
                    batch = LockBatch(items=[])
                    backoff.failed()
                if batch is None:  # the worker has no room: wait until it completes something
                    await _wait_event(connection.wake, self._max_poll)
                    connection.wake.clear()
                elif batch.items:
                    backoff.found_work()
                elif not await _wait_event(arrived, backoff.wait_for(batch.next_due)):
                    backoff.idled()  # a wake-up here is new work: the delay stays short
        finally:
            self._arrivals[kind].discard(arrived)

    async def _ping_loop(self, connection: Connection) -> None:
        """Keep an idle stream alive: the SDKs reconnect after a long silence."""
        loop = asyncio.get_running_loop()
        while True:
            quiet_for = loop.time() - connection.last_sent
            if quiet_for >= self._ping_interval:
                await connection.send(pb.WorkItem(healthPing=pb.HealthPing()))
                quiet_for = 0.0
            await asyncio.sleep(self._ping_interval - quiet_for)

    async def _fetch_episodes(
        self, connection: Connection
    ) -> LockBatch[OrchestrationWorkItem] | None:
        free = connection.max_episodes - len(connection.episodes)
        if free <= 0:
            return None
        return await unless_lost(connection, self._lock_episodes(connection, free))

    async def _lock_episodes(
        self, connection: Connection, free: int
    ) -> LockBatch[OrchestrationWorkItem]:
        batch = await self._store.lock_orchestrations(
            owner=self._owner,
            limit=min(free, _LOCK_BATCH),
            lease=self._lease,
            accept=connection.accept,
        )
        requests = []
        for item in batch.items:
            request = await self._hold_episode(connection, item)
            if request is not None:
                requests.append(request)
        for request in requests:
            await connection.send(request)
        return batch

    async def _hold_episode(
        self, connection: Connection, item: OrchestrationWorkItem
    ) -> pb.WorkItem | None:
        """Hold ``item`` under a new token and return its work item (``None``: no code to run)."""
        if is_entity_instance_id(item.instance.instance_id):
            return await self._hold_entity_batch(connection, item)
        try:
            prepared = await self._bridge.prepare(item)
        except Exception as error:
            log.exception("preparing the episode of %s failed", item.instance.instance_id)
            await self._abandon_episode(item, f"{type(error).__name__}: {error}")
            return None
        if isinstance(prepared, EpisodeCommit):
            await self._commit_direct(item, prepared)
            return None
        token = self._new_token()
        work_item = pb.WorkItem(orchestratorRequest=prepared.request, completionToken=token)
        size = work_item.ByteSize()
        if size > self._limit.limit:
            await self._fail_episode(prepared, size)
            return None
        now = asyncio.get_running_loop().time()
        self._held[token] = HeldEpisode(connection, prepared, now)
        self._busy.add(item.instance.instance_id)
        connection.episodes.add(token)
        return work_item

    async def _hold_entity_batch(
        self, connection: Connection, item: OrchestrationWorkItem
    ) -> pb.WorkItem | None:
        """Hold an entity's batch and return its work item (``None``: no operation to run).

        Lock requests and unlocks are the sidecar's own business: a batch with
        only those (or whose operations wait for a lock) commits here at once.
        """
        batch = schedule(item, self._clock.now())
        if not batch.operations:
            await self._commit_direct(item, entity_commit(batch, batch.unchanged()))
            return None
        token = self._new_token()
        work_item = entity_request(batch, self._entity_shape)
        work_item.completionToken = token
        size = work_item.ByteSize()
        if size > self._limit.limit:
            reason = self._limit.unsendable_entity_batch(item.instance.instance_id, size)
            failure = FailureDetails(error_type=TOO_LARGE_ERROR, message=reason)
            await self._commit_direct(item, entity_commit(batch, failed_outcome(batch, failure)))
            return None
        now = asyncio.get_running_loop().time()
        self._held[token] = HeldEntityBatch(connection, batch, now)
        self._busy.add(item.instance.instance_id)
        connection.episodes.add(token)
        return work_item

    async def _fail_episode(self, prepared: PreparedEpisode, size: int) -> None:
        """Fail the instance of an episode no worker can receive, with the sizes."""
        item = prepared.item
        reason = self._limit.unsendable_episode(item.instance.instance_id, size)
        try:
            failed = await self._bridge.fail(prepared, TOO_LARGE_ERROR, reason)
        except Exception as error:
            log.exception("failing %s failed; it will be retried", item.instance.instance_id)
            await self._abandon_episode(item, f"{type(error).__name__}: {error}")
            return
        await self._commit_direct(item, failed)

    async def _fetch_activities(self, connection: Connection) -> LockBatch[ActivityWorkItem] | None:
        free = connection.max_activities - len(connection.activities)
        if free <= 0:
            return None
        return await unless_lost(connection, self._lock_activities(connection, free))

    async def _lock_activities(
        self, connection: Connection, free: int
    ) -> LockBatch[ActivityWorkItem]:
        batch = await self._store.lock_activities(
            owner=self._owner, limit=min(free, _LOCK_BATCH), lease=self._lease
        )
        now = asyncio.get_running_loop().time()
        requests = []
        for item in batch.items:
            token = self._new_token()
            request = pb.WorkItem(activityRequest=activity_request(item), completionToken=token)
            if (size := request.ByteSize()) > self._limit.limit:
                failure = self._limit.unsendable_activity(item, size)
                self._results.add(activity_result(item, failure, self._clock.now()))
                continue
            self._held[token] = HeldActivity(connection, item, now, now)
            connection.activities.add(token)
            requests.append(request)
        for request in requests:
            await connection.send(request)
        return batch

    async def _time_out_activities(self, timeout: float) -> None:
        """Fail every activity a worker has held for ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            overdue = loop.time() - timeout
            for token, held in list(self._held.items()):
                if isinstance(held, HeldActivity) and held.handed_at <= overdue:
                    self._time_out(token, held, timeout)

    def _time_out(self, token: str, held: HeldActivity, timeout: float) -> None:
        if self._held.pop(token, None) is not held:
            return  # completed or released meanwhile
        free(held.connection, token)
        name = held.item.invocation.name
        reason = f"{name} did not finish within {timedelta(seconds=timeout)} at the worker"
        log.warning("%s (instance %s)", reason, held.item.invocation.instance_id)
        failure = failed_activity("ActivityTimeoutError", reason)
        self._results.add(activity_result(held.item, failure, self._clock.now()))

    # -- completions -------------------------------------------------------------------------

    def complete_orchestration(self, response: pb.OrchestratorResponse) -> None:
        """Take the episode the worker ran; it is committed right after this returns.

        Called on the gRPC call's thread: whoever pops a token from the held
        items owns it (a release on the loop pops it too). Acknowledging
        before the commit frees the worker's thread; the inbox messages stay
        in the store until the commit, so an episode whose commit fails (or
        is lost with the process) is delivered and run again. The worker has
        room for more at once: the instance itself stays locked until the
        commit, so its next episode waits for this one.
        """
        token = response.completionToken or episode_token(self._held, response.instanceId)
        size = response.ByteSize()
        if response.isPartial and size <= self._limit.limit:
            chunk = self._held.get(token)
            if not isinstance(chunk, HeldEpisode):
                raise UnknownTokenError(token)
            chunk.partial.extend(response.actions)
            return
        held = self._take(token, HeldEpisode)
        if held.partial:
            whole = pb.OrchestratorResponse()
            whole.CopyFrom(response)
            del whole.actions[:]
            whole.actions.extend([*held.partial, *response.actions])
            response = whole
        if size > self._limit.limit:  # the answer is dropped: its instance fails with why
            plan = self._limit.failing(self._bridge, size)
        elif response.requiresHistory:
            # The worker lost the history it expected to have: send it all again.
            self._handoff.call_soon(self._spawn_release, token, held)
            return
        else:
            plan = partial(self._bridge.finish, response=response)
        self._handoff.call_soon(self._spawn_commit, token, held, plan)

    def complete_entity_batch(self, result: pb.EntityBatchResult) -> None:
        """Take an entity batch the worker ran; it is committed right after this returns.

        Called on the gRPC call's thread, like ``complete_orchestration``. A
        batch the worker failed as a whole (``failureDetails``) or could not
        run without the state (``requiresState``) is released and runs again.
        """
        token = result.completionToken
        held = self._take(token, HeldEntityBatch)
        if result.HasField("failureDetails") or result.requiresState:
            self._handoff.call_soon(self._spawn_release, token, held)
            return
        size = result.ByteSize()
        if size > self._limit.limit:  # the answer is dropped: its operations fail with why
            instance_id = held.batch.item.instance.instance_id
            failure = self._limit.entity_answer_too_large(instance_id, size)
            outcome = failed_outcome(held.batch, failure)
        else:
            outcome = self._entity_outcome(held.batch, result)
        self._handoff.call_soon(self._spawn_entity_commit, token, held, outcome)

    @staticmethod
    def _entity_outcome(batch: EntityBatch, result: pb.EntityBatchResult) -> BatchOutcome:
        try:
            return outcome_of(batch, result)
        except ValueError as error:  # its actions name nothing to send to: the batch fails
            failure = FailureDetails(error_type="InvalidEntityActionError", message=str(error))
            return failed_outcome(batch, failure)

    def _spawn_entity_commit(
        self, token: str, held: HeldEntityBatch, outcome: BatchOutcome
    ) -> None:
        free(held.connection, token)
        self._spawn(self._commit_entity_batch(held.batch, outcome))

    async def _commit_entity_batch(self, batch: EntityBatch, outcome: BatchOutcome) -> None:
        instance_id = batch.item.instance.instance_id
        commit = entity_commit(batch, outcome)
        kept: EpisodeCommit | None = None
        try:
            await self._store.commit_episode(batch.item, commit)
            kept = commit
        except ConflictError as conflict:
            log.info("batch for %s not committed: %s", instance_id, conflict)
            if conflict.lock_kept:
                await self._abandon_episode(batch.item, str(conflict), timedelta(0))
        except Exception as error:
            log.exception("committing the batch of %s failed; it will be retried", instance_id)
            await self._abandon_episode(batch.item, f"{type(error).__name__}: {error}")
        else:
            self._watch.changed(instance_id, commit.instance)
        finally:
            self._after_episode(instance_id, kept)

    def _spawn_release(self, token: str, held: HeldEpisode | HeldEntityBatch) -> None:
        self._held[token] = held
        self._spawn(self._release(token, "the worker asked for the history again"))

    def _spawn_commit(self, token: str, held: HeldEpisode, plan: EpisodePlan) -> None:
        free(held.connection, token)
        self._spawn(self._commit_episode(held, plan))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on the loop; closing waits for it."""
        task = asyncio.create_task(work)
        self._committing.add(task)
        task.add_done_callback(self._committing.discard)

    async def _commit_episode(self, held: HeldEpisode, plan: EpisodePlan) -> None:
        prepared = held.prepared
        instance_id = prepared.instance.instance_id
        commit: EpisodeCommit | None = None
        try:
            commit = await plan(prepared)
            version = await self._store.commit_episode(prepared.item, commit)
        except ConflictError:
            commit = None
            self._bridge.forget(instance_id)
            log.info("episode for %s lost to another worker", instance_id)
        except Exception as error:
            commit = None
            log.exception("committing the episode of %s failed; it will be retried", instance_id)
            await self._abandon_episode(prepared.item, f"{type(error).__name__}: {error}")
        else:
            self._bridge.committed(prepared, commit, version)
            self._watch.changed(instance_id, commit.instance)
        finally:
            self._after_episode(instance_id, commit)

    def _after_episode(self, instance_id: str, commit: EpisodeCommit | None) -> None:
        """The instance is free again: wake the loops that may have work because of it."""
        self._busy.discard(instance_id)
        nudged = instance_id in self._nudged
        self._nudged.discard(instance_id)
        if nudged or commit is None or commit.messages:
            self._wake("episodes")
        if commit is not None and commit.activities:
            self._wake("activities")

    def complete_activity(self, response: pb.ActivityResponse) -> None:
        """Take an activity's outcome; it is written with others in the next batch.

        Called on the gRPC call's thread, and acknowledged before the write,
        like an episode: the work item stays in the store until its result is
        written, so a lost result means the activity runs again, never that
        it is lost.
        """
        token = response.completionToken or activity_token(
            self._held, response.instanceId, response.taskId
        )
        held = self._take(token, HeldActivity)
        response = self._limit.activity_answer(held.item, response)  # a failure if too large
        # Only the hand-over happens here: the worker's thread waits for this call.
        self._handoff.call_soon(self._queue_result, token, held, response)

    def _queue_result(self, token: str, held: HeldActivity, response: pb.ActivityResponse) -> None:
        free(held.connection, token)
        self._results.add(activity_result(held.item, response, self._clock.now()))

    def _take(self, token: str, kind: type[H]) -> H:
        """Own the work item held under ``token`` (safe from any thread)."""
        held = self._held.get(token)
        if not isinstance(held, kind) or self._held.pop(token, None) is not held:
            raise UnknownTokenError(token)
        return held

    def _new_token(self) -> str:
        return f"{self._token_prefix}-{next(self._token_counter):x}"

    async def abandon(self, token: str) -> None:
        """Release a work item the worker gave back; it is delivered again shortly."""
        held = self._held.get(token)
        if held is None:
            raise UnknownTokenError(token)
        await self._release(token, "the worker abandoned it", _RETRY_AFTER_ERROR)

    # -- holding and releasing ------------------------------------------------------------------

    async def _release(
        self, token: str, reason: str, retry_after: timedelta = timedelta(0)
    ) -> None:
        held = self._held.pop(token, None)
        if held is None:
            return
        held.connection.episodes.discard(token)
        held.connection.activities.discard(token)
        if isinstance(held, HeldEpisode | HeldEntityBatch):
            item = locked_instance(held)
            await self._abandon_episode(item, reason, retry_after)
            self._after_episode(item.instance.instance_id, None)
        else:
            with contextlib.suppress(Exception):
                await self._store.abandon_activity(
                    held.item, reason=reason, retry_after=retry_after
                )

    async def _abandon_episode(
        self, item: OrchestrationWorkItem, reason: str, retry_after: timedelta = _RETRY_AFTER_ERROR
    ) -> None:
        self._bridge.forget(item.instance.instance_id)
        with contextlib.suppress(Exception):
            await self._store.abandon_orchestration(item, reason=reason, retry_after=retry_after)

    async def _commit_direct(self, item: OrchestrationWorkItem, commit: EpisodeCommit) -> None:
        """Commit an episode that needed no code (late messages, events before a start)."""
        instance_id = item.instance.instance_id
        try:
            await self._store.commit_episode(item, commit)
        except ConflictError:
            log.info("episode for %s lost to another worker", instance_id)
        except Exception as error:
            log.exception("committing the episode of %s failed; it will be retried", instance_id)
            await self._abandon_episode(item, f"{type(error).__name__}: {error}")
        else:
            self._bridge.forget(instance_id)
            self._watch.changed(instance_id, commit.instance)
            if commit.messages:
                self._wake("episodes")

    # -- background: result batches and lease renewal ----------------------------------------------

    def _results_settled(self, batch: list[ActivityResult], written: bool) -> None:
        """Wake the episode loops for a written batch, unless every instance is busy.

        A busy instance is woken when it is free; a batch given back runs
        again as activities, so it has nothing for the episodes yet.
        """
        if not written:
            return
        targets = {result.message.instance_id for result in batch}
        self._nudged |= targets & self._busy
        if targets - self._busy:
            self._wake("episodes")


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True if ``event`` was set within ``timeout`` seconds."""
    if event.is_set():
        return True
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
