"""An app's functions as the host indexes them: name, trigger, bindings, how to call.

``serve`` reads the same ``get_functions()`` output and raw binding JSON the
Python worker hands the host, and applies the worker's signature rule
(parameters are the binding names, plus an optional ``context``), so an app
that serves here indexes under Azure Functions too. Bindings ``serve`` cannot
provide make the function unavailable, with a warning naming them.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

__all__ = ["IndexedFunction", "index_app"]

SUPPORTED_TRIGGERS = ("httpTrigger", "queueTrigger", "timerTrigger")
SUPPORTED_OUTPUTS = ("http", "queue")


@dataclass(frozen=True, slots=True)
class IndexedFunction:
    """One indexed function and what calling it takes."""

    name: str
    fn: Callable[..., Any]
    trigger: dict[str, Any]
    outputs: tuple[dict[str, Any], ...]
    """Output bindings other than the HTTP response (queue outputs)."""
    returns: dict[str, Any] | None
    """The ``$return`` binding, if any."""
    wants_context: bool
    annotations: dict[str, Any]
    directory: str

    @property
    def trigger_type(self) -> str:
        """``httpTrigger``, ``queueTrigger`` or ``timerTrigger``."""
        return str(self.trigger["type"])

    @property
    def is_async(self) -> bool:
        """Whether the function is ``async def`` (else it runs on a thread)."""
        return inspect.iscoroutinefunction(self.fn)


def index_app(app: func.FunctionRegister) -> tuple[list[IndexedFunction], list[str]]:
    """The app's functions ``serve`` can run, and a warning for each one it cannot."""
    functions: list[IndexedFunction] = []
    problems: list[str] = []
    for function in app.get_functions():
        name = function.get_function_name() or function.get_user_function().__name__
        bindings = [json.loads(raw) for raw in function.get_raw_bindings()]
        try:
            functions.append(_indexed(name, function.get_user_function(), bindings))
        except _Unsupported as unsupported:
            problems.append(f"{name}: {unsupported}")
    return functions, problems


class _Unsupported(Exception):
    pass


def _indexed(name: str, fn: Callable[..., Any], bindings: list[dict[str, Any]]) -> IndexedFunction:
    trigger = next(b for b in bindings if str(b["type"]).endswith("Trigger"))
    if trigger["type"] not in SUPPORTED_TRIGGERS:
        raise _Unsupported(f"durable-fx serve does not run {trigger['type']} functions")
    others = [b for b in bindings if b is not trigger]
    unsupported = [
        b["type"]
        for b in others
        if str(b["direction"]).upper() != "OUT" or b["type"] not in SUPPORTED_OUTPUTS
    ]
    if unsupported:
        raise _Unsupported(f"durable-fx serve has no {', '.join(unsupported)} binding")
    params = dict(inspect.signature(fn).parameters)
    wants_context = "context" in params and not any(b["name"] == "context" for b in bindings)
    if wants_context:
        del params["context"]
    names = {b["name"] for b in bindings if b["name"] != "$return"}
    if set(params) != names:
        raise _Unsupported(
            f"parameters {sorted(params)} do not match the bindings {sorted(names)} "
            "(the Functions worker refuses this too)"
        )
    returns = next((b for b in others if b["name"] == "$return"), None)
    return IndexedFunction(
        name=name,
        fn=fn,
        trigger=trigger,
        outputs=tuple(b for b in others if b["name"] != "$return"),
        returns=returns,
        wants_context=wants_context,
        annotations=_annotations(fn),
        directory=_directory(fn),
    )


def _annotations(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except (NameError, TypeError):
        return {}


def _directory(fn: Callable[..., Any]) -> str:
    try:
        return str(Path(inspect.getfile(fn)).parent)
    except TypeError:
        return ""
