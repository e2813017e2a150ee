"""The registry: which orchestrators and activities an app defines, by name.

Decorators return the user's function unchanged (so its type and direct calls
survive) and attach the definition to it, which lets ``call_activity(fn)``
and ``client.start(fn)`` resolve names and payload types from the function.
"""

from __future__ import annotations

import dataclasses
import inspect
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar, overload

from pydantic import TypeAdapter

from ._entity import EntityDefinition, entity_definition
from ._errors import UnknownNameError
from ._heartbeat import Heartbeats
from ._serialization import PayloadCodec, input_parameter, return_annotation

__all__ = [
    "ActivityContext",
    "ActivityDefinition",
    "EventDeclaration",
    "HasRegistry",
    "OrchestratorDefinition",
    "Registry",
    "definition_of",
    "name_of",
    "registry_of",
    "validate_event_name",
]

F = TypeVar("F", bound=Callable[..., Any])
"""A decorated function: the decorators return it as it is, so its own signature stays."""
E = TypeVar("E", bound=Callable[..., Any])
"""A decorated entity: a function or a ``DurableEntity`` class, returned as it is."""

_ATTRIBUTE = "__durable_fx_definition__"
MAX_EVENT_NAME = 256
"""Longest event name (as instance ids): names are stored in every EventRaised."""


def validate_event_name(name: str) -> str:
    """``name`` if it can name an event; ``ValueError`` saying what is wrong.

    Names are matched case-insensitively; they may not be empty, longer than
    256 characters, or hold control characters (they show in logs and tools).
    """
    if not name:
        raise ValueError("an event name may not be empty")
    if len(name) > MAX_EVENT_NAME:
        raise ValueError(f"it has {len(name)} characters, at most {MAX_EVENT_NAME}")
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs")), None)
    if bad is not None:
        raise ValueError(
            f"it contains U+{ord(bad):04X}; control and format characters are not allowed"
        )
    return name


@dataclass(frozen=True, slots=True)
class EventDeclaration:
    """An event an orchestrator waits for, and the type its data must have."""

    name: str
    adapter: TypeAdapter[Any] | None
    """Validates the data as the orchestrator will decode it (``None``: any JSON)."""

    @classmethod
    def of(cls, name: str, annotation: Any) -> EventDeclaration:
        """Declare ``name`` with data of type ``annotation`` (``Any``: any JSON)."""
        try:
            validate_event_name(name)
        except ValueError as error:
            raise ValueError(f"invalid event name {name!r}: {error}") from None
        empty = annotation in (Any, None, inspect.Parameter.empty)
        return cls(name, None if empty else TypeAdapter(annotation))


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """What an activity may know about the call it serves.

    Declare a parameter annotated ``ActivityContext`` to receive it.
    ``attempt`` counts retries of the task (from its RetryPolicy);
    ``delivery_count`` counts deliveries of this attempt (above 1 after a crash).
    ``heartbeat_details`` are the last details given to ``heartbeat`` by an
    earlier attempt or delivery (decoded JSON; ``None`` if there were none).
    """

    instance_id: str
    execution_id: str
    task_id: int
    name: str
    attempt: int
    delivery_count: int
    heartbeat_details: Any = None
    _beats: Heartbeats | None = field(default=None, repr=False, compare=False)

    def heartbeat(self, details: Any = None) -> None:
        """Tell the worker the activity is alive, optionally with progress to resume from.

        With a ``heartbeat_timeout`` on the call, an attempt that goes that
        long without a beat times out. ``details`` (any JSON-able value) reach
        the next attempt and a redelivery after a crash as
        ``heartbeat_details``. Cheap: the worker saves the latest with its
        lease renewals, not on every call. Safe from any thread.
        """
        if self._beats is not None:
            self._beats.beat(details)


@dataclass(frozen=True, slots=True)
class OrchestratorDefinition:
    """A registered orchestrator and the codecs of its input and output."""

    name: str
    fn: Callable[..., Any]
    input_codec: PayloadCodec[Any]
    output_codec: PayloadCodec[Any]
    kind: Literal["orchestrator"] = "orchestrator"
    events: Mapping[str, EventDeclaration] | None = field(default=None, compare=False)
    """The events it waits for, by casefolded name; ``None`` if it declared none."""

    def event(self, name: str) -> EventDeclaration | None:
        """The declaration of event ``name`` (names are case-insensitive), if any."""
        return None if self.events is None else self.events.get(name.casefold())


@dataclass(frozen=True, slots=True)
class ActivityDefinition:
    """A registered activity, how to call it, and the codecs of its input and output."""

    name: str
    fn: Callable[..., Any]
    input_codec: PayloadCodec[Any]
    output_codec: PayloadCodec[Any]
    parameters: tuple[Literal["input", "context"], ...]
    """What to pass, positionally, in the order the function declares them."""
    is_async: bool
    kind: Literal["activity"] = "activity"
    timeout: timedelta | None = None
    """Default per-attempt limit of ``call_activity(timeout=)``."""
    heartbeat_timeout: timedelta | None = None
    """Default of ``call_activity(heartbeat_timeout=)``."""
    total_timeout: timedelta | None = None
    """Default of ``call_activity(total_timeout=)``."""


Definition = OrchestratorDefinition | ActivityDefinition


def definition_of(fn: object) -> Definition | None:
    """The definition a registry attached to ``fn``, if any."""
    found = getattr(fn, _ATTRIBUTE, None)
    return found if isinstance(found, OrchestratorDefinition | ActivityDefinition) else None


def name_of(fn_or_name: Callable[..., Any] | str) -> str:
    """The registered name of a decorated function (or the string itself)."""
    if isinstance(fn_or_name, str):
        return fn_or_name
    definition = definition_of(fn_or_name)
    if definition is None:
        raise TypeError(
            f"{getattr(fn_or_name, '__qualname__', fn_or_name)!r} is not a registered "
            "orchestrator or activity; decorate it with @app.orchestrator() or @app.activity(), "
            "or pass its name as a string"
        )
    return definition.name


class Registry:
    """Orchestrators and activities by name. ``DurableApp`` and ``Worker`` build on one."""

    def __init__(self) -> None:
        self._orchestrators: dict[str, OrchestratorDefinition] = {}
        self._activities: dict[str, ActivityDefinition] = {}
        self._entities: dict[str, EntityDefinition] = {}
        self._builtins: Registry | None = None

    @overload
    def orchestrator(self, fn: F, /) -> F: ...
    @overload
    def orchestrator(
        self, /, *, name: str | None = None, events: Mapping[str, Any] | None = None
    ) -> Callable[[F], F]: ...

    def orchestrator(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        events: Mapping[str, Any] | None = None,
    ) -> F | Callable[[F], F]:
        """Register a generator function ``f(ctx, input)`` as an orchestrator.

        ``events`` declares the events it waits for and their data's type
        (``{"DeliveryReceipt": DeliveryReceipt}``): the HTTP management API then
        refuses, with 400 naming the fields, data that would not decode and
        names it does not wait for, instead of letting them fail the instance.
        """
        declared = _declarations(events)

        def register(fn: F) -> F:
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                raise TypeError(
                    f"orchestrator {fn.__qualname__!r} is an async function; an orchestrator "
                    "is a generator function that yields tasks "
                    "(def f(ctx, input): result = yield ctx.call_activity(...)). "
                    "Put async code in activities"
                )
            definition = OrchestratorDefinition(
                name=name or fn.__name__,
                fn=fn,
                input_codec=PayloadCodec.for_parameter(input_parameter(fn, 1)),
                output_codec=PayloadCodec(return_annotation(fn, generator=True)),
                events=declared,
            )
            self._add(self._orchestrators, definition)
            setattr(fn, _ATTRIBUTE, definition)
            return fn

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(
        self,
        /,
        *,
        name: str | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Callable[[F], F]: ...

    def activity(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> F | Callable[[F], F]:
        """Register a function (sync or ``async def``) as an activity.

        The timeouts are the defaults of ``ctx.call_activity``'s (a call that
        names the activity by a string the orchestrator's registry does not
        know gets none).
        """
        check_timeouts(
            timeout=timeout, heartbeat_timeout=heartbeat_timeout, total_timeout=total_timeout
        )

        def register(fn: F) -> F:
            definition = dataclasses.replace(
                _activity_definition(name or fn.__name__, fn),
                timeout=timeout,
                heartbeat_timeout=heartbeat_timeout,
                total_timeout=total_timeout,
            )
            self._add(self._activities, definition)
            setattr(fn, _ATTRIBUTE, definition)
            return fn

        return register(fn) if fn is not None else register

    @overload
    def entity(self, target: E, /) -> E: ...
    @overload
    def entity(self, /, *, name: str | None = None) -> Callable[[E], E]: ...

    def entity(
        self, target: E | None = None, /, *, name: str | None = None
    ) -> E | Callable[[E], E]:
        """Register an entity: a function ``f(ctx, input)`` or a ``DurableEntity`` class.

        Its name (``name``, else the function's or class's, lower-cased as
        entity names are) is the ``name`` of the ``EntityId`` that addresses
        it. Operations run synchronously, one at a time per entity.

        Being built (docs/design/entities.md): the definitions and the batch
        runner exist, the worker does not run entities yet and refuses a
        registry that has them.
        """

        def register(target: E) -> E:
            definition = entity_definition((name or target.__name__).lower(), target)
            existing = self._entities.get(definition.name)
            if existing is not None and existing.fn is not target:
                raise ValueError(
                    f"an entity named {definition.name!r} is already registered "
                    f"({existing.fn.__module__}.{existing.fn.__qualname__}); pass name=..."
                )
            self._entities[definition.name] = definition
            return target

        return register(target) if target is not None else register

    def find_entity(self, name: str) -> EntityDefinition | None:
        """The entity registered as ``name`` (case-insensitive), or ``None``."""
        key = name.lower()
        return self._entities.get(key) or self._builtin()._entities.get(key)

    @property
    def entity_names(self) -> list[str]:
        """Registered entity names, sorted."""
        return sorted(self._entities)

    def get_orchestrator(self, name: str) -> OrchestratorDefinition:
        """The orchestrator registered as ``name``; ``UnknownNameError`` if none."""
        found = self.find_orchestrator(name)
        if found is None:
            raise UnknownNameError("orchestrator", name, list(self._orchestrators))
        return found

    def get_activity(self, name: str) -> ActivityDefinition:
        """The activity registered as ``name``; ``UnknownNameError`` if none."""
        found = self.find_activity(name)
        if found is None:
            raise UnknownNameError("activity", name, list(self._activities))
        return found

    def find_activity(self, name: str) -> ActivityDefinition | None:
        """The activity registered as ``name`` (the app's, else a built-in), or ``None``."""
        return self._activities.get(name) or self._builtin()._activities.get(name)

    def find_orchestrator(self, name: str) -> OrchestratorDefinition | None:
        """The orchestrator registered as ``name``, or ``None``."""
        return self._orchestrators.get(name) or self._builtin()._orchestrators.get(name)

    def _builtin(self) -> Registry:
        """durable_fx's own entities, orchestrations and activities, found after the app's.

        (Schedules' entity and runner; durable HTTP's activity.)
        """
        if self._builtins is None:
            # They are defined with a registry, so they import it: import them here.
            from ._http_activity import register_builtins as register_http
            from ._schedules import register_builtins as register_schedules

            builtins = Registry()
            builtins._builtins = builtins  # its own lookups stop here
            register_schedules(builtins)
            register_http(builtins)
            self._builtins = builtins
        return self._builtins

    @property
    def orchestrator_names(self) -> list[str]:
        """Registered orchestrator names, sorted."""
        return sorted(self._orchestrators)

    @property
    def activity_names(self) -> list[str]:
        """Registered activity names, sorted."""
        return sorted(self._activities)

    @staticmethod
    def _add(table: dict[str, Any], definition: Definition) -> None:
        existing = table.get(definition.name)
        if existing is not None and existing.fn is not definition.fn:
            where = f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            raise ValueError(
                f"an {definition.kind} named {definition.name!r} is already registered "
                f"({where}); pass name=... to one of them"
            )
        table[definition.name] = definition


def _declarations(events: Mapping[str, Any] | None) -> dict[str, EventDeclaration] | None:
    if events is None:
        return None
    declared: dict[str, EventDeclaration] = {}
    for name, annotation in events.items():
        declaration = EventDeclaration.of(name, annotation)
        if declared.setdefault(name.casefold(), declaration) is not declaration:
            raise ValueError(f"event {name!r} is declared twice (names are case-insensitive)")
    return declared


def _activity_definition(name: str, fn: Callable[..., Any]) -> ActivityDefinition:
    params = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    context = next((p for p in params if p.annotation is ActivityContext), None)
    payload = [p for p in params if p is not context]
    if len(payload) > 1:
        raise TypeError(
            f"activity {name!r} takes {len(payload)} payload parameters; an activity takes one "
            "input (use a pydantic model or dataclass to pass several values)"
        )
    return ActivityDefinition(
        name=name,
        fn=fn,
        input_codec=PayloadCodec.for_parameter(payload[0] if payload else None),
        output_codec=PayloadCodec(return_annotation(fn)),
        parameters=tuple("context" if p is context else "input" for p in params),
        is_async=inspect.iscoroutinefunction(fn),
    )


def check_timeouts(**limits: timedelta | None) -> dict[str, timedelta | None]:
    """``limits`` as given; ``ValueError`` naming the first that is not positive."""
    for key, value in limits.items():
        if value is not None and value <= timedelta(0):
            raise ValueError(f"{key} must be positive, not {value}")
    return limits


class HasRegistry(Protocol):
    """Anything that carries a registry (``DurableApp`` does)."""

    @property
    def registry(self) -> Registry: ...


def registry_of(app: Registry | HasRegistry) -> Registry:
    """The registry of an app, or the registry itself."""
    return app if isinstance(app, Registry) else app.registry
