"""The email pipeline: send, wait for the delivery receipt, retry, escalate, record.

The reference app of durable_fx. ``email_pipeline.app`` holds the ``DurableApp``
with the ``email_delivery`` orchestrator and its activities; ``function_app.py``
at the repository root adds the HTTP, webhook and queue entry points.
"""

from __future__ import annotations

from .models import (
    DeliveryOutcome,
    DeliveryPolicy,
    DeliveryReceipt,
    EmailJob,
    EmailRequest,
    ReceiptStatus,
    SendCommand,
    SendResult,
)

__all__ = [
    "DeliveryOutcome",
    "DeliveryPolicy",
    "DeliveryReceipt",
    "EmailJob",
    "EmailRequest",
    "ReceiptStatus",
    "SendCommand",
    "SendResult",
]
