"""The pipeline's data: requests, send results, receipts and outcomes (pydantic)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

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

ReceiptStatus = Literal[
    "delivered", "bounced_soft", "bounced_hard", "deferred", "failed", "suppressed"
]
"""What a provider says happened to a message."""

# A plain address check (no extra dependency): one @, and nothing that separates
# addresses or ends a header line: "a,victim@evil.example" would be two recipients.
_ATOM = r"[^@\s<>,;:\"()\[\]\\\x00-\x1f\x7f-\x9f]+"
_ADDRESS = re.compile(f"{_ATOM}@{_ATOM}")
# str.splitlines() boundaries (what the email package refuses in a header) and other controls.
_NOT_ONE_LINE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _plain_address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError(
            "not a plain address local@domain (no spaces, commas, semicolons, colons, quotes, "
            "brackets or control characters)"
        )
    return value


def _one_line(value: str) -> str:
    if _NOT_ONE_LINE.search(value):
        raise ValueError("must be one line: no CR, LF or other control characters")
    return value


Address = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=320), AfterValidator(_plain_address)
]
HeaderText = Annotated[
    str, StringConstraints(min_length=1, max_length=998), AfterValidator(_one_line)
]

# Statuses worth another send after a back-off; every other non-delivered one is final.
RETRYABLE: frozenset[str] = frozenset({"bounced_soft", "deferred"})


class EmailRequest(BaseModel):
    """One email to deliver (the body of ``POST /api/emails``)."""

    from_: Address = Field(alias="from")
    to: list[Address] = Field(min_length=1)
    cc: list[Address] = Field(default_factory=list)
    subject: HeaderText
    text: str | None = None
    html: str | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    model_config = {"populate_by_name": True}

    @model_validator(mode="after")
    def _has_a_body(self) -> EmailRequest:
        if not self.text and not self.html:
            raise ValueError("give a text or an html body (or both)")
        return self


class DeliveryPolicy(BaseModel):
    """Timings of one delivery, fixed when it starts so that replays agree."""

    receipt_timeout_seconds: float = Field(default=24 * 3600, gt=0)
    max_sends: int = Field(default=3, ge=1)
    resend_backoff_seconds: float = Field(default=300, gt=0)
    send_retry_first_seconds: float = Field(default=5, gt=0)
    send_retry_attempts: int = Field(default=5, ge=1)
    operations_address: str = "ops@example.com"


class EmailJob(BaseModel):
    """The input of ``email_delivery``."""

    request: EmailRequest
    policy: DeliveryPolicy = Field(default_factory=DeliveryPolicy)


class SendCommand(BaseModel):
    """The input of ``send_email``: the email and the send's deterministic identity."""

    instance_id: str
    attempt: int = Field(ge=1)
    request: EmailRequest

    @property
    def idempotency_key(self) -> str:
        """Stable across replays, redeliveries and retries of this send."""
        return f"{self.instance_id}.{self.attempt}"


class SendResult(BaseModel):
    """What the provider answered when it accepted a message."""

    message_id: str
    provider: str
    idempotency_key: str


class DeliveryReceipt(BaseModel):
    """A provider's report on one message (the ``DeliveryReceipt`` event's data)."""

    message_id: str = Field(min_length=1)
    status: ReceiptStatus
    event_id: str = Field(min_length=1)
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detail: str | None = None


class DeliveryOutcome(BaseModel):
    """How a delivery ended; recorded in the outcomes table and returned."""

    instance_id: str
    status: Literal["delivered", "failed", "escalated", "suppressed"]
    sends: int
    message_id: str | None = None
    receipt_status: ReceiptStatus | None = None
    detail: str | None = None
    ended_at: datetime | None = None
    """When the delivery ended (orchestration time); outcomes of older code have none."""
