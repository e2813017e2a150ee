"""``MemoryQueues``: queues in process memory, for ``memory://`` stores and tests."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import uuid
from datetime import timedelta

from .._clock import Clock, SystemClock
from ._messages import QueuedMessage, poison_queue_of, validate_queue_name

__all__ = ["MemoryQueues"]


class MemoryQueues:
    """A ``QueueBackend`` in memory; one lock guards every queue."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._queues: dict[str, dict[str, QueuedMessage]] = {}
        self._order = itertools.count()
        self._seq: dict[str, int] = {}

    async def send(self, queue: str, text: str, *, delay: timedelta = timedelta(0)) -> None:
        """Add a message, invisible for ``delay``."""
        validate_queue_name(queue)
        now = self._clock.now()
        message = QueuedMessage(
            queue=queue,
            id=uuid.uuid4().hex,
            pop_receipt="",
            text=text,
            dequeue_count=0,
            inserted_at=now,
            next_visible_at=now + max(delay, timedelta(0)),
        )
        self._add(message)

    def _add(self, message: QueuedMessage) -> None:
        with self._lock:
            self._queues.setdefault(message.queue, {})[message.id] = message
            self._seq[message.id] = next(self._order)

    async def receive(
        self, queue: str, *, limit: int, visibility: timedelta
    ) -> list[QueuedMessage]:
        """Up to ``limit`` visible messages, oldest first, each hidden for ``visibility``."""
        now = self._clock.now()
        with self._lock:
            stored = self._queues.get(queue, {})
            visible = sorted(
                (m for m in stored.values() if m.next_visible_at <= now),
                key=lambda m: (m.next_visible_at, self._seq[m.id]),
            )[: max(0, limit)]
            received = []
            for message in visible:
                taken = dataclasses.replace(
                    message,
                    pop_receipt=uuid.uuid4().hex,
                    dequeue_count=message.dequeue_count + 1,
                    next_visible_at=now + visibility,
                )
                stored[message.id] = taken
                received.append(taken)
            return received

    def _current(self, message: QueuedMessage) -> QueuedMessage | None:
        found = self._queues.get(message.queue, {}).get(message.id)
        if found is None or found.pop_receipt != message.pop_receipt:
            return None
        return found

    async def delete(self, message: QueuedMessage) -> bool:
        """Delete a received message; False if it is gone or was received again since."""
        with self._lock:
            if self._current(message) is None:
                return False
            del self._queues[message.queue][message.id]
            return True

    async def update_visibility(
        self, message: QueuedMessage, visibility: timedelta
    ) -> QueuedMessage | None:
        """Hide a received message for ``visibility`` from now; ``None`` if no longer ours."""
        with self._lock:
            found = self._current(message)
            if found is None:
                return None
            updated = dataclasses.replace(
                found,
                pop_receipt=uuid.uuid4().hex,
                next_visible_at=self._clock.now() + visibility,
            )
            self._queues[message.queue][message.id] = updated
            return updated

    async def poison(self, message: QueuedMessage, reason: str) -> bool:
        """Move a received message to its poison queue, keeping ``reason``."""
        target = poison_queue_of(message.queue)
        if target is None:
            raise ValueError(f"queue {message.queue!r} has no poison queue")
        now = self._clock.now()
        with self._lock:
            if self._current(message) is None:
                return False
            del self._queues[message.queue][message.id]
        copy = QueuedMessage(
            queue=target,
            id=uuid.uuid4().hex,
            pop_receipt="",
            text=message.text,
            dequeue_count=0,
            inserted_at=now,
            next_visible_at=now,
            reason=reason,
        )
        self._add(copy)
        return True

    async def close(self) -> None:
        """Nothing to release."""
