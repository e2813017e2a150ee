"""``TaskHubSidecarService``: every RPC of the Durable Task protobuf, wired to its part.

Client RPCs go to ``ClientService`` (entities: ``EntityClientService``),
worker RPCs to ``WorkItemDispatcher``.
Coroutine handlers run on the sidecar's event loop; the two completions,
by far the most frequent calls, are plain functions that hand their work to
the loop from the call's thread.
durable_fx errors become gRPC status codes with their message (a missing
instance is NOT_FOUND, a finished one that cannot be steered is
FAILED_PRECONDITION, ...); anything unexpected is INTERNAL and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    InvalidOperationError,
)
from ._client_service import ClientService
from ._entity_client import EntityClientService
from ._held import UnknownTokenError
from ._history_pb import UnsupportedEventError
from ._proto import empty_pb2, grpc, pb
from ._threaded import CallContext
from ._work_items import WorkItemDispatcher

__all__ = ["SidecarServicer"]

log = logging.getLogger("durable_fx.sidecar")

T = TypeVar("T")
Context = CallContext

_STATUS_OF_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InstanceNotFoundError, grpc.StatusCode.NOT_FOUND),
    (UnknownTokenError, grpc.StatusCode.NOT_FOUND),
    (InstanceExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidInstanceIdError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidOperationError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnsupportedEventError, grpc.StatusCode.INVALID_ARGUMENT),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_of(error: BaseException) -> grpc.StatusCode:
    """The gRPC status an error is reported with."""
    for kind, code in _STATUS_OF_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _answer(context: Context, work: Awaitable[T]) -> T:
    """Await ``work``; report a failure as the matching gRPC status."""
    try:
        return await work
    except Exception as error:
        code = status_of(error)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("a sidecar RPC failed")
        await context.abort(code, f"{type(error).__name__}: {error}")


def _complete(context: grpc.ServicerContext, take: Callable[[], None]) -> None:
    try:
        take()
    except UnknownTokenError as error:
        context.abort(grpc.StatusCode.NOT_FOUND, f"{type(error).__name__}: {error}")


class SidecarServicer:
    """The RPC handlers; method names are the protobuf's."""

    def __init__(
        self, clients: ClientService, entities: EntityClientService, work: WorkItemDispatcher
    ) -> None:
        self._clients = clients
        self._entities = entities
        self._work = work

    # -- client RPCs -------------------------------------------------------------------------

    async def Hello(self, request: empty_pb2.Empty, context: Context) -> empty_pb2.Empty:
        """Answer a worker's or client's greeting."""
        return empty_pb2.Empty()

    async def StartInstance(
        self, request: pb.CreateInstanceRequest, context: Context
    ) -> pb.CreateInstanceResponse:
        """Create an orchestration instance."""
        return await _answer(context, self._clients.start(request))

    async def GetInstance(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        """Read an instance's state."""
        return await _answer(context, self._clients.get(request))

    async def WaitForInstanceStart(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        """Wait until an instance leaves PENDING (up to the call's deadline)."""
        timeout = context.time_remaining()
        return await _answer(context, self._clients.wait_for_start(request, timeout))

    async def WaitForInstanceCompletion(
        self, request: pb.GetInstanceRequest, context: Context
    ) -> pb.GetInstanceResponse:
        """Wait until an instance finishes (up to the call's deadline)."""
        timeout = context.time_remaining()
        return await _answer(context, self._clients.wait_for_completion(request, timeout))

    async def RaiseEvent(
        self, request: pb.RaiseEventRequest, context: Context
    ) -> pb.RaiseEventResponse:
        """Deliver an external event."""
        return await _answer(context, self._clients.raise_event(request))

    async def TerminateInstance(
        self, request: pb.TerminateRequest, context: Context
    ) -> pb.TerminateResponse:
        """Terminate an instance (recursively if asked)."""
        return await _answer(context, self._clients.terminate(request))

    async def SuspendInstance(
        self, request: pb.SuspendRequest, context: Context
    ) -> pb.SuspendResponse:
        """Suspend an instance."""
        return await _answer(context, self._clients.suspend(request))

    async def ResumeInstance(
        self, request: pb.ResumeRequest, context: Context
    ) -> pb.ResumeResponse:
        """Resume a suspended instance."""
        return await _answer(context, self._clients.resume(request))

    async def QueryInstances(
        self, request: pb.QueryInstancesRequest, context: Context
    ) -> pb.QueryInstancesResponse:
        """One page of instances."""
        return await _answer(context, self._clients.query(request))

    async def ListInstanceIds(
        self, request: pb.ListInstanceIdsRequest, context: Context
    ) -> pb.ListInstanceIdsResponse:
        """One page of finished instances' ids."""
        return await _answer(context, self._clients.list_ids(request))

    async def PurgeInstances(
        self, request: pb.PurgeInstancesRequest, context: Context
    ) -> pb.PurgeInstancesResponse:
        """Delete finished instances."""
        return await _answer(context, self._clients.purge(request))

    async def RestartInstance(
        self, request: pb.RestartInstanceRequest, context: Context
    ) -> pb.RestartInstanceResponse:
        """Start a finished instance again."""
        return await _answer(context, self._clients.restart(request))

    async def RewindInstance(
        self, request: pb.RewindInstanceRequest, context: Context
    ) -> pb.RewindInstanceResponse:
        """Rewind a failed instance."""
        return await _answer(context, self._clients.rewind(request))

    async def StreamInstanceHistory(
        self, request: pb.StreamInstanceHistoryRequest, context: Context
    ) -> None:
        """Stream an instance's history in chunks."""
        await _answer(context, self._clients.history(request, context.write))

    async def CreateTaskHub(
        self, request: pb.CreateTaskHubRequest, context: Context
    ) -> pb.CreateTaskHubResponse:
        """Nothing to do: durable_fx stores create what they need on first use."""
        return pb.CreateTaskHubResponse()

    async def DeleteTaskHub(
        self, request: pb.DeleteTaskHubRequest, context: Context
    ) -> pb.DeleteTaskHubResponse:
        """Refused: deleting a whole store is not something a client should do by RPC."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "the durable_fx sidecar does not delete task hubs; delete the store itself "
            "(the SQLite file, or the Azure tables, queues and container of the hub)",
        )

    async def SkipGracefulOrchestrationTerminations(
        self, request: pb.SkipGracefulOrchestrationTerminationsRequest, context: Context
    ) -> pb.SkipGracefulOrchestrationTerminationsResponse:
        """Refused: durable_fx terminations are never graceful, so there is nothing to skip."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            "durable_fx has no graceful terminations; TerminateInstance ends an instance at once",
        )

    # -- entity client RPCs ------------------------------------------------------------------

    async def SignalEntity(
        self, request: pb.SignalEntityRequest, context: Context
    ) -> pb.SignalEntityResponse:
        """Send an operation to an entity."""
        return await _answer(context, self._entities.signal(request))

    async def GetEntity(
        self, request: pb.GetEntityRequest, context: Context
    ) -> pb.GetEntityResponse:
        """Read an entity (and its state if asked)."""
        return await _answer(context, self._entities.get(request))

    async def QueryEntities(
        self, request: pb.QueryEntitiesRequest, context: Context
    ) -> pb.QueryEntitiesResponse:
        """One page of entities."""
        return await _answer(context, self._entities.query(request))

    async def CleanEntityStorage(
        self, request: pb.CleanEntityStorageRequest, context: Context
    ) -> pb.CleanEntityStorageResponse:
        """Release orphaned entity locks."""
        return await _answer(context, self._entities.clean(request))

    # -- worker RPCs ---------------------------------------------------------------------------

    async def GetWorkItems(self, request: pb.GetWorkItemsRequest, context: Context) -> None:
        """Stream work items to one worker until it disconnects."""
        await self._work.serve(request, context.write)

    def CompleteOrchestratorTask(
        self, request: pb.OrchestratorResponse, context: grpc.ServicerContext
    ) -> pb.CompleteTaskResponse:
        """Take an episode the worker ran (on the call's thread: no trip to the loop)."""
        _complete(context, lambda: self._work.complete_orchestration(request))
        return pb.CompleteTaskResponse()

    def CompleteActivityTask(
        self, request: pb.ActivityResponse, context: grpc.ServicerContext
    ) -> pb.CompleteTaskResponse:
        """Take an activity's outcome (on the call's thread: no trip to the loop)."""
        _complete(context, lambda: self._work.complete_activity(request))
        return pb.CompleteTaskResponse()

    async def AbandonTaskOrchestratorWorkItem(
        self, request: pb.AbandonOrchestrationTaskRequest, context: Context
    ) -> pb.AbandonOrchestrationTaskResponse:
        """Release an episode the worker gave back."""
        await _answer(context, self._work.abandon(request.completionToken))
        return pb.AbandonOrchestrationTaskResponse()

    async def AbandonTaskActivityWorkItem(
        self, request: pb.AbandonActivityTaskRequest, context: Context
    ) -> pb.AbandonActivityTaskResponse:
        """Release an activity the worker gave back."""
        await _answer(context, self._work.abandon(request.completionToken))
        return pb.AbandonActivityTaskResponse()

    def CompleteEntityTask(
        self, request: pb.EntityBatchResult, context: grpc.ServicerContext
    ) -> pb.CompleteTaskResponse:
        """Take an entity batch the worker ran (on the call's thread: no trip to the loop)."""
        _complete(context, lambda: self._work.complete_entity_batch(request))
        return pb.CompleteTaskResponse()

    async def AbandonTaskEntityWorkItem(
        self, request: pb.AbandonEntityTaskRequest, context: Context
    ) -> pb.AbandonEntityTaskResponse:
        """Release an entity batch the worker gave back."""
        await _answer(context, self._work.abandon(request.completionToken))
        return pb.AbandonEntityTaskResponse()
