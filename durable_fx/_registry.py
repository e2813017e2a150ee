"""The registry: which orchestrators and activities an app defines, by name.

Decorators return the user's function unchanged (so its type and direct calls
survive) and attach the definition to it, which lets ``call_activity(fn)``
and ``client.start(fn)`` resolve names and payload types from the function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar, overload

from ._errors import UnknownNameError
from ._serialization import PayloadCodec, input_parameter, return_annotation

__all__ = [
    "ActivityContext",
    "ActivityDefinition",
    "OrchestratorDefinition",
    "Registry",
    "definition_of",
    "name_of",
]

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

_ATTRIBUTE = "__durable_fx_definition__"


@dataclass(frozen=True, slots=True)
class ActivityContext:
    """What an activity may know about the call it serves.

    Declare a parameter annotated ``ActivityContext`` to receive it.
    ``attempt`` counts retries of the task (from its RetryPolicy);
    ``delivery_count`` counts deliveries of this attempt (above 1 after a crash).
    """

    instance_id: str
    execution_id: str
    task_id: int
    name: str
    attempt: int
    delivery_count: int


@dataclass(frozen=True, slots=True)
class OrchestratorDefinition:
    """A registered orchestrator and the codecs of its input and output."""

    name: str
    fn: Callable[..., Any]
    input_codec: PayloadCodec[Any]
    output_codec: PayloadCodec[Any]
    kind: Literal["orchestrator"] = "orchestrator"


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

    @overload
    def orchestrator(self, fn: F, /) -> F: ...
    @overload
    def orchestrator(self, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def orchestrator(
        self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None
    ) -> Any:
        """Register a generator function ``f(ctx, input)`` as an orchestrator."""

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
            )
            self._add(self._orchestrators, definition)
            setattr(fn, _ATTRIBUTE, definition)
            return fn

        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(self, /, *, name: str | None = None) -> Callable[[F], F]: ...

    def activity(self, fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register a function (sync or ``async def``) as an activity."""

        def register(fn: F) -> F:
            definition = _activity_definition(name or fn.__name__, fn)
            self._add(self._activities, definition)
            setattr(fn, _ATTRIBUTE, definition)
            return fn

        return register(fn) if fn is not None else register

    def get_orchestrator(self, name: str) -> OrchestratorDefinition:
        """The orchestrator registered as ``name``; ``UnknownNameError`` if none."""
        try:
            return self._orchestrators[name]
        except KeyError:
            raise UnknownNameError("orchestrator", name, list(self._orchestrators)) from None

    def get_activity(self, name: str) -> ActivityDefinition:
        """The activity registered as ``name``; ``UnknownNameError`` if none."""
        try:
            return self._activities[name]
        except KeyError:
            raise UnknownNameError("activity", name, list(self._activities)) from None

    def find_activity(self, name: str) -> ActivityDefinition | None:
        """The activity registered as ``name``, or ``None``."""
        return self._activities.get(name)

    def find_orchestrator(self, name: str) -> OrchestratorDefinition | None:
        """The orchestrator registered as ``name``, or ``None``."""
        return self._orchestrators.get(name)

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
