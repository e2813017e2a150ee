"""Work-item filters: the orchestrations and entities a worker's stream asks for.

A Durable Task SDK worker may name the orchestrations it runs, each with the
versions it accepts (``use_work_item_filters``; a strict versioning worker
sends its own version), and the entities it runs. The sidecar then hands
that stream nothing else: the store leaves the other instances pending for a
worker that asks for them. An entity's instance is named after the entity
(``counter`` for ``@counter@key``), so the store's name filter serves both;
an orchestration that shares a name with an entity a worker asks for goes to
that worker too. Activity filters are not applied (every connected worker
must register every activity).
"""

from __future__ import annotations

from ..storage import Accept
from ._proto import pb

__all__ = ["orchestration_accept"]


def orchestration_accept(request: pb.GetWorkItemsRequest) -> Accept | None:
    """The instances a stream takes; ``None`` when it sent no filters (all of them).

    Filters with no orchestration take none (an entity-only worker), and
    filters with no entity take no entity. A name without versions takes
    every version; an instance with no version matches only the version ``""``.
    """
    if not request.HasField("workItemFilters"):
        return None
    filters = request.workItemFilters
    accepted: dict[str, frozenset[str]] = {}
    for wanted in filters.orchestrations:
        accepted[wanted.name] = accepted.get(wanted.name, frozenset()) | frozenset(wanted.versions)
    entities = frozenset(wanted.name.lower() for wanted in filters.entities)

    def accept(name: str, version: str | None) -> bool:
        if name in entities:
            return True
        versions = accepted.get(name)
        if versions is None:
            return False
        return not versions or (version or "") in versions

    return accept
