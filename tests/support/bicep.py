"""Reading Bicep files offline for tests/test_infra.py (no Bicep CLI exists offline).

tree-sitter-bicep parses a file into a concrete syntax tree; ``BicepFile``
answers what the tests ask of it: syntax errors, parameters with their
defaults, variables, resources and modules with their bodies, and the value of
a simple expression (strings with ``${}`` interpolation of parameters and
variables, numbers, booleans, arrays, objects, ``[for x in ...: ...]`` loops
and the pure functions ``range``, ``padLeft``, ``string`` and ``concat``).
Anything else evaluates to ``Unknown``, which no literal equals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_bicep

__all__ = ["BicepFile", "Node", "Unknown", "object_keys", "properties", "walk"]

Node = tree_sitter.Node


@cache
def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


class Unknown:
    """A value only known at deployment (a function call, a resource property...)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Unknown({self.text!r})"


def _concat(*parts: Any) -> Any:
    if all(isinstance(p, list) for p in parts):
        return [item for part in parts for item in part]
    return "".join(str(p) for p in parts)


_FUNCTIONS: dict[str, Any] = {
    "range": lambda start, count: list(range(start, start + count)),
    "padLeft": lambda value, width, fill=" ": str(value).rjust(width, fill),
    "string": lambda value: str(value).lower() if isinstance(value, bool) else str(value),
    "concat": _concat,
}
"""Bicep's pure functions the templates use, as Python (Bicep's argument order)."""


def walk(node: Node) -> list[Node]:
    """``node`` and all its descendants, depth first."""
    found = [node]
    for child in node.children:
        found.extend(walk(child))
    return found


def _named(node: Node) -> list[Node]:
    return [c for c in node.named_children if c.type != "comment"]


def _text(node: Node) -> str:
    return (node.text or b"").decode()


def _key(prop: Node) -> str:
    key = _named(prop)[0]
    if key.type == "string":
        return "".join(_text(c) for c in key.named_children)
    return _text(key)


def _value_node(prop: Node) -> Node:
    return _named(prop)[-1]


def object_keys(node: Node) -> set[str]:
    """The property names of every object literal at or under ``node``."""
    return {_key(n) for n in walk(node) if n.type == "object_property"}


def properties(obj: Node) -> dict[str, Node]:
    """An object literal's direct properties: name -> value node."""
    return {_key(p): _value_node(p) for p in _named(obj) if p.type == "object_property"}


@dataclass
class Declaration:
    """A ``resource`` or ``module``: its symbol, type or path, body and condition."""

    name: str
    target: str
    body: Node
    condition: Node | None


class BicepFile:
    """One parsed ``.bicep`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_bytes()
        self.tree = _parser().parse(self.source)
        self.root = self.tree.root_node

    def syntax_errors(self) -> list[str]:
        """``line:column: text`` of each ERROR or MISSING node."""
        return [
            f"{n.start_point[0] + 1}:{n.start_point[1] + 1}: {_text(n)[:60]!r}"
            for n in walk(self.root)
            if n.type == "ERROR" or n.is_missing
        ]

    def _declarations(self, kind: str) -> list[Node]:
        return [n for n in _named(self.root) if n.type == kind]

    def parameters(self) -> dict[str, Node | None]:
        """Parameter name -> default value node (``None``: required)."""
        found: dict[str, Node | None] = {}
        for decl in self._declarations("parameter_declaration"):
            parts = _named(decl)
            default = parts[2] if len(parts) > 2 else None
            found[_text(parts[0])] = default
        return found

    def secure_parameters(self) -> set[str]:
        """Parameters decorated ``@secure()``."""
        secure: set[str] = set()
        pending = False
        for node in _named(self.root):
            if node.type == "decorators":
                pending = pending or "@secure()" in _text(node)
            elif node.type == "parameter_declaration":
                if pending:
                    secure.add(_text(_named(node)[0]))
                pending = False
            else:
                pending = False
        return secure

    def variables(self) -> dict[str, Node]:
        """Variable name -> value node."""
        return {
            _text(_named(d)[0]): _named(d)[-1] for d in self._declarations("variable_declaration")
        }

    def _declared(self, kind: str) -> list[Declaration]:
        found = []
        for decl in self._declarations(kind):
            parts = _named(decl)
            name, target, body = parts[0], parts[1], parts[-1]
            condition = None
            if body.type == "if_statement":
                condition, body = _named(body)[0], _named(body)[-1]
            elif body.type == "array":  # a loop: [for x in y: {...}]
                loops = [n for n in walk(body) if n.type == "object"]
                body = loops[0] if loops else body
            found.append(Declaration(_text(name), self.value(target), body, condition))
        return found

    def resources(self) -> list[Declaration]:
        """Resource declarations; ``target`` is ``type@apiVersion``."""
        return self._declared("resource_declaration")

    def modules(self) -> list[Declaration]:
        """Module declarations; ``target`` is the module's path."""
        return self._declared("module_declaration")

    def value(self, node: Node, scope: dict[str, Any] | None = None) -> Any:
        """The value of a literal-ish expression; parameters evaluate to their defaults."""
        scope = scope if scope is not None else self.scope()
        kind = node.type
        if kind == "string":
            parts: list[str] = []
            for child in _named(node):
                if child.type == "interpolation":
                    inner = self.value(_named(child)[0], scope)
                    if not isinstance(inner, str | int):
                        return Unknown(_text(node))
                    parts.append(str(inner))
                elif child.type == "escape_sequence":
                    parts.append(_text(child)[1:])
                else:
                    parts.append(_text(child))
            return "".join(parts)
        if kind == "number":
            return int(_text(node))
        if kind == "boolean":
            return _text(node) == "true"
        if kind == "array":
            return [self.value(c, scope) for c in _named(node)]
        if kind == "object":
            return {k: self.value(v, scope) for k, v in properties(node).items()}
        if kind == "identifier" and _text(node) in scope:
            return scope[_text(node)]
        if kind == "for_statement":
            return self._loop(node, scope)
        if kind == "call_expression":
            return self._call(node, scope)
        return Unknown(_text(node))

    def _loop(self, node: Node, scope: dict[str, Any]) -> Any:
        """``[for name in items: body]`` (one loop variable, no index)."""
        name, items, body = _named(node)
        if name.type != "identifier":
            return Unknown(_text(node))
        values = self.value(items, scope)
        if not isinstance(values, list):
            return Unknown(_text(node))
        return [self.value(body, {**scope, _text(name): value}) for value in values]

    def _call(self, node: Node, scope: dict[str, Any]) -> Any:
        function, arguments = _named(node)
        implementation = _FUNCTIONS.get(_text(function))
        args = [self.value(a, scope) for a in _named(arguments)]
        if implementation is None or any(isinstance(a, Unknown) for a in args):
            return Unknown(_text(node))
        return implementation(*args)

    def scope(self) -> dict[str, Any]:
        """Parameters (their defaults) and variables, evaluated in declaration order."""
        scope: dict[str, Any] = {}
        for name, default in self.parameters().items():
            scope[name] = Unknown(name) if default is None else self.value(default, scope)
        for name, node in self.variables().items():
            scope[name] = self.value(node, scope)
        return scope
