"""The synchronous client: ``AsyncDurableClient``'s operations, blocking.

Each call runs the async client's coroutine on a private event-loop thread (a
``Portal``), so
the two clients share one implementation (no hand-written sync twin).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, overload

from .._clock import Clock
from .._entity import EntityId, EntityMetadata
from .._ids import validate_instance_id
from .._portal import Portal
from .._replay.context import OrchestrationContext
from .._reuse import IdReuse, IdReusePolicy
from .._state import OrchestrationState, OrchestrationStatus
from ..storage._protocol import Store
from ..storage._records import PoisonedMessage
from ._async import (
    AsyncDurableClient,
    EntityPage,
    EntityStorageCleanup,
    PoisonIds,
    QueryResult,
    StatusFilter,
)
from ._handle import InstanceHandle, result_codec
from ._schedules import ScheduleDescription, ScheduleHandle

__all__ = ["DurableClient"]

T = TypeVar("T")
R = TypeVar("R")
In = TypeVar("In")
_Ctx = OrchestrationContext


class DurableClient:
    """The synchronous client: the same operations as ``AsyncDurableClient``, blocking."""

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        clock: Clock | None = None,
        default_version: str | None = None,
    ) -> None:
        self._client = AsyncDurableClient(store, clock=clock, default_version=default_version)
        self._portal = Portal("durable-fx-client")

    @property
    def store(self) -> Store:
        """The store this client talks to."""
        return self._client.store

    @overload
    def start(
        self,
        orchestrator: Callable[[_Ctx, In], object],
        input: In,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    def start(
        self,
        orchestrator: Callable[[_Ctx, None], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    def start(
        self,
        orchestrator: Callable[[_Ctx], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...
    @overload
    def start(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str: ...

    def start(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        start_at: datetime | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        version: str | None = None,
    ) -> str:
        """See ``AsyncDurableClient.start``."""
        return self._portal.call(
            self._client._start(orchestrator, input, instance_id, start_at, reuse, version)
        )

    @overload
    def handle(
        self, orchestrator: Callable[..., Generator[Any, Any, R]], instance_id: str
    ) -> InstanceHandle[R]: ...
    @overload
    def handle(
        self, orchestrator: str, instance_id: str, *, result_type: type[R]
    ) -> InstanceHandle[R]: ...
    @overload
    def handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str
    ) -> InstanceHandle[Any]: ...

    def handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str, *, result_type: Any = None
    ) -> InstanceHandle[Any]:
        """See ``AsyncDurableClient.handle``; the handle's calls block."""
        return self._handle(orchestrator, instance_id, result_type)

    def _handle(
        self, orchestrator: Callable[..., Any] | str, instance_id: str, result_type: Any
    ) -> InstanceHandle[Any]:
        validate_instance_id(instance_id)
        return InstanceHandle(self, instance_id, result_codec(orchestrator, result_type))

    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx, In], Generator[Any, Any, R]],
        input: In,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx, None], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx], Generator[Any, Any, R]],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> R: ...
    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx, In], object],
        input: In,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx, None], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    def run(
        self,
        orchestrator: Callable[[_Ctx], object],
        input: None = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...
    @overload
    def run(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
        result_type: type[R],
    ) -> R: ...
    @overload
    def run(
        self,
        orchestrator: str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
    ) -> Any: ...

    def run(
        self,
        orchestrator: Callable[..., Any] | str,
        input: Any = None,
        *,
        instance_id: str | None = None,
        reuse: IdReuse = IdReusePolicy.REFUSE,
        timeout: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """See ``AsyncDurableClient.run``."""
        started = self._portal.call(
            self._client._start(orchestrator, input, instance_id, None, reuse)
        )
        return self._handle(orchestrator, started, result_type).result(timeout=timeout)

    def get(self, instance_id: str, *, history: bool = False) -> OrchestrationState | None:
        """See ``AsyncDurableClient.get``."""
        return self._portal.call(self._client.get(instance_id, history=history))

    def wait(
        self, instance_id: str, *, timeout: float | None = 60.0, poll_interval: float = 0.25
    ) -> OrchestrationState:
        """See ``AsyncDurableClient.wait``."""
        return self._portal.call(
            self._client.wait(instance_id, timeout=timeout, poll_interval=poll_interval)
        )

    def raise_event(
        self, instance_id: str, name: str, data: Any = None, *, event_id: str | None = None
    ) -> bool:
        """See ``AsyncDurableClient.raise_event``."""
        return self._portal.call(
            self._client.raise_event(instance_id, name, data, event_id=event_id)
        )

    def signal_entity(
        self,
        entity: EntityId,
        operation: str,
        input: Any = None,
        *,
        at: datetime | None = None,
        request_id: str | None = None,
    ) -> bool:
        """See ``AsyncDurableClient.signal_entity``."""
        return self._portal.call(
            self._client.signal_entity(entity, operation, input, at=at, request_id=request_id)
        )

    def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str = "",
        state_type: Any = Any,
        page_size: int = 100,
        continuation: str | None = None,
    ) -> EntityPage:
        """See ``AsyncDurableClient.query_entities``."""
        return self._portal.call(
            self._client.query_entities(
                name=name,
                key_prefix=key_prefix,
                state_type=state_type,
                page_size=page_size,
                continuation=continuation,
            )
        )

    def create_schedule(
        self,
        schedule_id: str,
        orchestration: Callable[..., Any] | str,
        input: Any = None,
        **when: Any,
    ) -> ScheduleHandle:
        """See ``AsyncDurableClient.create_schedule``."""
        created = self._portal.call(
            self._client.create_schedule(schedule_id, orchestration, input, **when)
        )
        return ScheduleHandle(created, self._portal.call)

    def get_schedule_handle(self, schedule_id: str) -> ScheduleHandle:
        """See ``AsyncDurableClient.get_schedule_handle``."""
        return ScheduleHandle(self._client.get_schedule_handle(schedule_id), self._portal.call)

    def list_schedules(
        self,
        *,
        id_prefix: str = "",
        orchestration: Callable[..., Any] | str | None = None,
        paused: bool | None = None,
    ) -> list[ScheduleDescription]:
        """See ``AsyncDurableClient.list_schedules``."""
        listing = self._client.list_schedules(
            id_prefix=id_prefix, orchestration=orchestration, paused=paused
        )
        return self._portal.call(listing)

    def clean_entity_storage(
        self, *, remove_empty_entities: bool = True, release_orphaned_locks: bool = True
    ) -> EntityStorageCleanup:
        """See ``AsyncDurableClient.clean_entity_storage``."""
        cleaning = self._client.clean_entity_storage(
            remove_empty_entities=remove_empty_entities,
            release_orphaned_locks=release_orphaned_locks,
        )
        return self._portal.call(cleaning)

    def get_entity(
        self, entity: EntityId, state_type: type[T] | Any = Any
    ) -> EntityMetadata[T] | None:
        """See ``AsyncDurableClient.get_entity``."""
        return self._portal.call(self._client.get_entity(entity, state_type))

    def terminate(self, instance_id: str, reason: Any = None, *, recursive: bool = True) -> None:
        """See ``AsyncDurableClient.terminate``."""
        self._portal.call(self._client.terminate(instance_id, reason, recursive=recursive))

    def suspend(self, instance_id: str, reason: Any = None) -> None:
        """See ``AsyncDurableClient.suspend``."""
        self._portal.call(self._client.suspend(instance_id, reason))

    def resume(self, instance_id: str, reason: Any = None) -> None:
        """See ``AsyncDurableClient.resume``."""
        self._portal.call(self._client.resume(instance_id, reason))

    def rewind(self, instance_id: str, reason: str | None = None) -> None:
        """See ``AsyncDurableClient.rewind``."""
        self._portal.call(self._client.rewind(instance_id, reason))

    def restart(self, instance_id: str, *, new_instance_id: bool = False) -> str:
        """See ``AsyncDurableClient.restart``."""
        return self._portal.call(self._client.restart(instance_id, new_instance_id=new_instance_id))

    def purge(
        self,
        instance_id: str | None = None,
        *,
        status: StatusFilter = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> int:
        """See ``AsyncDurableClient.purge``."""
        return self._portal.call(
            self._client.purge(
                instance_id, status=status, created_from=created_from, created_to=created_to
            )
        )

    def query(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation: str | None = None,
    ) -> QueryResult:
        """See ``AsyncDurableClient.query``."""
        return self._portal.call(
            self._client.query(
                status=status,
                name=name,
                created_from=created_from,
                created_to=created_to,
                instance_id_prefix=instance_id_prefix,
                page_size=page_size,
                continuation=continuation,
            )
        )

    def count_by_status(self) -> dict[OrchestrationStatus, int] | None:
        """See ``AsyncDurableClient.count_by_status``."""
        return self._portal.call(self._client.count_by_status())

    def poisoned(self, *, instance_id: str | None = None) -> list[PoisonedMessage]:
        """See ``AsyncDurableClient.poisoned``."""
        return self._portal.call(self._client.poisoned(instance_id=instance_id))

    def requeue_poisoned(self, poison_ids: PoisonIds) -> int:
        """See ``AsyncDurableClient.requeue_poisoned``."""
        return self._portal.call(self._client.requeue_poisoned(poison_ids))

    def delete_poisoned(self, poison_ids: PoisonIds) -> int:
        """See ``AsyncDurableClient.delete_poisoned``."""
        return self._portal.call(self._client.delete_poisoned(poison_ids))

    def close(self) -> None:
        """Close the store (if this client opened it) and the client's thread."""
        self._portal.call(self._client.close())
        self._portal.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
