"""What becomes of a running sub-orchestration when its parent's execution ends.

Durable Functions leaves children running (``ABANDON``, the default here, so
existing code behaves as before); Temporal's ``ParentClosePolicy`` lets the
caller ask for them to be terminated. A parent that is itself terminated
always terminates its running children (unless the terminate asked not to
recurse), whatever their policy.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ParentClosePolicy"]


class ParentClosePolicy(StrEnum):
    """``call_sub_orchestrator(..., parent_close_policy=...)``."""

    ABANDON = "abandon"
    """The child runs on to its own end (its result reaches nobody)."""
    TERMINATE = "terminate"
    """The child is terminated when the parent completes, fails or continues as new."""
