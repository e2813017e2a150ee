"""The sidecar's message limit: work items, workers' answers, requests, and gRPC's hard cap.

``--max-message-bytes`` bounds every message. A work item over it is not
sent (a default worker could not receive it): its instance or activity
fails instead. A worker's answer over it, refused by gRPC itself
(RESOURCE_EXHAUSTED), would be refused before the sidecar knew which work
item it answers: the SDK logs the refusal and drops the answer, and the
item stays with the worker, its lease renewed, until the stream ends. So
gRPC's own receive limit is a hard cap above the limit (``receive_cap``),
and the sidecar checks the limit itself:

- an activity result over it becomes a ``TaskFailed`` of its task, and an
  episode's answer over it fails its instance (``MessageLimit``); the call
  answers OK, so the worker carries on;
- every other request over it is refused with RESOURCE_EXHAUSTED before it
  is parsed, as gRPC would (``RequestLimitInterceptor``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._history import FailureDetails
from ..storage._records import ActivityWorkItem, EpisodeCommit
from ._episodes import EpisodeBridge, EpisodePlan, PreparedEpisode
from ._proto import grpc, pb

__all__ = [
    "COMPLETIONS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RESULT_TOO_LARGE_ERROR",
    "TOO_LARGE_ERROR",
    "MessageLimit",
    "RequestLimitInterceptor",
    "check_max_message_bytes",
    "failed_activity",
    "receive_cap",
]

log = logging.getLogger("durable_fx.sidecar")

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""gRPC's default receive limit, which the SDKs' workers and clients keep unless told otherwise.

A work item larger than this would break a default worker's whole stream,
and a request larger than this is mostly a mistake; raise it on both sides.
"""

TOO_LARGE_ERROR = "WorkItemTooLargeError"
"""The error type of an instance or activity failed because its work item was too large."""

RESULT_TOO_LARGE_ERROR = "ResultTooLargeError"
"""The error type of an activity or instance failed because its worker's answer was too large."""

COMPLETIONS = frozenset({"CompleteActivityTask", "CompleteEntityTask", "CompleteOrchestratorTask"})
"""The RPCs whose handlers check the limit themselves (they know the work item)."""

_MIN_MESSAGE_BYTES = 64 * 1024
_GRPC_MAX = 2**31 - 1  # gRPC takes the limit as a C int
_HEADROOM = 16 * 1024 * 1024


def check_max_message_bytes(limit: int) -> int:
    """``limit`` if gRPC can use it as a message limit and a history still fits; else ValueError."""
    if not _MIN_MESSAGE_BYTES <= limit <= _GRPC_MAX:
        raise ValueError(
            f"max_message_bytes must be between {_MIN_MESSAGE_BYTES} and {_GRPC_MAX}, got {limit}"
        )
    return limit


def receive_cap(limit: int) -> int:
    """The gRPC receive limit for a sidecar whose message limit is ``limit``.

    ``max(4 * limit, limit + 16 MiB)``, 20 MiB for the default 4 MiB: enough
    that an answer a few times too large (a result that grew, a file
    returned by mistake) still reaches its handler and fails its own work
    item, and still a bound on what one call makes the sidecar hold (about
    three times the message: gRPC's buffers, the bytes, the parsed message).
    """
    return min(max(4 * limit, limit + _HEADROOM), _GRPC_MAX)


def too_large(what: str, size: int, limit: int) -> str:
    """Why a work item was not sent: its size, the limit, and what to do about it."""
    return (
        f"{what} is {size} bytes; the worker accepts at most {limit} "
        "(the sidecar's max message size): raise --max-message-bytes on the sidecar and "
        "the worker's gRPC max_receive_message_length together, or keep payloads smaller"
    )


def result_too_large(what: str, size: int, limit: int) -> str:
    """Why a worker's answer was not taken: its size, the limit, and what to do about it."""
    return (
        f"{what} is {size} bytes; the sidecar takes at most {limit} (its max message size): "
        "raise --max-message-bytes on the sidecar (and the workers' gRPC "
        "max_receive_message_length with it), or keep results smaller"
    )


class MessageLimit:
    """What happens to work items and workers' answers over the sidecar's message limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def unsendable_episode(self, instance_id: str, size: int) -> str:
        """Why the instance of an episode no worker can receive fails."""
        what = f"the work item of instance {instance_id!r} (its history)"
        reason = too_large(what, size, self.limit)
        log.warning("%s; the instance fails", reason)
        return reason

    def unsendable_entity_batch(self, instance_id: str, size: int) -> str:
        """Why the operations of an entity batch no worker can receive fail."""
        what = f"the work item of entity {instance_id!r} (its state and operations)"
        reason = too_large(what, size, self.limit)
        log.warning("%s; its operations fail", reason)
        return reason

    def entity_answer_too_large(self, instance_id: str, size: int) -> FailureDetails:
        """The failure of every operation of a batch whose answer was over the limit."""
        what = f"the answer to the batch of entity {instance_id!r} (its state and results)"
        reason = too_large(what, size, self.limit)
        log.warning("%s; its operations fail", reason)
        return FailureDetails(error_type=RESULT_TOO_LARGE_ERROR, message=reason)

    def unsendable_activity(self, item: ActivityWorkItem, size: int) -> pb.ActivityResponse:
        """The failure that answers an activity no worker can receive."""
        invocation = item.invocation
        what = f"the work item of activity {invocation.name!r} (its input)"
        reason = too_large(what, size, self.limit)
        log.warning("%s; it fails in instance %s", reason, invocation.instance_id)
        return failed_activity(TOO_LARGE_ERROR, reason)

    def activity_answer(
        self, item: ActivityWorkItem, response: pb.ActivityResponse
    ) -> pb.ActivityResponse:
        """``response``, or the failure that replaces it when it is over the limit."""
        size = response.ByteSize()
        if size <= self.limit:
            return response
        invocation = item.invocation
        what = (
            f"the result of activity {invocation.name!r} (task {invocation.task_id} "
            f"of instance {invocation.instance_id!r})"
        )
        reason = result_too_large(what, size, self.limit)
        log.warning("%s; the task fails", reason)
        return failed_activity(RESULT_TOO_LARGE_ERROR, reason)

    def failing(self, bridge: EpisodeBridge, size: int) -> EpisodePlan:
        """The plan failing an episode whose answer of ``size`` bytes was dropped."""

        async def fail(prepared: PreparedEpisode) -> EpisodeCommit:
            what = (
                f"the answer of instance {prepared.instance.instance_id!r}'s orchestrator "
                "(its actions, output and custom status)"
            )
            reason = result_too_large(what, size, self.limit)
            log.warning("%s; the instance fails", reason)
            return await bridge.fail(prepared, RESULT_TOO_LARGE_ERROR, reason)

        return fail


def failed_activity(error_type: str, reason: str) -> pb.ActivityResponse:
    """The response of an activity that failed outside any worker's code, and why."""
    return pb.ActivityResponse(
        failureDetails=pb.TaskFailureDetails(errorType=error_type, errorMessage=reason)
    )


# -- every other request: refused before it is parsed ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Oversized:
    """What the deserializer hands on instead of parsing a request over the limit."""

    size: int


class RequestLimitInterceptor(grpc.ServerInterceptor):
    """Refuses requests over ``limit`` with RESOURCE_EXHAUSTED, except the completions.

    The size is the request's length on the wire, checked before parsing, and
    the answer reads like gRPC's own ("Received message larger than max").
    Every request of the service is a single message, so only unary-request
    handlers are wrapped.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = (handler_call_details.method or "").rsplit("/", 1)[-1]
        if handler is None or handler.request_streaming or method in COMPLETIONS:
            return handler
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._guard(handler.unary_stream),
                self._deserializer(handler.request_deserializer),
                handler.response_serializer,
            )
        return grpc.unary_unary_rpc_method_handler(
            self._guard(handler.unary_unary),
            self._deserializer(handler.request_deserializer),
            handler.response_serializer,
        )

    def _deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        limit = self._limit

        def deserialize(data: bytes) -> Any:
            if len(data) > limit:
                return _Oversized(len(data))
            return data if parse is None else parse(data)

        return deserialize

    def _guard(self, behavior: Callable[[Any, grpc.ServicerContext], Any] | None) -> Any:
        assert behavior is not None
        limit = self._limit

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _Oversized):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Received message larger than max ({request.size} vs. {limit}): "
                    "the sidecar's --max-message-bytes",
                )
            return behavior(request, context)

        return guarded
