"""ACS ``Microsoft.Communication.EmailDeliveryReportReceived`` events as receipts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from .models import DeliveryReceipt, ReceiptStatus

__all__ = ["EMAIL_DELIVERY_REPORT", "EventGridEvent", "receipt_from_event"]

EMAIL_DELIVERY_REPORT = "Microsoft.Communication.EmailDeliveryReportReceived"

# ACS statuses -> ours. "Expanded" (a distribution list was expanded) is not a
# delivery result and is ignored; ACS has no soft bounce, it retries those itself.
_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered",
    "bounced": "bounced_hard",
    "suppressed": "suppressed",
    "failed": "failed",
    "quarantined": "failed",
    "filteredspam": "failed",
}


class EventGridEvent(BaseModel):
    """One event in the Event Grid schema (webhook array item or queue message)."""

    id: str = Field(min_length=1)
    eventType: str
    subject: str = ""
    eventTime: datetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def message_id(self) -> str:
        """The ACS message id the event reports on ('' if none)."""
        return str(self.data.get("messageId") or "")


def receipt_from_event(event: EventGridEvent) -> DeliveryReceipt | None:
    """The receipt an event carries; ``None`` for other event types and non-final statuses."""
    if event.eventType != EMAIL_DELIVERY_REPORT or not event.message_id:
        return None
    status = _STATUS.get(str(event.data.get("status", "")).lower())
    if status is None:
        return None
    details = event.data.get("deliveryStatusDetails")
    detail = details.get("statusMessage") if isinstance(details, dict) else None
    stamp = event.data.get("deliveryAttemptTimestamp") or event.eventTime
    fields: dict[str, Any] = {
        "message_id": event.message_id,
        "status": status,
        "event_id": event.id,
        "detail": detail,
    }
    if stamp:
        fields["timestamp"] = stamp
    return DeliveryReceipt.model_validate(fields)
