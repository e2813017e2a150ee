"""Tasks: what an orchestrator yields, and how they complete during replay.

A task completes when the executor applies the history event that resolves
it. Composite tasks (``when_all``, ``when_any``) listen to their children and
keep counters, so completing one of 5,000 children costs O(1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from .._errors import TaskError

__all__ = [
    "CompletableTask",
    "DroppableTask",
    "Task",
    "WhenAllTask",
    "WhenAnyTask",
    "when_all",
    "when_any",
]

T = TypeVar("T")

_PENDING: Any = object()


class Task(Generic[T]):
    """A durable operation an orchestrator can ``yield``; the yield returns its result."""

    __slots__ = ("_error", "_listeners", "_result")

    def __init__(self) -> None:
        self._result: T = _PENDING
        self._error: TaskError | None = None
        self._listeners: list[Callable[[Task[Any]], None]] | None = None

    @property
    def is_complete(self) -> bool:
        """True once the task has a result or an error."""
        return self._result is not _PENDING or self._error is not None

    @property
    def is_failed(self) -> bool:
        """True if the task completed with an error."""
        return self._error is not None

    @property
    def error(self) -> TaskError | None:
        """The error the task failed with, if any."""
        return self._error

    def get_result(self) -> T:
        """The result; raises the task's error if it failed."""
        if self._error is not None:
            raise self._error
        if self._result is _PENDING:
            raise RuntimeError("the task has not completed yet; yield it first")
        return self._result

    def _add_listener(self, listener: Callable[[Task[Any]], None]) -> None:
        if self.is_complete:
            listener(self)
            return
        if self._listeners is None:
            self._listeners = []
        self._listeners.append(listener)

    def _settle(self, result: T, error: TaskError | None) -> None:
        if self.is_complete:
            return
        self._result = result
        self._error = error
        listeners, self._listeners = self._listeners, None
        for listener in listeners or ():
            listener(self)


class CompletableTask(Task[T]):
    """A task the executor completes from history (activity, timer, event, sub-orchestration)."""

    __slots__ = ()

    def complete(self, result: T) -> None:
        """Resolve the task with ``result``."""
        self._settle(result, None)

    def fail(self, error: TaskError) -> None:
        """Resolve the task with ``error``; yielding it raises the error."""
        self._settle(None, error)  # type: ignore[arg-type]


class DroppableTask(CompletableTask[T]):
    """A task that tells its owner when nothing refers to it any more.

    A durable timer is one: once the code can no longer yield it (a lost
    ``when_any`` let it go and no variable holds it), the timer is cancelled.
    """

    __slots__ = ("__weakref__", "_dropped")

    def on_drop(self, dropped: Callable[[], object]) -> None:
        """Call ``dropped`` when this task is garbage (if it has not completed)."""
        self._dropped = dropped

    def __del__(self) -> None:
        dropped = getattr(self, "_dropped", None)
        if dropped is not None and not self.is_complete:
            dropped()


class WhenAllTask(Task[list[T]]):
    """Completes with every child's result, in order; fails at the first failed child.

    Once settled it lets go of its children: after a failure, the pending ones
    are only alive if the code still holds them.
    """

    __slots__ = ("_children", "_remaining")

    def __init__(self, children: Sequence[Task[T]]) -> None:
        super().__init__()
        self._children = list(children)
        self._remaining = len(self._children)
        if not self._children:
            self._settle([], None)
        for child in self._children:
            child._add_listener(self._on_child)

    def _on_child(self, child: Task[Any]) -> None:
        if self.is_complete:
            return
        if child.is_failed:
            self._children = []
            self._settle(None, child.error)  # type: ignore[arg-type]
            return
        self._remaining -= 1
        if self._remaining == 0:
            children, self._children = self._children, []
            self._settle([c.get_result() for c in children], None)


class WhenAnyTask(Task[Task[T]]):
    """Completes with the first child that completes (succeeded or failed).

    It holds its children only until then, so a losing timer the code does
    not hold itself is dropped, and cancelled.
    """

    __slots__ = ("_children",)

    def __init__(self, children: Sequence[Task[T]]) -> None:
        super().__init__()
        if not children:
            raise ValueError("when_any needs at least one task")
        self._children = list(children)
        for child in self._children:
            child._add_listener(self._on_child)

    def _on_child(self, child: Task[Any]) -> None:
        if not self.is_complete:
            self._children = []
            self._settle(child, None)


def when_all(tasks: Iterable[Task[T]]) -> Task[list[T]]:
    """A task that completes when all ``tasks`` do, with their results in order.

    If any of them fails, yielding the combined task raises that failure.
    """
    return WhenAllTask(list(tasks))


def when_any(tasks: Iterable[Task[T]]) -> Task[Task[T]]:
    """A task that completes with whichever of ``tasks`` completes first."""
    return WhenAnyTask(list(tasks))
