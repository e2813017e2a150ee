"""JSON payloads: encode any supported value, decode into a declared type.

Encoding goes through pydantic-core, which already knows pydantic models,
dataclasses, datetimes, enums, UUIDs, decimals and the builtins. Decoding
validates against the annotation found in the user's signature, so a function
declared ``def f(msg: EmailRequest)`` receives an ``EmailRequest`` again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast, get_args, get_origin

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from ._errors import SerializationError

__all__ = ["PayloadCodec", "decode", "encode"]

T = TypeVar("T")


def encode(value: Any) -> str | None:
    """JSON text of ``value``; ``None`` stays ``None`` (no payload)."""
    if value is None:
        return None
    try:
        return pydantic_core.to_json(value).decode()
    except pydantic_core.PydanticSerializationError as error:
        type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        raise SerializationError(
            f"cannot serialize a value of type {type_name} to JSON ({error}); use a pydantic "
            "model, a dataclass, or builtins (dict, list, str, int, float, bool, None)",
            type_name=type_name,
        ) from None


def decode(text: str | None) -> Any:
    """Plain JSON value of ``text`` (``None`` for no payload)."""
    if text is None:
        return None
    try:
        return pydantic_core.from_json(text)
    except ValueError as error:
        raise SerializationError(f"payload is not valid JSON: {error}") from None


class PayloadCodec(Generic[T]):
    """Encodes values and decodes JSON into one declared type.

    Build one per annotation and keep it: building the validator is the
    expensive part, using it is cheap.
    """

    __slots__ = ("_adapter", "_default", "type_name")

    def __init__(self, annotation: Any, *, default: Any = inspect.Parameter.empty) -> None:
        self._adapter: TypeAdapter[T] | None = (
            None if annotation in (Any, inspect.Parameter.empty, None) else TypeAdapter(annotation)
        )
        self._default = default
        self.type_name = getattr(annotation, "__name__", repr(annotation))

    @classmethod
    def for_parameter(cls, parameter: inspect.Parameter | None) -> PayloadCodec[Any]:
        """A codec for a function parameter: its annotation, and its default for no payload."""
        if parameter is None:
            return cls(Any)
        return cls(parameter.annotation, default=parameter.default)

    @classmethod
    def for_type(cls, annotation: Any) -> PayloadCodec[Any]:
        """A codec for ``annotation`` (``Any`` or empty means plain JSON)."""
        return cls(annotation)

    @staticmethod
    def encode(value: Any) -> str | None:
        """JSON text of ``value`` (the declared type does not matter for encoding)."""
        return encode(value)

    def decode(self, text: str | None) -> T:
        """Validate JSON text into the declared type (no payload gives the default, if any)."""
        if text is None and self._default is not inspect.Parameter.empty:
            return cast(T, self._default)
        if self._adapter is None:
            return cast(T, decode(text))
        try:
            return self._adapter.validate_json("null" if text is None else text)
        except ValidationError as error:
            raise SerializationError(
                f"payload does not match {self.type_name}: {_summarize(error)}",
                type_name=self.type_name,
            ) from None

    def from_python(self, value: Any) -> T:
        """Validate an already-decoded JSON value into the declared type."""
        if self._adapter is None:
            return cast(T, value)
        try:
            return self._adapter.validate_python(value)
        except ValidationError as error:
            raise SerializationError(
                f"value does not match {self.type_name}: {_summarize(error)}",
                type_name=self.type_name,
            ) from None


def _summarize(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "value"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def input_parameter(fn: Callable[..., Any], position: int) -> inspect.Parameter | None:
    """The positional parameter at ``position``, if the function has one."""
    params = [
        p
        for p in inspect.signature(fn, eval_str=True).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return params[position] if len(params) > position else None


def return_annotation(fn: Callable[..., Any], *, generator: bool = False) -> Any:
    """Return annotation; for a generator orchestrator, the ``R`` of ``Generator[Y, S, R]``."""
    annotation = inspect.signature(fn, eval_str=True).return_annotation
    if annotation is inspect.Signature.empty:
        return Any
    if generator:
        args = get_args(annotation)
        origin = get_origin(annotation)
        is_generator_type = origin is not None and getattr(origin, "__name__", "") == "Generator"
        return args[2] if is_generator_type and len(args) == 3 else Any
    return annotation
