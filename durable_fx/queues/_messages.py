"""Queue messages as the Functions host sees them, and the host's queue rules.

The host decodes a message body from Base64 unless host.json says
``"messageEncoding": "none"``; a body that does not decode is poisoned without
an invocation. A failed message is copied to ``<queue>-poison`` once it has
been delivered ``maxDequeueCount`` times, unless the queue is itself a poison
queue or the poison name would be too long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ..storage._base64 import MessageEncoding, decode_body, encode_body

__all__ = [
    "MessageEncoding",
    "QueuedMessage",
    "decode_body",
    "encode_body",
    "poison_queue_of",
    "validate_queue_name",
]

_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]$")
_POISON_SUFFIX = "-poison"


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message received from a queue, held under ``pop_receipt`` until it is visible again.

    ``text`` is the body as stored (Base64 text when the queue is Base64);
    ``dequeue_count`` counts this delivery. ``reason`` is why a poison message
    was poisoned, where the queue can keep it (Azure queues cannot).
    """

    queue: str
    id: str
    pop_receipt: str
    text: str
    dequeue_count: int
    inserted_at: datetime
    next_visible_at: datetime
    expires_at: datetime | None = None
    reason: str | None = None


def validate_queue_name(name: str) -> str:
    """``name`` if Azure Storage accepts it as a queue name; ``ValueError`` naming the rule."""
    if not _QUEUE_NAME.match(name):
        raise ValueError(
            f"invalid queue name {name!r}: use 3-63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit"
        )
    return name


def poison_queue_of(queue: str) -> str | None:
    """The host's poison queue for ``queue``, or ``None`` where the host makes none."""
    if queue.endswith(_POISON_SUFFIX) or len(queue) + len(_POISON_SUFFIX) > 63:
        return None
    return queue + _POISON_SUFFIX
