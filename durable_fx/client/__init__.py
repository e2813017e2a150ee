"""Clients: start, query and steer orchestration instances.

``AsyncDurableClient`` is the client; ``DurableClient`` is its blocking facade
for code without an event loop.
"""

from ._async import AsyncDurableClient, EntityPage, EntityStorageCleanup, QueryResult
from ._handle import AsyncInstanceHandle, InstanceHandle
from ._schedules import AsyncScheduleHandle, ScheduleDescription, ScheduleHandle
from ._sync import DurableClient

__all__ = [
    "AsyncDurableClient",
    "AsyncInstanceHandle",
    "AsyncScheduleHandle",
    "DurableClient",
    "EntityPage",
    "EntityStorageCleanup",
    "InstanceHandle",
    "QueryResult",
    "ScheduleDescription",
    "ScheduleHandle",
]
