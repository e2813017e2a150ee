"""The client RPCs: start, read, steer, query and purge instances.

They go through ``AsyncDurableClient`` (the same checks and messages as any
durable_fx client) and, where the protobuf carries payloads as JSON text,
straight to the store, so text passes through without being re-encoded.
Errors are durable_fx errors; the service maps them to gRPC status codes.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import datetime

from .._clock import Clock
from .._errors import InstanceExistsError, InvalidOperationError
from .._history import ExecutionStarted, SubOrchestrationInstanceCreated
from .._ids import validate_instance_id
from .._state import OrchestrationStatus
from ..client._async import AsyncDurableClient
from ..storage._protocol import Store
from ..storage._records import InstanceQuery, InstanceRecord, OrchestrationMessage
from ._history_pb import (
    event_to_pb,
    failure_to_pb,
    status_from_pb,
    status_to_pb,
    trace_from_pb,
)
from ._proto import (
    from_timestamp,
    optional_moment,
    optional_text,
    page_size,
    pb,
    text_value,
    timestamp,
    wrappers_pb2,
)
from ._watch import InstanceWatch

__all__ = ["ClientService"]

_HISTORY_CHUNK = 500
_TERMINAL = frozenset(s for s in OrchestrationStatus if s.is_terminal)


class ClientService:
    """Implements the client side of ``TaskHubSidecarService`` on a store."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        watch: InstanceWatch,
        work_arrived: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._watch = watch
        self._work_arrived = work_arrived
        """Wakes the work-item streams: a message this process enqueued is ready."""
        # Ids only need to be unique; uuid4 per start costs a syscall and a GIL round trip.
        self._random = random.Random()
        self._client = AsyncDurableClient(store, clock=clock)

    @property
    def client(self) -> AsyncDurableClient:
        """The durable_fx client the RPCs go through."""
        return self._client

    # -- starting -------------------------------------------------------------------------

    async def start(self, request: pb.CreateInstanceRequest) -> pb.CreateInstanceResponse:
        """Create an instance (replacing a finished one, unless the reuse policy says no).

        With no ``orchestrationIdReusePolicy`` a finished instance is replaced,
        as the Durable Task backends do; a policy names the statuses to replace.
        """
        instance_id = request.instanceId or self._new_id()
        validate_instance_id(instance_id)
        requested: frozenset[OrchestrationStatus] = _TERMINAL
        if request.HasField("orchestrationIdReusePolicy"):
            statuses = request.orchestrationIdReusePolicy.replaceableStatus
            requested = frozenset(status_from_pb(s) for s in statuses)
        scheduled = None
        if request.HasField("scheduledStartTimestamp"):
            scheduled = from_timestamp(request.scheduledStartTimestamp)
        started = ExecutionStarted(
            timestamp=self._clock.now(),
            name=request.name,
            instance_id=instance_id,
            execution_id=optional_text(request, "executionId") or self._new_id(),
            input=optional_text(request, "input"),
            scheduled_start=scheduled,
            version=optional_text(request, "version"),
            tags=dict(request.tags) or None,
            trace_context=trace_from_pb(request, "parentTraceContext"),
        )
        message = OrchestrationMessage(instance_id, started, started.execution_id, scheduled)
        await self._create(message, requested)
        self._watch.changed(instance_id)
        self._work_arrived()
        return pb.CreateInstanceResponse(instanceId=instance_id)

    def _new_id(self) -> str:
        return f"{self._random.getrandbits(128):032x}"

    async def _create(
        self, message: OrchestrationMessage, requested: frozenset[OrchestrationStatus]
    ) -> None:
        """Create the instance; the store checks the policy in the same step as the write."""
        try:
            await self._store.create_instance(message, replaceable=requested & _TERMINAL)
        except InstanceExistsError as error:
            if OrchestrationStatus(error.status) in requested - _TERMINAL:
                raise InvalidOperationError(
                    f"instance {message.instance_id!r} is {error.status}: durable_fx replaces "
                    "only finished instances; terminate it first"
                ) from error
            raise

    async def restart(self, request: pb.RestartInstanceRequest) -> pb.RestartInstanceResponse:
        """Start a finished instance again with its input (under its id, or a new one)."""
        new_id = await self._client.restart(
            request.instanceId, new_instance_id=request.restartWithNewInstanceId
        )
        self._watch.changed(new_id)
        self._work_arrived()
        return pb.RestartInstanceResponse(instanceId=new_id)

    # -- reading ----------------------------------------------------------------------------

    async def get(self, request: pb.GetInstanceRequest) -> pb.GetInstanceResponse:
        """The instance's state (payloads only if asked for)."""
        record = await self._store.get_instance(request.instanceId)
        return _instance_response(record, request.getInputsAndOutputs)

    async def wait_for_start(
        self, request: pb.GetInstanceRequest, timeout: float | None
    ) -> pb.GetInstanceResponse:
        """The state once the instance has left PENDING; ``TimeoutError`` after ``timeout``."""
        record = await self._watch.wait(
            request.instanceId, lambda r: r.status is not OrchestrationStatus.PENDING, timeout
        )
        return _instance_response(record, request.getInputsAndOutputs)

    async def wait_for_completion(
        self, request: pb.GetInstanceRequest, timeout: float | None
    ) -> pb.GetInstanceResponse:
        """The state once the instance has finished; ``TimeoutError`` after ``timeout``."""
        record = await self._watch.wait(request.instanceId, lambda r: r.status.is_terminal, timeout)
        return _instance_response(record, request.getInputsAndOutputs)

    async def history(
        self,
        request: pb.StreamInstanceHistoryRequest,
        send: Callable[[pb.HistoryChunk], Awaitable[None]],
    ) -> None:
        """Send the current execution's history in chunks."""
        await self._client._require(request.instanceId, "read the history of", terminal_ok=True)
        events = await self._store.load_history(request.instanceId)
        for start in range(0, len(events), _HISTORY_CHUNK):
            chunk = events[start : start + _HISTORY_CHUNK]
            await send(pb.HistoryChunk(events=[event_to_pb(e) for e in chunk]))

    async def query(self, request: pb.QueryInstancesRequest) -> pb.QueryInstancesResponse:
        """One page of instances matching the query, newest first."""
        query = request.query
        page = await self._store.query_instances(
            InstanceQuery(
                statuses=frozenset(status_from_pb(s) for s in query.runtimeStatus),
                created_from=optional_moment(query, "createdTimeFrom"),
                created_to=optional_moment(query, "createdTimeTo"),
                instance_id_prefix=optional_text(query, "instanceIdPrefix"),
                page_size=page_size(query.maxInstanceCount),
                continuation=optional_text(query, "continuationToken"),
            )
        )
        return pb.QueryInstancesResponse(
            orchestrationState=[_state(r, query.fetchInputsAndOutputs) for r in page.items],
            continuationToken=text_value(page.continuation),
        )

    async def list_ids(self, request: pb.ListInstanceIdsRequest) -> pb.ListInstanceIdsResponse:
        """Ids of finished instances, filtered by when they finished, one page at a time."""
        statuses = {status_from_pb(s) for s in request.runtimeStatus} & _TERMINAL or _TERMINAL
        finished_from = optional_moment(request, "completedTimeFrom")
        finished_to = optional_moment(request, "completedTimeTo")
        wanted = page_size(request.pageSize)
        continuation = optional_text(request, "lastInstanceKey")
        ids: list[str] = []
        # Whole store pages are consumed, so the store's continuation stays exact.
        while len(ids) < wanted:
            page = await self._store.query_instances(
                InstanceQuery(
                    statuses=frozenset(statuses),
                    page_size=wanted - len(ids),
                    continuation=continuation,
                )
            )
            ids += [
                r.instance_id
                for r in page.items
                if _within(r.updated_at, finished_from, finished_to)
            ]
            continuation = page.continuation
            if continuation is None:
                break
        return pb.ListInstanceIdsResponse(instanceIds=ids, lastInstanceKey=text_value(continuation))

    # -- steering -----------------------------------------------------------------------------

    async def raise_event(self, request: pb.RaiseEventRequest) -> pb.RaiseEventResponse:
        """Deliver an event to a running instance."""
        payload = optional_text(request, "input")
        await self._client._raise_event_json(request.instanceId, request.name, payload)
        self._work_arrived()
        return pb.RaiseEventResponse()

    async def terminate(self, request: pb.TerminateRequest) -> pb.TerminateResponse:
        """Terminate an instance (and, if asked, the sub-orchestrations it waits on)."""
        output = optional_text(request, "output")
        await self._client._terminate_json(request.instanceId, output, recursive=request.recursive)
        self._work_arrived()
        return pb.TerminateResponse()

    async def suspend(self, request: pb.SuspendRequest) -> pb.SuspendResponse:
        """Suspend a running instance."""
        await self._client._suspend_json(request.instanceId, optional_text(request, "reason"))
        self._work_arrived()
        return pb.SuspendResponse()

    async def resume(self, request: pb.ResumeRequest) -> pb.ResumeResponse:
        """Resume a suspended instance."""
        await self._client._resume_json(request.instanceId, optional_text(request, "reason"))
        self._work_arrived()
        return pb.ResumeResponse()

    async def rewind(self, request: pb.RewindInstanceRequest) -> pb.RewindInstanceResponse:
        """Rewind a failed instance: the SDK worker drops its failed results and it runs on."""
        await self._client.rewind(request.instanceId, optional_text(request, "reason"))
        self._work_arrived()
        return pb.RewindInstanceResponse()

    # -- purging -------------------------------------------------------------------------------

    async def purge(self, request: pb.PurgeInstancesRequest) -> pb.PurgeInstancesResponse:
        """Delete finished instances with their history (one, a batch, or by filter)."""
        which = request.WhichOneof("request")
        if which == "instanceId":
            purged = await self._purge_tree(request.instanceId, request.recursive, strict=True)
        elif which == "instanceBatch":
            purged = 0
            for instance_id in request.instanceBatch.instanceIds:
                purged += await self._purge_tree(instance_id, request.recursive, strict=False)
        elif which == "purgeInstanceFilter":
            purged = await self._purge_filtered(request.purgeInstanceFilter)
        else:
            raise ValueError("PurgeInstancesRequest names no instance, batch or filter")
        for_one = which == "instanceId"
        if for_one:
            self._watch.changed(request.instanceId)
        return pb.PurgeInstancesResponse(
            deletedInstanceCount=purged, isComplete=wrappers_pb2.BoolValue(value=True)
        )

    async def _purge_tree(self, instance_id: str, recursive: bool, *, strict: bool) -> int:
        """Purge a finished instance and, if ``recursive``, its finished sub-orchestrations.

        With ``strict``, a running instance is an error (terminate it first);
        otherwise it is skipped. A missing one counts as nothing purged.
        """
        record = await self._store.get_instance(instance_id)
        if record is None:
            return 0
        if not record.status.is_terminal:
            if not strict:
                return 0
            raise InvalidOperationError(
                f"instance {instance_id!r} is {record.status.value}; terminate it before purging"
            )
        purged = 0
        if recursive:
            for child in await self._children(instance_id):
                purged += await self._purge_tree(child, True, strict=False)
        return purged + int(await self._store.purge_instance(instance_id))

    async def _children(self, instance_id: str) -> list[str]:
        history = await self._store.load_history(instance_id)
        children = (
            e.instance_id for e in history if isinstance(e, SubOrchestrationInstanceCreated)
        )
        return list(dict.fromkeys(children))

    async def _purge_filtered(self, purge_filter: pb.PurgeInstanceFilter) -> int:
        statuses = [status_from_pb(s) for s in purge_filter.runtimeStatus]
        return await self._client.purge(
            status=statuses or None,
            created_from=optional_moment(purge_filter, "createdTimeFrom"),
            created_to=optional_moment(purge_filter, "createdTimeTo"),
        )


def _instance_response(record: InstanceRecord | None, payloads: bool) -> pb.GetInstanceResponse:
    if record is None:
        return pb.GetInstanceResponse(exists=False)
    return pb.GetInstanceResponse(exists=True, orchestrationState=_state(record, payloads))


def _state(record: InstanceRecord, payloads: bool) -> pb.OrchestrationState:
    """The protobuf state of an instance row; inputs, outputs and custom status if asked."""
    state = pb.OrchestrationState(
        instanceId=record.instance_id,
        name=record.name,
        orchestrationStatus=status_to_pb(record.status),
        createdTimestamp=timestamp(record.created_at),
        lastUpdatedTimestamp=timestamp(record.updated_at),
        executionId=text_value(record.execution_id),
        parentInstanceId=text_value(record.parent_instance_id),
        failureDetails=failure_to_pb(record.failure) if record.failure is not None else None,
        version=text_value(record.orchestration_version),
    )
    if record.status.is_terminal:
        state.completedTimestamp.CopyFrom(timestamp(record.updated_at))
    if payloads:
        for field, value in (
            ("input", record.input),
            ("output", record.output),
            ("customStatus", record.custom_status),
        ):
            if value is not None:
                getattr(state, field).value = value
    return state


def _within(moment: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or moment >= start) and (end is None or moment < end)
