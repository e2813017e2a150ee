"""The ``QueueBackend`` protocol: the few queue operations the Functions host uses."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable

from ._messages import QueuedMessage

__all__ = ["QueueBackend"]


@runtime_checkable
class QueueBackend(Protocol):
    """Named queues with visibility timeouts, dequeue counts and poison queues.

    Messages are stored as text exactly as sent; encoding (Base64) is the
    caller's business, as it is the host's. Every method is safe to call from
    any thread or event loop.
    """

    async def send(self, queue: str, text: str, *, delay: timedelta = timedelta(0)) -> None:
        """Add a message, invisible for ``delay``."""
        ...

    async def receive(
        self, queue: str, *, limit: int, visibility: timedelta
    ) -> list[QueuedMessage]:
        """Up to ``limit`` visible messages, oldest first, each hidden for ``visibility``.

        Each receive counts a delivery (``dequeue_count``) and hands out a new
        pop receipt; only the latest receipt may delete or update the message.
        """
        ...

    async def delete(self, message: QueuedMessage) -> bool:
        """Delete a received message; False if it is gone or was received again since."""
        ...

    async def update_visibility(
        self, message: QueuedMessage, visibility: timedelta
    ) -> QueuedMessage | None:
        """Hide a received message for ``visibility`` from now (0: visible at once).

        Returns the message with its new pop receipt, or ``None`` if it is gone
        or was received again since.
        """
        ...

    async def poison(self, message: QueuedMessage, reason: str) -> bool:
        """Move a received message to its poison queue, as the host does after too many tries.

        The poison copy keeps the original text; ``reason`` is kept where the
        backend can (a column in SQLite, memory) and logged by the caller.
        Returns False if the message was gone or received again since.
        """
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
