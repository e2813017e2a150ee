"""The provider interface and the two kinds of failure the orchestrator tells apart."""

from __future__ import annotations

import hashlib
from typing import Protocol

from ..models import EmailRequest, SendResult

__all__ = ["EmailProvider", "PermanentProviderError", "TransientProviderError", "message_id_for"]


class TransientProviderError(Exception):
    """The provider may accept the message later (timeouts, 4xx SMTP, throttling): retry."""


class PermanentProviderError(Exception):
    """The provider will never accept this message (bad address, auth, 5xx): fail fast."""


class EmailProvider(Protocol):
    """Sends one message; raises one of the two errors above when it cannot."""

    @property
    def name(self) -> str:
        """Short provider name (recorded in ``SendResult.provider``)."""
        ...

    def send(self, request: EmailRequest, idempotency_key: str) -> SendResult:
        """Hand the message over; ``idempotency_key`` is stable for every repeat of this send."""
        ...


def message_id_for(idempotency_key: str, domain: str) -> str:
    """A deterministic RFC 5322 Message-ID for a send (the same for every repeat of it)."""
    # Hash: instance ids may hold characters a Message-ID's local part refuses.
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"
