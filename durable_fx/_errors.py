"""Exceptions raised by durable_fx.

    DurableFxError
    ├── SerializationError          a value cannot become (or come back from) JSON
    ├── InvalidInstanceIdError      an instance id breaks the key rules shared by all stores
    ├── InstanceExistsError         start() with the id of an existing instance it may not replace
    ├── InstanceNotFoundError       no instance has that id
    ├── InvalidOperationError       the request does not fit the instance's state
    ├── UnknownNameError            no orchestrator/activity is registered under a name
    ├── ConflictError               another worker committed first (the worker drops its try)
    ├── StoreBusyError              the store stayed locked or throttled past its retry budget
    ├── OrchestrationFailedError    a handle's result(): the instance FAILED or was TERMINATED
    └── TaskError                   raised *inside* an orchestrator at a yield
        ├── TaskFailedError         an activity or sub-orchestration failed
        └── EventTimeoutError       wait_for_event(timeout=...) elapsed first
    NonDeterminismError             the code no longer matches its history

Every error pickles with its fields (``__reduce__``) so it can cross process
boundaries and be stored.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConflictError",
    "DurableFxError",
    "EventTimeoutError",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InvalidInstanceIdError",
    "InvalidOperationError",
    "NonDeterminismError",
    "OrchestrationFailedError",
    "SerializationError",
    "StoreBusyError",
    "TaskError",
    "TaskFailedError",
    "UnknownNameError",
]


class DurableFxError(Exception):
    """Root of every error durable_fx raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[DurableFxError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class SerializationError(DurableFxError, TypeError):
    """A value cannot be turned into JSON, or JSON cannot be validated into the declared type."""

    def __init__(self, message: str, *, type_name: str | None = None) -> None:
        super().__init__(message)
        self.type_name = type_name


class InvalidInstanceIdError(DurableFxError, ValueError):
    """An instance id breaks the key rules every store enforces."""

    def __init__(self, instance_id: str, reason: str) -> None:
        super().__init__(f"invalid instance id {instance_id[:80]!r}: {reason}")
        self.instance_id = instance_id
        self.reason = reason


_FINISHED = ("COMPLETED", "FAILED", "TERMINATED")


class InstanceExistsError(DurableFxError):
    """An instance with this id exists, and the start's id reuse policy does not replace it."""

    def __init__(self, instance_id: str, status: str) -> None:
        if status in _FINISHED:
            advice = (
                "it keeps its history. To run it again, restart it, or start it with an id "
                "reuse policy that replaces it (reuse=IdReusePolicy.REPLACE_FINISHED; "
                "CLI: --reuse replace-finished)"
            )
        else:
            advice = "wait for it to finish, terminate it, or start with another instance_id"
        super().__init__(f"instance {instance_id!r} already exists and is {status}; {advice}")
        self.instance_id = instance_id
        self.status = status


class InstanceNotFoundError(DurableFxError, LookupError):
    """No instance has this id (it never existed or was purged)."""

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"no orchestration instance with id {instance_id!r}")
        self.instance_id = instance_id


class InvalidOperationError(DurableFxError):
    """The operation does not apply to the instance in its current state."""


class UnknownNameError(DurableFxError, LookupError):
    """Nothing is registered under the name an instance or task asked for."""

    def __init__(self, kind: str, name: str, registered: list[str]) -> None:
        known = ", ".join(sorted(registered)) or "none"
        super().__init__(f"no {kind} named {name!r} is registered (registered: {known})")
        self.kind = kind
        self.name = name
        self.registered = registered


class ConflictError(DurableFxError):
    """The instance changed since it was read: another worker owns it or committed first."""

    def __init__(self, instance_id: str, detail: str = "", *, lock_kept: bool = False) -> None:
        message = f"instance {instance_id!r} was changed by another worker"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.instance_id = instance_id
        self.lock_kept = lock_kept
        """The lock is still the caller's (a client changed the row under it, e.g. a
        rewind): the caller should release it so the messages are done again now."""


class StoreBusyError(DurableFxError):
    """The store stayed busy (locked by another writer, throttled, unavailable) past its retries.

    The same call may succeed later: nothing was written, or (a request to
    Azure Storage whose answer was lost) what was written is safe to ask for
    again. HTTP entry points answer 503 with ``Retry-After: retry_after`` seconds.
    """

    def __init__(self, detail: str, *, retry_after: float = 1.0) -> None:
        super().__init__(f"the store is busy ({detail}); retry in {retry_after:g} s")
        self.detail = detail
        self.retry_after = retry_after


class OrchestrationFailedError(DurableFxError):
    """An instance whose result was asked for ended FAILED or TERMINATED instead.

    ``status`` is ``"FAILED"`` or ``"TERMINATED"``; for a failure,
    ``error_type``, ``message`` and ``stack_trace`` describe the orchestration's
    exception as text (it was raised in a worker); for a termination,
    ``message`` is the reason given, as JSON text (``None`` if none).
    """

    def __init__(
        self,
        instance_id: str,
        status: str,
        error_type: str | None = None,
        message: str | None = None,
        stack_trace: str | None = None,
    ) -> None:
        if status == "TERMINATED":
            why = f": {message}" if message is not None else ""
            text = f"orchestration {instance_id!r} was terminated{why}"
        else:
            text = f"orchestration {instance_id!r} failed: {error_type}: {message}"
        super().__init__(text)
        self.instance_id = instance_id
        self.status = status
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace


class TaskError(DurableFxError):
    """Base of the errors an orchestrator sees at a ``yield``."""


class TaskFailedError(TaskError):
    """An activity or sub-orchestration failed.

    ``error_type``, ``message`` and ``stack_trace`` describe the remote exception
    as text: the exception object itself lived in another process.
    """

    def __init__(
        self,
        task_name: str,
        error_type: str,
        message: str,
        stack_trace: str | None = None,
    ) -> None:
        super().__init__(f"{task_name} failed: {error_type}: {message}")
        self.task_name = task_name
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace


class EventTimeoutError(TaskError, TimeoutError):
    """``wait_for_event(name, timeout=...)`` elapsed before the event arrived."""

    def __init__(self, event_name: str, timeout_seconds: float) -> None:
        super().__init__(f"event {event_name!r} did not arrive within {timeout_seconds:g} s")
        self.event_name = event_name
        self.timeout_seconds = timeout_seconds


class NonDeterminismError(DurableFxError):
    """The orchestrator's code took another path than the one its history records."""

    def __init__(self, instance_id: str, sequence: int, recorded: str, produced: str) -> None:
        super().__init__(
            f"orchestration {instance_id!r} is not deterministic: at step {sequence} the history "
            f"records {recorded} but the code now produces {produced}. The orchestrator's code "
            "changed while this instance was running, or it depends on something that differs "
            "between replays (time, randomness, I/O). Use ctx.current_utc_datetime, "
            "ctx.new_uuid() and activities for those; put a change to running code behind "
            "ctx.is_patched(...), and check a deploy with `durable-fx replay` first."
        )
        self.instance_id = instance_id
        self.sequence = sequence
        self.recorded = recorded
        self.produced = produced
