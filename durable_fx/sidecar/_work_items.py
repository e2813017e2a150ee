"""Work-item dispatch: the ``GetWorkItems`` streams and the completions that come back.

Each connected SDK worker holds one stream. Two fetch loops per stream lock
orchestrations and activities in the store, up to the concurrency the worker
asked for, and send them with a completion token; the token names the locked
item until the worker completes or abandons it. When the stream ends (the
worker disconnected, or the sidecar stops) everything it still holds is
released at once, so another worker gets it without waiting for the lease.

Activity results are written in batches: while one batch is being written,
the results completed meanwhile queue up for the next (one store call each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from .._clock import Clock
from .._errors import ConflictError
from .._history import TaskCompleted, TaskFailed
from ..storage._protocol import Store
from ..storage._records import (
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    LockBatch,
    OrchestrationMessage,
    OrchestrationWorkItem,
)
from ._episodes import EpisodeBridge, PreparedEpisode
from ._history_pb import failure_from_pb
from ._proto import optional_text, pb, text_value
from ._watch import InstanceWatch

__all__ = ["UnknownTokenError", "WorkItemDispatcher"]

log = logging.getLogger("durable_fx.sidecar")

T = TypeVar("T")
Send = Callable[[pb.WorkItem], Awaitable[None]]

_MIN_POLL = 0.005
_LOCK_BATCH = 100
_RETRY_AFTER_ERROR = timedelta(seconds=1)


class _StreamClosed(Exception):
    """Sending on a worker's stream failed: the worker is gone."""


class UnknownTokenError(LookupError):
    """A completion token no held work item has (completed, released, or from before a restart)."""

    def __init__(self, token: str) -> None:
        super().__init__(
            f"no work item is held under completion token {token!r}: it was completed or "
            "abandoned already, or released when its worker's stream ended or the sidecar "
            "restarted; it is (or was) delivered again"
        )


@dataclass(eq=False, slots=True)
class _Connection:
    """One ``GetWorkItems`` stream: what one SDK worker holds and may take."""

    max_episodes: int
    max_activities: int
    send: Send
    episodes: set[str] = field(default_factory=set)
    activities: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_sent: float = 0.0
    locking: set[asyncio.Task[Any]] = field(default_factory=set)
    """Lock calls in progress: they finish (and their items are held) even if the stream ends."""


@dataclass(slots=True)
class _HeldEpisode:
    connection: _Connection
    prepared: PreparedEpisode


@dataclass(slots=True)
class _HeldActivity:
    connection: _Connection
    item: ActivityWorkItem
    renewed_at: float


class WorkItemDispatcher:
    """Hands locked work to SDK workers and commits what they send back.

    Args:
        store: The store work is locked in.
        clock: Source of timestamps for results.
        bridge: Turns orchestration work items into requests and responses into commits.
        watch: Told about every commit, for clients waiting on an instance.
        owner: This sidecar's name in the store's locks.
        lease: How long locked work stays ours; held activities are renewed.
        ping_interval: Seconds of silence after which a stream gets a health ping.
        max_poll_interval: Longest sleep between polls of an idle stream.
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
    ) -> None:
        self._store = store
        self._clock = clock
        self._bridge = bridge
        self._watch = watch
        self._owner = owner
        self._lease = lease
        self._ping_interval = ping_interval
        self._max_poll = max_poll_interval
        self._held: dict[str, _HeldEpisode | _HeldActivity] = {}
        self._results: list[tuple[ActivityResult, asyncio.Future[None]]] = []
        self._results_ready = asyncio.Event()
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the result writer and the lease renewer (on the running loop)."""
        self._tasks = [
            asyncio.create_task(self._write_results_loop(), name="durable-fx-sidecar-results"),
            asyncio.create_task(self._renew_loop(), name="durable-fx-sidecar-renewals"),
        ]

    def begin_close(self) -> None:
        """End every stream (their work is released); completions are still accepted."""
        self._closing.set()

    async def close(self) -> None:
        """Release whatever is still held, write pending results, stop the background tasks."""
        self._closing.set()
        for token in list(self._held):
            await self._release(token, "the sidecar stopped")
        self._results_ready.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._write_results()

    # -- streams ---------------------------------------------------------------------------

    async def serve(self, request: pb.GetWorkItemsRequest, send: Send) -> None:
        """Feed one worker's stream until it disconnects or the sidecar stops."""
        lock = asyncio.Lock()

        async def send_one(item: pb.WorkItem) -> None:
            async with lock:  # one writer at a time on a stream
                try:
                    await send(item)
                except Exception as error:
                    raise _StreamClosed(str(error)) from error
            connection.last_sent = asyncio.get_running_loop().time()

        connection = _Connection(
            max_episodes=request.maxConcurrentOrchestrationWorkItems or 100,
            max_activities=request.maxConcurrentActivityWorkItems or 100,
            send=send_one,
            last_sent=asyncio.get_running_loop().time(),
        )
        loops = [
            asyncio.create_task(self._fetch_loop(connection, self._fetch_episodes)),
            asyncio.create_task(self._fetch_loop(connection, self._fetch_activities)),
            asyncio.create_task(self._ping_loop(connection)),
            asyncio.create_task(self._closing.wait()),
        ]
        log.info("worker connected (up to %d episodes, %d activities)", *_limits(connection))
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
        connection: _Connection,
        fetch: Callable[[_Connection], Awaitable[LockBatch[Any] | None]],
    ) -> None:
        """Fetch until the stream ends; back off while there is nothing to do."""
        delay = _MIN_POLL
        while True:
            try:
                batch = await fetch(connection)
            except _StreamClosed:
                raise
            except Exception:
                log.exception("fetching work failed; retrying")
                batch, delay = LockBatch(items=[]), self._max_poll
            if batch is None:  # the worker has no room: wait until it completes something
                await _wait_event(connection.wake, self._max_poll)
                connection.wake.clear()
                continue
            if batch.items:
                delay = _MIN_POLL
                continue
            timeout = delay
            if batch.next_due is not None:
                due_in = (batch.next_due - self._clock.now()).total_seconds()
                timeout = max(0.0, min(timeout, due_in))
            await self._store.wait_for_work(timeout)
            delay = min(delay * 2, self._max_poll)

    async def _ping_loop(self, connection: _Connection) -> None:
        """Keep an idle stream alive: the SDKs reconnect after a long silence."""
        loop = asyncio.get_running_loop()
        while True:
            quiet_for = loop.time() - connection.last_sent
            if quiet_for >= self._ping_interval:
                await connection.send(pb.WorkItem(healthPing=pb.HealthPing()))
                quiet_for = 0.0
            await asyncio.sleep(self._ping_interval - quiet_for)

    async def _fetch_episodes(
        self, connection: _Connection
    ) -> LockBatch[OrchestrationWorkItem] | None:
        free = connection.max_episodes - len(connection.episodes)
        if free <= 0:
            return None
        return await _unless_lost(connection, self._lock_episodes(connection, free))

    async def _lock_episodes(
        self, connection: _Connection, free: int
    ) -> LockBatch[OrchestrationWorkItem]:
        batch = await self._store.lock_orchestrations(
            owner=self._owner, limit=min(free, _LOCK_BATCH), lease=self._lease
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
        self, connection: _Connection, item: OrchestrationWorkItem
    ) -> pb.WorkItem | None:
        """Hold ``item`` under a new token and return its work item (``None``: no code to run)."""
        try:
            prepared = await self._bridge.prepare(item)
        except Exception as error:
            log.exception("preparing the episode of %s failed", item.instance.instance_id)
            await self._abandon_episode(item, f"{type(error).__name__}: {error}")
            return None
        if isinstance(prepared, EpisodeCommit):
            await self._commit_direct(item, prepared)
            return None
        token = uuid.uuid4().hex
        self._held[token] = _HeldEpisode(connection, prepared)
        connection.episodes.add(token)
        return pb.WorkItem(orchestratorRequest=prepared.request, completionToken=token)

    async def _fetch_activities(
        self, connection: _Connection
    ) -> LockBatch[ActivityWorkItem] | None:
        free = connection.max_activities - len(connection.activities)
        if free <= 0:
            return None
        return await _unless_lost(connection, self._lock_activities(connection, free))

    async def _lock_activities(
        self, connection: _Connection, free: int
    ) -> LockBatch[ActivityWorkItem]:
        batch = await self._store.lock_activities(
            owner=self._owner, limit=min(free, _LOCK_BATCH), lease=self._lease
        )
        now = asyncio.get_running_loop().time()
        requests = []
        for item in batch.items:
            token = uuid.uuid4().hex
            self._held[token] = _HeldActivity(connection, item, now)
            connection.activities.add(token)
            requests.append(pb.WorkItem(activityRequest=_request(item), completionToken=token))
        for request in requests:
            await connection.send(request)
        return batch

    # -- completions -------------------------------------------------------------------------

    async def complete_orchestration(self, response: pb.OrchestratorResponse) -> None:
        """Commit the episode the worker ran; a lost race drops it (the new owner redoes it)."""
        held = self._held.get(response.completionToken)
        if not isinstance(held, _HeldEpisode):
            raise UnknownTokenError(response.completionToken)
        self._untrack(response.completionToken, held)
        prepared = held.prepared
        instance_id = prepared.instance.instance_id
        try:
            commit = await self._bridge.finish(prepared, response)
            version = await self._store.commit_episode(prepared.item, commit)
        except ConflictError:
            self._bridge.forget(instance_id)
            log.info("episode for %s lost to another worker", instance_id)
            return
        except Exception as error:
            self._bridge.forget(instance_id)
            await self._abandon_episode(prepared.item, f"{type(error).__name__}: {error}")
            raise
        self._bridge.committed(prepared, commit, version)
        self._watch.changed(instance_id)

    async def complete_activity(self, response: pb.ActivityResponse) -> None:
        """Deliver an activity's outcome to its instance (written with others in one batch)."""
        held = self._held.get(response.completionToken)
        if not isinstance(held, _HeldActivity):
            raise UnknownTokenError(response.completionToken)
        self._untrack(response.completionToken, held)
        invocation = held.item.invocation
        now = self._clock.now()
        event: TaskCompleted | TaskFailed
        if response.HasField("failureDetails"):
            failure = failure_from_pb(response.failureDetails)
            event = TaskFailed(timestamp=now, task_scheduled_id=invocation.task_id, failure=failure)
        else:
            result = optional_text(response, "result")
            event = TaskCompleted(
                timestamp=now, task_scheduled_id=invocation.task_id, result=result
            )
        message = OrchestrationMessage(invocation.instance_id, event, invocation.execution_id)
        written = asyncio.get_running_loop().create_future()
        self._results.append((ActivityResult(held.item, message), written))
        self._results_ready.set()
        await written

    async def abandon(self, token: str) -> None:
        """Release a work item the worker gave back; it is delivered again shortly."""
        held = self._held.get(token)
        if held is None:
            raise UnknownTokenError(token)
        await self._release(token, "the worker abandoned it", _RETRY_AFTER_ERROR)

    # -- holding and releasing ------------------------------------------------------------------

    def _untrack(self, token: str, held: _HeldEpisode | _HeldActivity) -> None:
        """The worker is done with ``token``: it no longer holds it, and has room for more."""
        del self._held[token]
        connection = held.connection
        connection.episodes.discard(token)
        connection.activities.discard(token)
        connection.wake.set()

    async def _release(
        self, token: str, reason: str, retry_after: timedelta = timedelta(0)
    ) -> None:
        held = self._held.pop(token, None)
        if held is None:
            return
        held.connection.episodes.discard(token)
        held.connection.activities.discard(token)
        if isinstance(held, _HeldEpisode):
            await self._abandon_episode(held.prepared.item, reason, retry_after)
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
            self._watch.changed(instance_id)

    # -- background: result batches and lease renewal ----------------------------------------------

    async def _write_results_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            await self._write_results()

    async def _write_results(self) -> None:
        batch, self._results = self._results, []
        if not batch:
            return
        try:
            await self._store.complete_activities([result for result, _ in batch])
        except Exception as error:
            log.exception("writing %d activity results failed; they will run again", len(batch))
            for result, written in batch:
                with contextlib.suppress(Exception):
                    await self._store.abandon_activity(
                        result.item,
                        reason="could not record the result",
                        retry_after=_RETRY_AFTER_ERROR,
                    )
                if not written.done():
                    written.set_exception(error)
            return
        for _, written in batch:
            if not written.done():
                written.set_result(None)

    async def _renew_loop(self) -> None:
        """Renew the leases of activities workers hold for long (orchestrations are short)."""
        loop = asyncio.get_running_loop()
        interval = self._lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            due = loop.time() - interval
            for held in list(self._held.values()):
                if isinstance(held, _HeldActivity) and held.renewed_at <= due:
                    try:
                        await self._store.renew_activity_lease(held.item, self._lease)
                        held.renewed_at = loop.time()
                    except Exception:
                        log.warning("could not renew the lease of %s", held.item.invocation.name)


def _request(item: ActivityWorkItem) -> pb.ActivityRequest:
    invocation = item.invocation
    return pb.ActivityRequest(
        name=invocation.name,
        input=text_value(invocation.input),
        orchestrationInstance=pb.OrchestrationInstance(
            instanceId=invocation.instance_id, executionId=text_value(invocation.execution_id)
        ),
        taskId=invocation.task_id,
    )


def _limits(connection: _Connection) -> tuple[int, int]:
    return connection.max_episodes, connection.max_activities


async def _unless_lost(connection: _Connection, locking: Awaitable[T]) -> T:
    """Run a lock call that a stream ending cannot cut short.

    Cancelled halfway, a lock call would leave its items locked but held by
    no token until their lease expired; shielded, it finishes, holds them,
    and the ending stream waits for it and then releases them.
    """
    task = asyncio.ensure_future(locking)
    connection.locking.add(task)
    task.add_done_callback(connection.locking.discard)
    return await asyncio.shield(task)


async def _wait_event(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)
