"""Email providers behind one interface, chosen by the ``EMAIL_PROVIDER`` setting."""

from __future__ import annotations

from .base import EmailProvider, PermanentProviderError, TransientProviderError, message_id_for
from .factory import open_provider

__all__ = [
    "EmailProvider",
    "PermanentProviderError",
    "TransientProviderError",
    "message_id_for",
    "open_provider",
]
