"""An instance's status as JSON, in the shape of Durable Functions' HTTP API.

The management API answers with it and so does the dashboard (its JSON
views), so a script or a tool reads both alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .._entity import EntityMetadata
from .._state import OrchestrationState, OrchestrationStatus

__all__ = ["CONTINUATION_HEADER", "RUNTIME_STATUS", "entity_json", "status_json"]

CONTINUATION_HEADER = "x-ms-continuation-token"
"""Where a list answer puts the token of its next page (Durable Functions' header)."""

RUNTIME_STATUS = {
    OrchestrationStatus.PENDING: "Pending",
    OrchestrationStatus.RUNNING: "Running",
    OrchestrationStatus.COMPLETED: "Completed",
    OrchestrationStatus.FAILED: "Failed",
    OrchestrationStatus.TERMINATED: "Terminated",
    OrchestrationStatus.SUSPENDED: "Suspended",
    OrchestrationStatus.CONTINUED_AS_NEW: "ContinuedAsNew",
}
"""``runtimeStatus`` as Durable Functions spells each status."""


def status_json(
    state: OrchestrationState, *, show_input: bool = True, show_history: bool = False
) -> dict[str, Any]:
    """An instance's status as Durable Functions' HTTP API writes it."""
    body: dict[str, Any] = {
        "name": state.name,
        "instanceId": state.instance_id,
        "runtimeStatus": RUNTIME_STATUS[state.status],
        "customStatus": state.custom_status,
        "output": state.output,
        "createdTime": _iso(state.created_at),
        "lastUpdatedTime": _iso(state.updated_at),
    }
    if show_input:
        body["input"] = state.input
    if state.failure is not None:
        body["failureDetails"] = {
            "errorType": state.failure.error_type,
            "errorMessage": state.failure.message,
            "stackTrace": state.failure.stack_trace,
        }
    if show_history and state.history is not None:
        body["historyEvents"] = [event.model_dump(mode="json") for event in state.history]
    return body


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def entity_json(entity: EntityMetadata[Any], *, show_state: bool = True) -> dict[str, Any]:
    """An entity as Durable Functions' entity list shows it: its id, last change, state."""
    body: dict[str, Any] = {
        "entityId": {"name": entity.id.name, "key": entity.id.key},
        "lastOperationTime": entity.last_modified.isoformat(),
    }
    if show_state:
        body["state"] = entity.state
    return body
