"""Durable entities: small stateful objects addressed by name and key.

An entity's operations run one at a time against its state; a worker runs a
batch of them and commits the new state together with what they sent
(docs/design/entities.md). This module is what an operation sees and how an
entity is defined; running a batch is ``_replay.entities`` (pure, no I/O).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field

from ._errors import InvalidInstanceIdError
from ._history import HistoryEvent
from ._ids import validate_instance_id
from ._serialization import PayloadCodec, decode, encode, input_parameter

__all__ = [
    "DurableEntity",
    "EntityContext",
    "EntityDefinition",
    "EntityId",
    "EntityMetadata",
    "EntityRowState",
    "EntitySignal",
    "OrchestrationStart",
    "decode_state",
    "entity_definition",
    "is_entity_instance_id",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True, order=True)
class EntityId:
    """An entity: its ``name`` (case-insensitive, kept lower-case) and its ``key``.

    Its instance id is ``@name@key``, the Durable Task convention, so the
    official SDKs through the sidecar and durable_fx's own API address the
    same entity.
    """

    name: str
    key: str

    def __post_init__(self) -> None:
        name = self.name.lower()
        if not name or "@" in name:
            raise ValueError(f"an entity name is not empty and has no '@' ({self.name!r})")
        if not self.key:
            raise ValueError("an entity key may not be empty")
        object.__setattr__(self, "name", name)
        # The stores keep it as an instance: the instance id rules are its rules.
        try:
            validate_instance_id(self.instance_id)
        except InvalidInstanceIdError as error:
            raise ValueError(f"entity name or key: {error}") from None

    @property
    def instance_id(self) -> str:
        """The id of the instance that holds the entity: ``@name@key``."""
        return f"@{self.name}@{self.key}"

    @classmethod
    def parse(cls, instance_id: str) -> EntityId:
        """The entity an instance id ``@name@key`` names; ``ValueError`` if it names none."""
        name, separator, key = instance_id[1:].partition("@")
        if not instance_id.startswith("@") or not separator:
            raise ValueError(f"{instance_id!r} is not an entity's instance id (@name@key)")
        return cls(name, key)

    def __str__(self) -> str:
        return self.instance_id


def is_entity_instance_id(instance_id: str) -> bool:
    """Whether ``instance_id`` names an entity (``@name@key``) rather than an orchestration."""
    return instance_id.startswith("@")


class EntityRowState(BaseModel):
    """What an entity's instance row keeps in its ``input`` column (as JSON).

    An entity has no history: its state lives in its row, written with each
    batch. ``state`` is the entity's state as JSON text (``None``: it has none).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: str | None = None
    locked_by: str | None = None
    """The orchestration whose critical section holds the entity, if one does."""
    critical_section: str | None = None
    """That critical section's id (its unlock names it)."""
    queue: list[HistoryEvent] = Field(default_factory=list)
    """Requests that arrived while another orchestration held the lock, oldest first."""

    @classmethod
    def of_row(cls, text: str | None) -> EntityRowState:
        """The row's entity state; an empty one for a row no batch has written yet."""
        return cls() if not text else cls.model_validate_json(text)


@dataclass(frozen=True, slots=True)
class EntityMetadata(Generic[T]):
    """An entity as a client reads it (``get_entity``): its id, when it changed, its state."""

    id: EntityId
    last_modified: datetime
    state: T | None
    """The state decoded as the type asked for; ``None`` if it has none."""
    state_json: str | None
    """The state as stored (JSON text)."""


@dataclass(frozen=True, slots=True)
class EntitySignal:
    """A one-way operation an entity sent to another (or itself), perhaps for later."""

    target: EntityId
    operation: str
    input: str | None
    request_id: str
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OrchestrationStart:
    """An orchestration an entity started."""

    name: str
    input: str | None
    instance_id: str


class EntityContext:
    """What one operation sees: its entity, its name, the state, and what it may send.

    Changes take effect only if the operation returns: if it raises, its
    state change and everything it sent are undone, and the batch goes on.
    """

    def __init__(
        self,
        entity_id: EntityId,
        operation: str,
        state: str | None,
        now: datetime,
        *,
        name_of: Callable[[Any], str],
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._entity_id = entity_id
        self._operation = operation
        self._state = state
        self._now = now
        self._name_of = name_of
        self._new_id = new_id
        self.signals: list[EntitySignal] = []
        self.starts: list[OrchestrationStart] = []

    @property
    def entity_id(self) -> EntityId:
        """The entity this operation runs on."""
        return self._entity_id

    @property
    def operation(self) -> str:
        """The operation's name, as the caller gave it."""
        return self._operation

    @property
    def has_state(self) -> bool:
        """Whether the entity has state (it has none until an operation sets it)."""
        return self._state is not None

    @property
    def state_json(self) -> str | None:
        """The state as stored (JSON), ``None`` if there is none."""
        return self._state

    @overload
    def get_state(self) -> Any: ...
    @overload
    def get_state(self, type_: type[T], default: T | None = None) -> T | None: ...

    def get_state(self, type_: Any = Any, default: Any = None) -> Any:
        """The state as ``type_`` (validated like an activity's input); ``default`` if none."""
        if self._state is None:
            return default
        return _state_codec(type_).decode(self._state)

    def set_state(self, value: Any) -> None:
        """Replace the state (any JSON-able value: a model, a dataclass, a dict...)."""
        self._state = encode(value)

    def delete_state(self) -> None:
        """Drop the state: the entity is empty again (``clean_entity_storage`` removes it)."""
        self._state = None

    def signal_entity(
        self, target: EntityId, operation: str, input: Any = None, *, at: datetime | None = None
    ) -> None:
        """Send ``operation`` to ``target`` (this entity too), once this one succeeds.

        With ``at`` (timezone-aware) it is delivered then, not before.
        """
        if at is not None and at.tzinfo is None:
            raise ValueError("at must be timezone-aware (use UTC)")
        self.signals.append(EntitySignal(target, operation, encode(input), self._new_id(), at))

    def start_orchestration(
        self, orchestrator: Callable[..., Any] | str, input: Any = None, *, instance_id: str = ""
    ) -> str:
        """Start an orchestration once this operation succeeds; returns its instance id."""
        started = OrchestrationStart(
            self._name_of(orchestrator), encode(input), instance_id or self._new_id()
        )
        self.starts.append(started)
        return started.instance_id

    def now(self) -> datetime:
        """The batch's time (the same for every operation of a batch)."""
        return self._now


def decode_state(text: str, type_: Any = Any) -> Any:
    """An entity's stored state (JSON text) as ``type_``, validated like an activity's input."""
    return _state_codec(type_).decode(text)


@functools.lru_cache(maxsize=256)
def _state_codec(type_: Any) -> PayloadCodec[Any]:
    # Every operation reads the state; building the validator is the costly part.
    return PayloadCodec.for_type(type_)


class DurableEntity:
    """Base of class entities: each public method is an operation.

    The method takes at most one input (typed: validated like an activity's)
    and may return a value for callers. ``self.context`` is the running
    operation's ``EntityContext``; the state helpers below are its own::

        @registry.entity()
        class Counter(DurableEntity):
            def add(self, amount: int) -> int:
                total = self.get_state(int, 0) + amount
                self.set_state(total)
                return total

    A new object runs each operation: keep the state in ``set_state``, not in
    attributes.
    """

    context: EntityContext

    def get_state(self, type_: Any = Any, default: Any = None) -> Any:
        """See ``EntityContext.get_state``."""
        return self.context.get_state(type_, default)

    def set_state(self, value: Any) -> None:
        """See ``EntityContext.set_state``."""
        self.context.set_state(value)

    def delete_state(self) -> None:
        """See ``EntityContext.delete_state``."""
        self.context.delete_state()

    def signal_entity(
        self, target: EntityId, operation: str, input: Any = None, *, at: datetime | None = None
    ) -> None:
        """See ``EntityContext.signal_entity``."""
        self.context.signal_entity(target, operation, input, at=at)

    def start_orchestration(
        self, orchestrator: Callable[..., Any] | str, input: Any = None, *, instance_id: str = ""
    ) -> str:
        """See ``EntityContext.start_orchestration``."""
        return self.context.start_orchestration(orchestrator, input, instance_id=instance_id)


@dataclass(frozen=True, slots=True)
class _Operation:
    """How to call one operation: the function and its input's codec (if it takes one)."""

    fn: Callable[..., Any]
    input_codec: PayloadCodec[Any] | None


@dataclass(frozen=True, slots=True)
class EntityDefinition:
    """A registered entity: a function of ``(ctx, input)`` or a ``DurableEntity`` class."""

    name: str
    fn: Any
    """The decorated function or class."""
    operations: dict[str, _Operation] | None = field(default=None, compare=False)
    """A class entity's operations by lower-cased name; ``None`` for a function entity."""
    function: _Operation | None = field(default=None, compare=False)
    kind: str = "entity"

    def run(self, ctx: EntityContext, input: str | None) -> Any:
        """Run ``ctx.operation`` with ``input`` (JSON); what it returns, for its caller.

        Raises ``UnknownOperationError`` for an operation a class entity lacks.
        """
        if self.function is not None:
            return _call(self.function, [ctx], input)
        assert self.operations is not None
        found = self.operations.get(ctx.operation.lower())
        if found is None:
            raise UnknownOperationError(self.name, ctx.operation, sorted(self.operations))
        entity = self.fn()
        entity.context = ctx
        return _call(found, [entity], input)


class UnknownOperationError(LookupError):
    """A class entity was asked for an operation it has no method for."""

    def __init__(self, entity: str, operation: str, known: list[str]) -> None:
        super().__init__(
            f"entity {entity!r} has no operation {operation!r}; it has: {', '.join(known)}"
        )


def _call(operation: _Operation, leading: list[Any], input: str | None) -> Any:
    if operation.input_codec is None:
        if input is not None and decode(input) is not None:
            raise TypeError("this operation takes no input")
        return operation.fn(*leading)
    return operation.fn(*leading, operation.input_codec.decode(input))


def entity_definition(name: str, target: Any) -> EntityDefinition:
    """The definition of a function entity ``(ctx, input=...)`` or a ``DurableEntity`` class."""
    if inspect.isclass(target):
        if not issubclass(target, DurableEntity):
            raise TypeError(f"entity class {target.__qualname__} must subclass DurableEntity")
        inherited = set(dir(DurableEntity))
        methods = {
            attr.lower(): _operation(name, getattr(target, attr), skip=1)
            for attr in dir(target)
            if not attr.startswith("_")
            and attr not in inherited
            and inspect.isfunction(getattr(target, attr))
        }
        if not methods:
            raise TypeError(f"entity class {target.__qualname__} defines no operation")
        return EntityDefinition(name, target, operations=methods)
    if not callable(target):
        raise TypeError(f"entity {name!r} must be a function or a DurableEntity class")
    return EntityDefinition(name, target, function=_operation(name, target, skip=1))


def _operation(entity: str, fn: Callable[..., Any], *, skip: int) -> _Operation:
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"entity {entity!r}: operations run synchronously ({fn.__qualname__})")
    params = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) > skip + 1:
        raise TypeError(
            f"entity {entity!r}: {fn.__qualname__} takes {len(params) - skip} inputs; an "
            "operation takes one (a pydantic model or dataclass to pass several values)"
        )
    if len(params) == skip:
        return _Operation(fn, None)
    return _Operation(fn, PayloadCodec.for_parameter(input_parameter(fn, skip)))
