"""Handles: one instance, and the type of its result.

``client.handle(orchestrator, instance_id)`` returns an ``AsyncInstanceHandle[R]``
(``DurableClient``: an ``InstanceHandle[R]``) whose ``result()`` is the
orchestrator's ``R``, rebuilt from JSON by the codec of its declared return
type, as ``ctx.call_sub_orchestrator`` does for a parent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._errors import InstanceNotFoundError, OrchestrationFailedError
from .._registry import definition_of
from .._serialization import PayloadCodec, return_annotation
from .._state import OrchestrationState, OrchestrationStatus

if TYPE_CHECKING:
    from ._async import AsyncDurableClient
    from ._sync import DurableClient

__all__ = ["AsyncInstanceHandle", "InstanceHandle", "result_codec"]

R = TypeVar("R")

_PLAIN: PayloadCodec[Any] = PayloadCodec(Any)


def result_codec(orchestrator: Callable[..., Any] | str, result_type: Any) -> PayloadCodec[Any]:
    """The codec of an orchestrator's result: ``result_type``, else its declared ``R``."""
    if result_type is not None:
        return PayloadCodec.for_type(result_type)
    if isinstance(orchestrator, str):
        return _PLAIN
    definition = definition_of(orchestrator)
    if definition is not None:
        return definition.output_codec
    return PayloadCodec.for_type(return_annotation(orchestrator, generator=True))


def result_of(state: OrchestrationState, codec: PayloadCodec[Any]) -> Any:
    """The output of a finished instance as its type; its end as an error otherwise."""
    if state.status is OrchestrationStatus.COMPLETED:
        return codec.from_python(state.output)
    failure = state.failure
    if state.status is OrchestrationStatus.TERMINATED or failure is None:
        reason = None if state.output is None else str(state.output)
        raise OrchestrationFailedError(state.instance_id, state.status.value, message=reason)
    raise OrchestrationFailedError(
        state.instance_id,
        state.status.value,
        failure.error_type,
        failure.message,
        failure.stack_trace,
    )


class AsyncInstanceHandle(Generic[R]):
    """One instance, through an ``AsyncDurableClient``; ``result()`` is an ``R``.

    Get one from ``client.handle(orchestrator, instance_id)``.
    """

    __slots__ = ("_client", "_codec", "id")

    def __init__(self, client: AsyncDurableClient, instance_id: str, codec: PayloadCodec[R]):
        self._client = client
        self._codec = codec
        self.id = instance_id
        """The instance id."""

    def __repr__(self) -> str:
        return f"AsyncInstanceHandle({self.id!r})"

    async def result(self, *, timeout: float | None = None) -> R:
        """Wait for the instance to finish and return its output as ``R``.

        Raises ``OrchestrationFailedError`` if it FAILED or was TERMINATED, and
        ``TimeoutError`` after ``timeout`` seconds (``None``: no limit).
        """
        state = await self._client.wait(self.id, timeout=timeout)
        result: R = result_of(state, self._codec)
        return result

    async def state(self, *, history: bool = False) -> OrchestrationState:
        """The instance's current state; ``InstanceNotFoundError`` if there is none."""
        state = await self._client.get(self.id, history=history)
        if state is None:
            raise InstanceNotFoundError(self.id)
        return state

    async def wait(
        self, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """See ``AsyncDurableClient.wait``."""
        return await self._client.wait(self.id, timeout=timeout, poll_interval=poll_interval)

    async def raise_event(
        self, name: str, data: Any = None, *, event_id: str | None = None
    ) -> bool:
        """See ``AsyncDurableClient.raise_event``."""
        return await self._client.raise_event(self.id, name, data, event_id=event_id)

    async def terminate(self, reason: Any = None, *, recursive: bool = True) -> None:
        """See ``AsyncDurableClient.terminate``."""
        await self._client.terminate(self.id, reason, recursive=recursive)

    async def suspend(self, reason: Any = None) -> None:
        """See ``AsyncDurableClient.suspend``."""
        await self._client.suspend(self.id, reason)

    async def resume(self, reason: Any = None) -> None:
        """See ``AsyncDurableClient.resume``."""
        await self._client.resume(self.id, reason)

    async def rewind(self, reason: str | None = None) -> None:
        """See ``AsyncDurableClient.rewind``."""
        await self._client.rewind(self.id, reason)


class InstanceHandle(Generic[R]):
    """One instance, through a ``DurableClient`` (blocking); ``result()`` is an ``R``.

    Get one from ``client.handle(orchestrator, instance_id)``. Its calls go
    through that client's own methods (``wait``...), so a client that changes
    how it waits (the test environment's skips time) changes its handles too.
    """

    __slots__ = ("_client", "_codec", "id")

    def __init__(self, client: DurableClient, instance_id: str, codec: PayloadCodec[R]) -> None:
        self._client = client
        self._codec = codec
        self.id = instance_id
        """The instance id."""

    def __repr__(self) -> str:
        return f"InstanceHandle({self.id!r})"

    def result(self, *, timeout: float | None = None) -> R:
        """See ``AsyncInstanceHandle.result``."""
        result: R = result_of(self._client.wait(self.id, timeout=timeout), self._codec)
        return result

    def state(self, *, history: bool = False) -> OrchestrationState:
        """See ``AsyncInstanceHandle.state``."""
        state = self._client.get(self.id, history=history)
        if state is None:
            raise InstanceNotFoundError(self.id)
        return state

    def wait(
        self, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """See ``AsyncDurableClient.wait``."""
        return self._client.wait(self.id, timeout=timeout, poll_interval=poll_interval)

    def raise_event(self, name: str, data: Any = None, *, event_id: str | None = None) -> bool:
        """See ``AsyncDurableClient.raise_event``."""
        return self._client.raise_event(self.id, name, data, event_id=event_id)

    def terminate(self, reason: Any = None, *, recursive: bool = True) -> None:
        """See ``AsyncDurableClient.terminate``."""
        self._client.terminate(self.id, reason, recursive=recursive)

    def suspend(self, reason: Any = None) -> None:
        """See ``AsyncDurableClient.suspend``."""
        self._client.suspend(self.id, reason)

    def resume(self, reason: Any = None) -> None:
        """See ``AsyncDurableClient.resume``."""
        self._client.resume(self.id, reason)

    def rewind(self, reason: str | None = None) -> None:
        """See ``AsyncDurableClient.rewind``."""
        self._client.rewind(self.id, reason)
