"""Which orchestration versions a worker runs, and what it does with the others.

The model of the Durable Task SDKs' worker versioning: an instance carries
the version it started with (``start(version=)``); a worker with a
``VersionPolicy`` runs only the versions its ``match`` accepts and fails the
others with the reason, or leaves them pending for a worker that runs them
(the store does not hand them out), so an instance is never replayed against
code that was not written for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from ._errors import DurableFxError

__all__ = [
    "OnVersionMismatch",
    "VersionMatch",
    "VersionMismatchError",
    "VersionPolicy",
    "compare_versions",
]


class VersionMatch(StrEnum):
    """Which instance versions a worker runs."""

    ANY = "any"
    """Every version (the default without a policy)."""
    EXACT = "exact"
    """Only the worker's own version; an instance without a version does not match."""
    CURRENT_OR_OLDER = "current_or_older"
    """The worker's version and older ones (an instance without a version counts as older)."""


class OnVersionMismatch(StrEnum):
    """What a worker does with an instance of a version it does not run."""

    FAIL = "fail"
    """Fail it with ``VersionMismatchError`` (it will not run anywhere)."""
    LEAVE = "leave"
    """Leave it pending for a worker that runs its version (it is not handed out here)."""


class VersionMismatchError(DurableFxError):
    """An instance's version is not one the worker that took it runs."""

    def __init__(self, instance_id: str, version: str | None, policy: VersionPolicy) -> None:
        found = f"version {version!r}" if version is not None else "no version"
        if policy.match is VersionMatch.EXACT:
            why = f"does not match the worker version {policy.version!r}"
        else:
            why = f"is greater than the worker version {policy.version!r}"
        super().__init__(
            f"orchestration {instance_id!r} has {found}, which {why} "
            f"(match={policy.match.value}); run it on a worker of that version"
        )
        self.instance_id = instance_id
        self.version = version


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """The versions a ``Worker`` runs (``Worker(..., versioning=VersionPolicy("2.0"))``)."""

    version: str
    match: VersionMatch = VersionMatch.CURRENT_OR_OLDER
    on_mismatch: OnVersionMismatch = OnVersionMismatch.FAIL

    def accepts(self, version: str | None) -> bool:
        """Whether an instance of ``version`` may run on this worker."""
        match self.match:
            case VersionMatch.ANY:
                return True
            case VersionMatch.EXACT:
                return version == self.version
            case VersionMatch.CURRENT_OR_OLDER:
                return version is None or compare_versions(version, self.version) <= 0


_NUMBERS = re.compile(r"\d+(\.\d+)*")


def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1: dotted numbers compare as numbers ("1.10" > "1.9"), anything else as text."""
    if _NUMBERS.fullmatch(left) and _NUMBERS.fullmatch(right):
        a = [int(part) for part in left.split(".")]
        b = [int(part) for part in right.split(".")]
        width = max(len(a), len(b))
        a += [0] * (width - len(a))
        b += [0] * (width - len(b))
        return (a > b) - (a < b)
    return (left > right) - (left < right)
