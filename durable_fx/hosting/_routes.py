"""HTTP trigger routes as the Functions host matches them (ASP.NET route templates).

A template is ``/``-separated segments: literals (matched case-insensitively),
parameters ``{name}``, optional ones ``{name?}`` (last segment only), defaults
``{name=value}``, constraints ``{id:int}``, ``{day:datetime}``, ``{code:regex(^[a-z]+$)}``,
``{n:range(1,9)}``..., and a catch-all ``{*rest}`` at the end. Segments may mix
literals and parameters (``{name}.{ext}``). When several routes match, the most
specific wins: literals before constrained parameters before plain ones,
optional and catch-all last, as ASP.NET orders them.

Segments are percent-decoded as strict UTF-8: invalid bytes are a
``PathNotText`` (400), never U+FFFD, which would make different paths equal.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar
from urllib.parse import unquote

__all__ = ["PathNotText", "RouteMatch", "RouteTable", "RouteTemplate"]

T = TypeVar("T")

_CONSTRAINT = re.compile(r"^(\w+)(?:\((.*)\))?$")


def _is_int(value: str) -> bool:
    return re.fullmatch(r"-?\d+", value) is not None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_SIMPLE: dict[str, Callable[[str], bool]] = {
    "int": _is_int,
    "long": _is_int,
    "bool": lambda v: v.lower() in ("true", "false"),
    "guid": _is_guid,
    "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
    "decimal": _is_number,
    "double": _is_number,
    "float": _is_number,
    "datetime": _is_datetime,
    "required": bool,
}


def _constraint(text: str, template: str) -> Callable[[str], bool]:
    match = _CONSTRAINT.match(text)
    name, args = (match.group(1).lower(), match.group(2)) if match else ("", None)
    if name in _SIMPLE and args is None:
        return _SIMPLE[name]
    if name == "regex" and args is not None:
        pattern = re.compile(args, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    numbers = [int(a) for a in (args or "").split(",") if a.strip().lstrip("-").isdigit()]
    checks: dict[str, Callable[[str], bool]] = {}
    if len(numbers) == 1:
        n = numbers[0]
        checks = {
            "minlength": lambda v: len(v) >= n,
            "maxlength": lambda v: len(v) <= n,
            "length": lambda v: len(v) == n,
            "min": lambda v: _is_int(v) and int(v) >= n,
            "max": lambda v: _is_int(v) and int(v) <= n,
        }
    elif len(numbers) == 2:
        low, high = numbers
        checks = {
            "length": lambda v: low <= len(v) <= high,
            "range": lambda v: _is_int(v) and low <= int(v) <= high,
        }
    if name in checks:
        return checks[name]
    raise ValueError(f"route {template!r}: constraint {text!r} is not supported")


@dataclass(frozen=True, slots=True)
class _Parameter:
    name: str
    optional: bool = False
    catch_all: bool = False
    default: str | None = None
    checks: tuple[Callable[[str], bool], ...] = ()

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


def _parameter(token: str, template: str) -> _Parameter:
    catch_all = token.startswith("*")
    token = token.lstrip("*")
    name, *constraints = token.split(":")
    default = None
    if "=" in name:
        name, default = name.split("=", 1)
    elif constraints and "=" in constraints[-1]:
        constraints[-1], default = constraints[-1].split("=", 1)
    optional = name.endswith("?") or (constraints and constraints[-1].endswith("?"))
    name = name.rstrip("?")
    constraints = [c.rstrip("?") for c in constraints]
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise ValueError(f"route {template!r}: bad parameter name {name!r}")
    checks = tuple(_constraint(c, template) for c in constraints if c)
    return _Parameter(name, bool(optional), catch_all, default, checks)


@dataclass(frozen=True, slots=True)
class _Segment:
    """One path segment: a regex over the segment, and the parameters it captures."""

    pattern: re.Pattern[str]
    parameters: tuple[_Parameter, ...]
    rank: int
    """Specificity for ordering: 0 literal, 1 constrained, 2 plain, 3 optional, 4 catch-all."""

    @property
    def optional(self) -> bool:
        only = self.parameters[0] if len(self.parameters) == 1 else None
        return only is not None and (only.optional or only.default is not None)

    @property
    def catch_all(self) -> bool:
        return any(p.catch_all for p in self.parameters)


def _split(text: str, template: str) -> list[tuple[bool, str]]:
    """A segment as (is_parameter, text) parts; ``{{`` and ``}}`` escape braces."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith(("{{", "}}"), index):
            literal.append(char)
            index += 2
        elif char == "{":
            token, index = _token(text, index + 1, template)
            parts.append((False, "".join(literal)))
            parts.append((True, token))
            literal = []
        elif char == "}":
            raise ValueError(f"route {template!r}: unbalanced braces in {text!r}")
        else:
            literal.append(char)
            index += 1
    parts.append((False, "".join(literal)))
    return [part for part in parts if part[0] or part[1]]


def _token(text: str, index: int, template: str) -> tuple[str, int]:
    """The parameter text from ``index`` to its closing brace, and the index after it."""
    token: list[str] = []
    while index < len(text):
        if text.startswith(("{{", "}}"), index):
            token.append(text[index])
            index += 2
        elif text[index] == "}":
            return "".join(token), index + 1
        elif text[index] == "{":
            break
        else:
            token.append(text[index])
            index += 1
    raise ValueError(f"route {template!r}: unbalanced braces in {text!r}")


def _segment(text: str, template: str) -> _Segment:
    parts: list[str] = []
    parameters: list[_Parameter] = []
    for is_parameter, part in _split(text, template):
        if not is_parameter:
            parts.append(re.escape(part))
            continue
        parameter = _parameter(part, template)
        parameters.append(parameter)
        parts.append("(.*)" if parameter.catch_all else "([^/]+?)")
    if not parameters:
        rank = 0
    elif any(p.catch_all for p in parameters):
        rank = 4
    elif any(p.optional or p.default is not None for p in parameters):
        rank = 3
    else:
        rank = 1 if any(p.checks for p in parameters) else 2
    pattern = re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL)
    return _Segment(pattern, tuple(parameters), rank)


@dataclass(frozen=True, slots=True)
class RouteTemplate:
    """A parsed route template; ``match`` gives the route values of a matching path."""

    template: str
    segments: tuple[_Segment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        """Parse ``template`` (``ValueError`` naming what is wrong)."""
        texts = [s for s in template.strip("/").split("/")] if template.strip("/") else []
        segments = tuple(_segment(t, template) for t in texts)
        for segment in segments[:-1]:
            if segment.catch_all:
                raise ValueError(f"route {template!r}: a catch-all must be the last segment")
            if segment.optional:
                raise ValueError(f"route {template!r}: only the last segment may be optional")
        return cls(template, segments)

    def order(self) -> tuple[int, ...]:
        """Sort key: more specific templates first."""
        return (*(s.rank for s in self.segments), 5)

    def match(self, path: Sequence[str]) -> dict[str, str] | None:
        """Route values if the (decoded) path segments match, else ``None``."""
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.catch_all:
                rest = "/".join(path[index:])
                found = segment.pattern.match(rest)
                return self._bind(segment, found, values) if found else None
            if index >= len(path):
                return self._defaults(index, values)
            found = segment.pattern.match(path[index])
            if found is None or self._bind(segment, found, values) is None:
                return None
        return values if len(path) == len(self.segments) else None

    def _defaults(self, start: int, values: dict[str, str]) -> dict[str, str] | None:
        for segment in self.segments[start:]:
            if not (segment.optional or segment.catch_all):
                return None
            for parameter in segment.parameters:
                if parameter.default is not None:
                    values[parameter.name] = parameter.default
        return values

    @staticmethod
    def _bind(
        segment: _Segment, found: re.Match[str], values: dict[str, str]
    ) -> dict[str, str] | None:
        for parameter, value in zip(segment.parameters, found.groups(), strict=True):
            if value == "" and parameter.catch_all:
                continue
            if not parameter.accepts(value):
                return None
            values[parameter.name] = value
        return values


class PathNotText(ValueError):
    """A URL path whose percent-encoded bytes are not UTF-8 (``%ED%A0%80``)."""


def _decoded(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise PathNotText(
            f"the URL path segment {segment[:80]!r} is not UTF-8 once percent-decoded"
        ) from None


@dataclass(slots=True)
class RouteMatch(Generic[T]):
    """What a request matched: the target and its route values."""

    target: T
    route_params: dict[str, str]


@dataclass(slots=True)
class RouteTable(Generic[T]):
    """Routes under one prefix, each for some HTTP methods (``None``: any method)."""

    prefix: str = "api"
    _routes: list[tuple[RouteTemplate, frozenset[str] | None, T]] = field(default_factory=list)

    def add(self, template: str, methods: Sequence[str] | None, target: T) -> None:
        """Add a route (``ValueError`` for a malformed template)."""
        chosen = frozenset(m.upper() for m in methods) if methods else None
        self._routes.append((RouteTemplate.parse(template), chosen, target))
        self._routes.sort(key=lambda route: route[0].order())

    def match(self, method: str, path: str) -> RouteMatch[T] | None:
        """The best route for ``method`` and the raw URL ``path``, or ``None`` (``PathNotText``)."""
        segments = [_decoded(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        prefix = [s for s in self.prefix.strip("/").split("/") if s]
        if [s.lower() for s in segments[: len(prefix)]] != [p.lower() for p in prefix]:
            return None
        rest = segments[len(prefix) :]
        for template, methods, target in self._routes:
            if methods is not None and method.upper() not in methods:
                continue
            values = template.match(rest)
            if values is not None:
                return RouteMatch(target, values)
        return None
