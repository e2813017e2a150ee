"""The hub's queues: wake-up hints, activity work items, and their poison twins.

Messages are JSON, base64-encoded (the Functions queue trigger's default),
and never expire. A delay longer than the queue allows (7 days; 6 by default
here, as Durable Functions does) is capped: the message comes back early, the
store sees that its time has not come, and hides it again, so long timers
chain. Tests shrink the cap so that a manual clock, not the queue, decides.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from ..._metrics import record_poisoned
from .._records import QueueBacklog
from ._resources import Resources
from ._transient import maybe_applied, retrying, status_of

__all__ = ["MAX_MESSAGE_BYTES", "Handle", "Queues", "Received", "is_poison_copy"]

MAX_MESSAGE_BYTES = 48 * 1024
"""Largest raw message: 64 KiB once base64-encoded."""
_QUEUE_LIMIT = timedelta(days=7) - timedelta(seconds=1)

T = TypeVar("T")


@dataclass(slots=True)
class Handle:
    """A message this process may delete or hide again (until someone else receives it)."""

    queue: str
    id: str
    pop_receipt: str
    hosted: bool = False
    """Held by the Functions host for an invocation: only the host deletes or hides it."""


@dataclass(slots=True)
class Received:
    """A received message: its handle, how often it was delivered, and its body."""

    handle: Handle
    dequeue_count: int
    inserted_on: datetime
    text: str
    body: dict[str, Any] | None
    """The decoded JSON object, or ``None`` if the message is not one of ours."""


_VISIBILITY_SLACK = timedelta(milliseconds=250)


class Queues:
    """Put, receive, hide and delete messages, capping every delay at ``max_delay``."""

    def __init__(self, resources: Resources, max_delay: timedelta) -> None:
        self._resources = resources
        self.max_delay = min(max_delay, _QUEUE_LIMIT)
        self.on_lost: Callable[[str, timedelta], None] = lambda queue, delay: None
        """Told when messages of ``queue`` may have been hidden for ``delay`` unseen."""

    def seconds(self, delay: timedelta, *, minimum: int = 0) -> int:
        """A queue delay in whole seconds: rounded up, capped, at least ``minimum``."""
        capped = min(delay, self.max_delay)
        return max(minimum, math.ceil(capped.total_seconds()))

    def visible_after(self, delay: timedelta) -> timedelta:
        """When a message put or hidden for ``delay`` is sure to be visible.

        The queue hides for whole seconds (``seconds``), and its clock is not
        ours: a poll expected at the unrounded delay finds nothing and leaves
        the message to the idle back-off, which may be minutes away. A message
        not hidden at all is visible at once.
        """
        seconds = self.seconds(delay)
        return timedelta(seconds=seconds) + _VISIBILITY_SLACK if seconds else timedelta(0)

    async def put(self, queue: str, body: dict[str, Any], *, delay: timedelta) -> Handle:
        """Send ``body``, invisible for ``delay`` (capped); never expires."""
        return await self.put_text(queue, json.dumps(body, separators=(",", ":")), delay=delay)

    async def put_text(self, queue: str, text: str, *, delay: timedelta) -> Handle:
        """Send ``text`` as it is (``put`` encodes a body first)."""
        client = self._resources.queues[queue]
        seconds = self.seconds(delay)
        message = await retrying(
            lambda: client.send_message(text, visibility_timeout=seconds, time_to_live=-1),
            what=f"send a message to {queue}",
        )
        return Handle(queue, message.id, message.pop_receipt or "")

    async def receive(self, queue: str, *, limit: int, lease: timedelta) -> list[Received]:
        """Up to ``limit`` (at most 32) visible messages, hidden for ``lease`` (capped)."""
        client = self._resources.queues[queue]
        seconds = self.seconds(lease, minimum=1)

        async def receive() -> list[Any]:
            count = max(1, min(32, limit))
            # messages_per_page: without it the SDK fetches one message per request.
            pager = client.receive_messages(
                messages_per_page=count, max_messages=count, visibility_timeout=seconds
            )
            return [message async for message in pager]

        messages = await self._watched(receive, queue, lease, what=f"receive from {queue}")
        return [_received(queue, m) for m in messages]

    async def peek(self, queue: str, *, limit: int) -> list[Received]:
        """Up to ``limit`` (at most 32) visible messages, left visible with their pop receipts."""
        client = self._resources.queues[queue]
        count = max(1, min(32, limit))
        messages = await retrying(
            lambda: client.peek_messages(max_messages=count), what=f"peek at {queue}"
        )
        return [_received(queue, m) for m in messages]

    async def backlog(self, queue: str, now: datetime) -> QueueBacklog:
        """``queue``'s length as the Functions scale controller sees it, and its oldest's age.

        Azure's approximate count includes delayed and leased messages, so it
        counts only when a visible message is there (the scale controller's
        rule); else nothing waits. A message tells when it was inserted, not
        when it became visible: the age is since insertion.
        """
        client = self._resources.queues[queue]
        first = await self.peek(queue, limit=1)
        if not first:
            return QueueBacklog(queue, 0, None)
        properties = await retrying(
            lambda: client.get_queue_properties(), what=f"read the length of {queue}"
        )
        length = max(1, int(properties.approximate_message_count or 0))
        return QueueBacklog.at(queue, length, first[0].inserted_on, now)

    async def hide(self, handle: Handle, delay: timedelta) -> bool:
        """Make a held message invisible for ``delay`` (capped); False if no longer ours."""
        if handle.hosted:
            return False  # the host's: it hides it again itself if the invocation fails
        client = self._resources.queues[handle.queue]
        seconds = self.seconds(delay)

        async def update() -> Any:
            return await client.update_message(
                handle.id, handle.pop_receipt, visibility_timeout=seconds
            )

        try:
            updated = await self._watched(
                update, handle.queue, delay, what=f"hide a message of {handle.queue}"
            )
        except (ResourceNotFoundError, HttpResponseError) as error:
            if status_of(error) in (400, 404):
                return False  # received by someone else since (new pop receipt), or deleted
            raise
        handle.pop_receipt = updated.pop_receipt or handle.pop_receipt
        return True

    async def _watched(
        self, call: Callable[[], Awaitable[T]], queue: str, delay: timedelta, *, what: str
    ) -> T:
        """``retrying(call)``, reporting to ``on_lost`` if an attempt may have applied unseen.

        A receive or hide whose response was lost leaves messages hidden under a pop
        receipt this process never saw: they come back after ``delay``, and only a
        poll then finds them.
        """
        lost = False

        async def attempt() -> T:
            nonlocal lost
            try:
                return await call()
            except Exception as error:
                lost = lost or maybe_applied(error)
                raise

        try:
            return await retrying(attempt, what=what)
        finally:
            if lost:
                self.on_lost(queue, min(delay, self.max_delay))

    async def delete(self, handle: Handle) -> bool:
        """Delete a held message; False if it was gone or no longer ours.

        A ``hosted`` message is left alone: the host deletes it once the
        invocation returns (deleting it here made the host's delete a 404).
        """
        if handle.hosted:
            return False
        client = self._resources.queues[handle.queue]
        try:
            await retrying(
                lambda: client.delete_message(handle.id, handle.pop_receipt),
                what=f"delete a message of {handle.queue}",
            )
        except (ResourceNotFoundError, HttpResponseError) as error:
            if status_of(error) in (400, 404):
                return False
            raise
        return True

    async def discard(self, handle: Handle | None) -> None:
        """Take back a message this process sent, if it can; one left behind finds nothing."""
        if handle is not None:
            with contextlib.suppress(Exception):  # storage failing: it wakes someone for nothing
                await self.delete(handle)

    async def poison(self, queue: str, text: str, reason: str, poison_id: str) -> Handle:
        """Copy a message to ``<queue>-poison`` with the reason it was taken out.

        The handle lets the copy be deleted once the message is requeued or
        deleted, as long as nobody has received it meanwhile. The copy names
        its poison row, so that a copy whose row is gone can be recognised
        (``is_poison_copy``, ``_adoption``).
        """
        body = {"reason": reason, "message": text, "id": poison_id}
        poison = self._resources.names.poison(queue)
        handle = await self.put(poison, body, delay=timedelta(0))
        record_poisoned(queue)
        return handle


def is_poison_copy(body: dict[str, Any] | None) -> bool:
    """Whether a ``<queue>-poison`` message is a copy ``Queues.poison`` wrote.

    Copies written before they named their row have no ``"id"``. A wake-up
    (``{"h": ...}``) or a work item (``{"w": ...}``) never has these keys.
    """
    if body is None or not {"reason", "message"} <= body.keys() <= {"reason", "message", "id"}:
        return False
    return all(isinstance(value, str) for value in body.values())


def _received(queue: str, message: Any) -> Received:
    text = str(message.content)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    inserted = message.inserted_on or datetime.now(UTC)
    return Received(
        handle=Handle(queue, message.id, message.pop_receipt or ""),
        dequeue_count=int(message.dequeue_count or 1),
        inserted_on=inserted,
        text=text,
        body=body if isinstance(body, dict) else None,
    )
