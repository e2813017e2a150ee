"""What a client sees of an orchestration instance."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from ._history import FailureDetails, HistoryEvent

__all__ = ["OrchestrationState", "OrchestrationStatus"]

T = TypeVar("T")


class OrchestrationStatus(StrEnum):
    """Runtime status of an instance; the names match Durable Functions' runtimeStatus."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TERMINATED = "TERMINATED"
    SUSPENDED = "SUSPENDED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"

    @property
    def is_terminal(self) -> bool:
        """True once the instance will never run again on its own."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED}
)


class OrchestrationState(BaseModel):
    """A snapshot of one instance. ``input``/``output``/``custom_status`` are decoded JSON."""

    model_config = ConfigDict(frozen=True)

    instance_id: str
    name: str
    status: OrchestrationStatus
    execution_id: str
    input: Any = None
    output: Any = None
    custom_status: Any = None
    failure: FailureDetails | None = None
    created_at: datetime
    updated_at: datetime
    version: str | None = None
    """The orchestration version it started with (``start(version=)``), if any."""
    history: list[HistoryEvent] | None = None

    def output_as(self, type_: type[T]) -> T:
        """The output validated into ``type_`` (a pydantic model, dataclass or builtin)."""
        from ._serialization import PayloadCodec

        return cast(T, PayloadCodec.for_type(type_).from_python(self.output))
