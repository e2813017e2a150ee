"""Work delivered by someone else's queue reader: the Functions host's queue triggers.

Under Azure Functions the host, not the store, receives the control and
work-item messages, and hands each to one function invocation. A store whose
queues the host can read (the Azure store) implements ``DeliveredWork`` as
well as ``Store``: the invocation passes the message in and gets the episode or
the activity to run. The host owns the message (its visibility, its dequeue
count, its deletion on success, its poison queue); the store only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from ._records import ActivityWorkItem, OrchestrationWorkItem

__all__ = ["DeliveredMessage", "DeliveredWork"]


@dataclass(frozen=True, slots=True)
class DeliveredMessage:
    """A queue message as a trigger received it (body already decoded from Base64)."""

    id: str
    pop_receipt: str
    text: str
    dequeue_count: int
    inserted_at: datetime
    queue: str = ""
    """The queue it came from, if the trigger knows (it names where a poisoned copy goes)."""


@runtime_checkable
class DeliveredWork(Protocol):
    """The part of a store that runs on messages a queue trigger delivers."""

    async def accept_wake_up(self, message: DeliveredMessage, *, lease: timedelta) -> str | None:
        """Take ownership of the instance a control message names, if it has work.

        Returns the instance id to run episodes for (``lock_delivered``, then
        ``release_delivered``), or ``None`` when there is nothing to do now:
        a malformed message was poisoned, the instance is busy elsewhere or its
        work is not due (a delayed wake-up was left for it), or it is gone.
        """
        ...

    async def lock_delivered(
        self, instance_id: str, *, owner: str, lease: timedelta
    ) -> OrchestrationWorkItem | None:
        """The next episode of an accepted instance, or ``None`` when nothing is ready."""
        ...

    async def release_delivered(self, instance_id: str) -> None:
        """Give up an accepted instance, leaving a wake-up for anything still pending."""
        ...

    async def accept_work_item(
        self, message: DeliveredMessage, *, owner: str, lease: timedelta
    ) -> ActivityWorkItem | None:
        """The activity a work-item message asks for, or ``None`` if it must not run.

        ``None`` means the message was malformed (poisoned with its reason),
        delivered too often (poisoned), or its result is recorded already.
        Complete the item with ``Store.complete_activities``.
        """
        ...

    async def forget_work_item(self, item: ActivityWorkItem) -> None:
        """Drop an accepted work item that will not be completed here (the host retries it)."""
        ...

    def storage_fault(self, error: BaseException) -> bool:
        """Whether ``error`` is the store's storage failing for now (throttled, down)."""
        ...

    async def hand_on(self, message: DeliveredMessage) -> None:
        """Send a delayed copy of ``message``, whose invocation storage failed.

        The invocation then succeeds and the host deletes the original, so storage
        faults never push a message towards the poison queue. Raises if even the
        copy cannot be sent (the host then retries the original).
        """
        ...
