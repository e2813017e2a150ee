"""durable_fx: durable workflows as ordinary Python.

Orchestrators are deterministic generators replayed from saved history;
activities do the real work and run at least once. See ``Registry``,
``Worker`` and ``DurableClient`` to get started.
"""

from contextlib import suppress as _suppress
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._clock import Clock, SystemClock
from ._entity import DurableEntity, EntityContext, EntityId, EntityMetadata
from ._errors import (
    ConflictError,
    DurableFxError,
    EventTimeoutError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    InvalidOperationError,
    NonDeterminismError,
    OrchestrationFailedError,
    SerializationError,
    StoreBusyError,
    TaskError,
    TaskFailedError,
    UnknownNameError,
)
from ._history import FailureDetails, HistoryEvent
from ._http import DurableHttpResponse, ManagedIdentity
from ._ids import validate_instance_id
from ._parent_close import ParentClosePolicy
from ._registry import ActivityContext, Registry
from ._replay.context import EntityLock, OrchestrationContext, Orchestrator
from ._replay.tasks import Task, when_all, when_any
from ._replayer import Replayer, ReplayResult, history_from_json, history_to_json
from ._retry import RetryPolicy
from ._reuse import IdReusePolicy
from ._schedule_spec import ScheduleSpec
from ._schedules import ScheduleRun
from ._state import OrchestrationState, OrchestrationStatus
from ._versioning import OnVersionMismatch, VersionMatch, VersionMismatchError, VersionPolicy
from .client import (
    AsyncDurableClient,
    AsyncInstanceHandle,
    AsyncScheduleHandle,
    DurableClient,
    EntityPage,
    EntityStorageCleanup,
    InstanceHandle,
    QueryResult,
    ScheduleDescription,
    ScheduleHandle,
)
from .storage import PoisonedMessage, Store, open_store
from .worker import Worker

__all__ = [
    "ActivityContext",
    "AsyncDurableClient",
    "AsyncInstanceHandle",
    "AsyncScheduleHandle",
    "Clock",
    "ConflictError",
    "DurableApp",
    "DurableClient",
    "DurableEntity",
    "DurableFxError",
    "DurableHttpResponse",
    "EntityContext",
    "EntityId",
    "EntityLock",
    "EntityMetadata",
    "EntityPage",
    "EntityStorageCleanup",
    "EventTimeoutError",
    "FailureDetails",
    "HistoryEvent",
    "IdReusePolicy",
    "InstanceExistsError",
    "InstanceHandle",
    "InstanceNotFoundError",
    "InvalidInstanceIdError",
    "InvalidOperationError",
    "ManagedIdentity",
    "NonDeterminismError",
    "OnVersionMismatch",
    "OrchestrationContext",
    "OrchestrationFailedError",
    "OrchestrationState",
    "OrchestrationStatus",
    "Orchestrator",
    "ParentClosePolicy",
    "PoisonedMessage",
    "QueryResult",
    "Registry",
    "ReplayResult",
    "Replayer",
    "RetryPolicy",
    "ScheduleDescription",
    "ScheduleHandle",
    "ScheduleRun",
    "ScheduleSpec",
    "SerializationError",
    "Store",
    "StoreBusyError",
    "SystemClock",
    "Task",
    "TaskError",
    "TaskFailedError",
    "UnknownNameError",
    "VersionMatch",
    "VersionMismatchError",
    "VersionPolicy",
    "Worker",
    "history_from_json",
    "history_to_json",
    "open_store",
    "validate_instance_id",
    "when_all",
    "when_any",
]

__version__ = "0.1.0"

if _TYPE_CHECKING:
    from .bindings import DurableApp

# Names that need an optional extra: imported on first use (PEP 562), so that
# `import durable_fx` stays light for workers and clients.
_LAZY = {"DurableApp": "durable_fx.bindings"}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durable_fx' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as error:
        raise ImportError(
            f"durable_fx.{name} needs the functions extra: pip install 'durable-fx[functions]' "
            f"({error})"
        ) from error
    value.__module__ = "durable_fx"
    globals()[name] = value
    return value


# Show public names at their public path in reprs, docs and tracebacks.
for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("durable_fx.") and "._" in _obj.__module__:
        with _suppress(AttributeError, TypeError):
            _obj.__module__ = "durable_fx"
del _name, _obj, _suppress
