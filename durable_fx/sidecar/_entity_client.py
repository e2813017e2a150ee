"""The entity client RPCs: signal, read, query and clean entities.

They go through ``AsyncDurableClient`` (the same checks and the same messages
as durable_fx's own clients), passing JSON text through unchanged. As in
Durable Functions, an entity exists while it has state; one without (never
set, or deleted) is "transient" and shows only when a query asks for those.
"""

from __future__ import annotations

from collections.abc import Callable

from .._entity import EntityId, EntityRowState
from ..client._async import AsyncDurableClient
from ..storage._protocol import Store
from ..storage._records import InstanceQuery, InstanceRecord
from ._proto import optional_moment, optional_text, page_size, pb, text_value, timestamp

__all__ = ["EntityClientService"]


class EntityClientService:
    """Implements the entity RPCs of ``TaskHubSidecarService`` on a store."""

    def __init__(
        self,
        store: Store,
        client: AsyncDurableClient,
        work_arrived: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._client = client
        self._work_arrived = work_arrived

    async def signal(self, request: pb.SignalEntityRequest) -> pb.SignalEntityResponse:
        """Send an operation to an entity (created by it if new); a request id is sent once."""
        entity = _entity(request.instanceId)
        at = optional_moment(request, "scheduledTime")
        await self._client._signal_entity_json(
            entity,
            request.name,
            optional_text(request, "input"),
            at=at,
            request_id=request.requestId or None,
        )
        self._work_arrived()
        return pb.SignalEntityResponse()

    async def get(self, request: pb.GetEntityRequest) -> pb.GetEntityResponse:
        """The entity's metadata (and state if asked); ``exists`` is false without state."""
        record = await self._store.get_instance(_entity(request.instanceId).instance_id)
        if record is None or EntityRowState.of_row(record.input).state is None:
            return pb.GetEntityResponse(exists=False)
        return pb.GetEntityResponse(exists=True, entity=_metadata(record, request.includeState))

    async def query(self, request: pb.QueryEntitiesRequest) -> pb.QueryEntitiesResponse:
        """One page of entities, by id prefix and last change.

        A page may hold fewer entities than asked for (transient ones and
        those outside the time range are left out) and still go on.
        """
        query = request.query
        changed_from = optional_moment(query, "lastModifiedFrom")
        changed_to = optional_moment(query, "lastModifiedTo")
        page = await self._store.query_instances(
            InstanceQuery(
                instance_id_prefix=_id_prefix(optional_text(query, "instanceIdStartsWith")),
                entities=True,
                page_size=page_size(query.pageSize.value if query.HasField("pageSize") else 0),
                continuation=optional_text(query, "continuationToken"),
            )
        )
        entities = [
            _metadata(record, query.includeState)
            for record in page.items
            if (changed_from is None or record.updated_at >= changed_from)
            and (changed_to is None or record.updated_at < changed_to)
            and (query.includeTransient or EntityRowState.of_row(record.input).state is not None)
        ]
        return pb.QueryEntitiesResponse(
            entities=entities, continuationToken=text_value(page.continuation)
        )

    async def clean(self, request: pb.CleanEntityStorageRequest) -> pb.CleanEntityStorageResponse:
        """Remove empty entities and release orphaned locks, across the store at once."""
        cleaned = await self._client.clean_entity_storage(
            remove_empty_entities=request.removeEmptyEntities,
            release_orphaned_locks=request.releaseOrphanedLocks,
        )
        if cleaned.orphaned_locks_released:
            self._work_arrived()
        return pb.CleanEntityStorageResponse(
            emptyEntitiesRemoved=cleaned.empty_entities_removed,
            orphanedLocksReleased=cleaned.orphaned_locks_released,
        )


def _entity(instance_id: str) -> EntityId:
    """The entity ``instance_id`` names; ``ValueError`` (INVALID_ARGUMENT) if it names none."""
    return EntityId.parse(instance_id)


def _id_prefix(prefix: str | None) -> str:
    """An entity id prefix as stored: ``@``, the lower-case name, then the key.

    The SDKs pass the prefix through as the caller wrote it; entity names are
    case-insensitive and kept lower-case, keys are not.
    """
    if not prefix:
        return "@"
    prefix = prefix if prefix.startswith("@") else f"@{prefix}"
    name, separator, key = prefix[1:].partition("@")
    return f"@{name.lower()}{separator}{key}"


def _metadata(record: InstanceRecord, include_state: bool) -> pb.EntityMetadata:
    row = EntityRowState.of_row(record.input)
    return pb.EntityMetadata(
        instanceId=record.instance_id,
        lastModifiedTime=timestamp(record.updated_at),
        backlogQueueSize=len(row.queue),
        lockedBy=text_value(row.locked_by),
        serializedState=text_value(row.state) if include_state else None,
    )
