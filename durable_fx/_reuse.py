"""Id reuse: which existing instance ``start`` may replace under the same instance id.

Starting with the id of an instance that already exists is refused by default
(``InstanceExistsError``), finished or not: a repeated start is usually a
retried request, and replacing a finished instance would wipe its history.
Replacing is an explicit choice, as in Durable Functions' ``OverridableStates``
and Temporal's ``WorkflowIdReusePolicy``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from ._state import OrchestrationStatus

__all__ = ["FINISHED", "IdReuse", "IdReusePolicy", "replaceable_statuses"]

FINISHED = frozenset(
    {OrchestrationStatus.COMPLETED, OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED}
)
"""The statuses an instance can be replaced from: it will never run again on its own."""


class IdReusePolicy(Enum):
    """Which existing instance ``start(..., reuse=...)`` replaces; any other is refused."""

    REFUSE = frozenset[OrchestrationStatus]()
    """Never replace: an existing id raises ``InstanceExistsError`` (the default)."""
    REPLACE_FINISHED = FINISHED
    """Replace a COMPLETED, FAILED or TERMINATED instance (its history is dropped)."""
    REPLACE_FAILED = frozenset({OrchestrationStatus.FAILED, OrchestrationStatus.TERMINATED})
    """Replace only an instance that FAILED or was TERMINATED: a COMPLETED one stays."""

    @property
    def replaceable(self) -> frozenset[OrchestrationStatus]:
        """The statuses this policy replaces."""
        return self.value


IdReuse = IdReusePolicy | Iterable[OrchestrationStatus | str]
"""A policy, or the statuses to replace (``OrchestrationStatus`` members or their names)."""


def replaceable_statuses(reuse: IdReuse) -> frozenset[OrchestrationStatus]:
    """The statuses ``reuse`` replaces; ``ValueError`` for an unfinished one.

    An instance that may still run cannot be replaced in one atomic step (its
    worker holds it): terminate it first, then start with ``REPLACE_FINISHED``.
    """
    if isinstance(reuse, IdReusePolicy):
        return reuse.replaceable
    if isinstance(reuse, str):
        raise TypeError("reuse takes an IdReusePolicy or a collection of statuses, not a string")
    statuses = frozenset(
        s if isinstance(s, OrchestrationStatus) else OrchestrationStatus(s.upper()) for s in reuse
    )
    unfinished = sorted(s.value for s in statuses - FINISHED)
    if unfinished:
        raise ValueError(
            f"only finished instances (COMPLETED, FAILED, TERMINATED) can be replaced, not "
            f"{', '.join(unfinished)}: terminate the instance first"
        )
    return statuses
