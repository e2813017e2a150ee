"""Work-item filters: the orchestrations a worker's stream asks for (``GetWorkItemsRequest``).

A Durable Task SDK worker may name the orchestrations it runs, each with the
versions it accepts (``use_work_item_filters``; a strict versioning worker
sends its own version). The sidecar then hands that stream nothing else: the
store leaves the other instances pending for a worker that asks for them.
Activity and entity filters are not applied (every connected worker must
register every activity).
"""

from __future__ import annotations

from ..storage import Accept
from ._proto import pb

__all__ = ["orchestration_accept"]


def orchestration_accept(request: pb.GetWorkItemsRequest) -> Accept | None:
    """The instances a stream takes; ``None`` when it sent no filters (all of them).

    Filters with no orchestration at all take none (an entity-only worker).
    A name without versions takes every version; an instance with no version
    matches only the version ``""``.
    """
    if not request.HasField("workItemFilters"):
        return None
    accepted: dict[str, frozenset[str]] = {}
    for wanted in request.workItemFilters.orchestrations:
        accepted[wanted.name] = accepted.get(wanted.name, frozenset()) | frozenset(wanted.versions)

    def accept(name: str, version: str | None) -> bool:
        versions = accepted.get(name)
        if versions is None:
            return False
        return not versions or (version or "") in versions

    return accept
