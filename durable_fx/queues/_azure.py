"""``AzureQueues``: Azure Storage queues (or Azurite), as the Functions host reads them.

The synchronous SDK runs on worker threads: it belongs to no event loop, so
one backend serves the Functions worker's loop, ``serve``'s loop and plain
threads alike. Queues are created on first use. Bodies are stored exactly as
given (``NoEncodePolicy``): Base64 is the caller's choice, as it is the host's.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient

from ..storage.azure import AzureSettings, sync_credential
from ._messages import QueuedMessage, poison_queue_of, validate_queue_name

__all__ = ["AzureQueues"]

_MAX_DELAY = timedelta(days=7) - timedelta(seconds=1)


def _seconds(delay: timedelta, *, minimum: int = 0) -> int:
    capped = min(max(delay, timedelta(0)), _MAX_DELAY)
    return max(minimum, math.ceil(capped.total_seconds()))


class AzureQueues:
    """A ``QueueBackend`` on the queue service of an Azure Storage account."""

    def __init__(self, settings: AzureSettings) -> None:
        self.settings = settings
        self._credential = sync_credential(settings)
        self._lock = threading.Lock()
        self._clients: dict[str, QueueClient] = {}

    def _client(self, queue: str) -> QueueClient:
        with self._lock:
            client = self._clients.get(queue)
            if client is not None:
                return client
        validate_queue_name(queue)
        client = QueueClient(
            self.settings.endpoint("queue"),
            queue,
            credential=self._credential,
            connection_timeout=10,
            read_timeout=30,
            retry_total=3,
        )
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        with self._lock:
            return self._clients.setdefault(queue, client)

    async def send(self, queue: str, text: str, *, delay: timedelta = timedelta(0)) -> None:
        """Add a message (it never expires), invisible for ``delay`` (at most 7 days)."""

        def send() -> None:
            self._client(queue).send_message(
                text, visibility_timeout=_seconds(delay), time_to_live=-1
            )

        await asyncio.to_thread(send)

    async def receive(
        self, queue: str, *, limit: int, visibility: timedelta
    ) -> list[QueuedMessage]:
        """Up to ``limit`` (at most 32) visible messages, each hidden for ``visibility``."""
        count = max(1, min(32, limit))

        def receive() -> list[QueuedMessage]:
            pager = self._client(queue).receive_messages(
                messages_per_page=count,
                max_messages=count,
                visibility_timeout=_seconds(visibility, minimum=1),
            )
            return [_message(queue, m) for m in pager]

        return await asyncio.to_thread(receive)

    async def delete(self, message: QueuedMessage) -> bool:
        """Delete a received message; False if it is gone or was received again since."""

        def delete() -> bool:
            try:
                self._client(message.queue).delete_message(message.id, message.pop_receipt)
            except (ResourceNotFoundError, HttpResponseError) as error:
                if _lost(error):
                    return False
                raise
            return True

        return await asyncio.to_thread(delete)

    async def update_visibility(
        self, message: QueuedMessage, visibility: timedelta
    ) -> QueuedMessage | None:
        """Hide a received message for ``visibility`` from now; ``None`` if no longer ours."""

        def update() -> QueuedMessage | None:
            try:
                updated = self._client(message.queue).update_message(
                    message.id, message.pop_receipt, visibility_timeout=_seconds(visibility)
                )
            except (ResourceNotFoundError, HttpResponseError) as error:
                if _lost(error):
                    return None
                raise
            return QueuedMessage(
                queue=message.queue,
                id=message.id,
                pop_receipt=updated.pop_receipt or message.pop_receipt,
                text=message.text,
                dequeue_count=message.dequeue_count,
                inserted_at=message.inserted_at,
                next_visible_at=updated.next_visible_on or datetime.now(UTC) + visibility,
                expires_at=message.expires_at,
            )

        return await asyncio.to_thread(update)

    async def poison(self, message: QueuedMessage, reason: str) -> bool:
        """Copy a message to its poison queue and delete it, as the host does.

        The copy is the original text, so a function triggered by the poison
        queue sees what the host would give it; ``reason`` goes to the caller's log.
        """
        target = poison_queue_of(message.queue)
        if target is None:
            raise ValueError(f"queue {message.queue!r} has no poison queue")
        await self.send(target, message.text)
        return await self.delete(message)

    async def close(self) -> None:
        """Close the clients."""

        def close() -> None:
            with self._lock:
                clients = list(self._clients.values())
                self._clients.clear()
            for client in clients:
                client.close()

        await asyncio.to_thread(close)


def _lost(error: Exception) -> bool:
    """Whether an error means the message is gone (404) or has a newer pop receipt (400)."""
    status = getattr(error, "status_code", None)
    return isinstance(error, ResourceNotFoundError) or status in (400, 404)


def _message(queue: str, message: Any) -> QueuedMessage:
    now = datetime.now(UTC)
    return QueuedMessage(
        queue=queue,
        id=str(message.id),
        pop_receipt=str(message.pop_receipt or ""),
        text=str(message.content or ""),
        dequeue_count=int(message.dequeue_count or 1),
        inserted_at=message.inserted_on or now,
        next_visible_at=message.next_visible_on or now,
        expires_at=message.expires_on,
    )
