"""The ``DurableApp`` of the pipeline: ``email_delivery`` and its activities.

``function_app.py`` imports ``app`` from here and adds the entry points.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from durable_fx import (
    ActivityContext,
    DurableApp,
    EventTimeoutError,
    InstanceNotFoundError,
    OrchestrationContext,
    Orchestrator,
    RetryPolicy,
    TaskFailedError,
    when_all,
)

from .models import (
    RETRYABLE,
    DeliveryOutcome,
    DeliveryPolicy,
    DeliveryReceipt,
    EmailJob,
    EmailRequest,
    SendCommand,
    SendResult,
)
from .providers import EmailProvider, open_provider
from .records import EmailRecords, open_records
from .suppression import Suppression, SuppressionList, suppression_of

__all__ = [
    "UnknownMessageError",
    "app",
    "email_delivery",
    "escalate",
    "instance_for_message",
    "record_outcome",
    "records",
    "send_email",
    "send_retry",
]

log = logging.getLogger("email_pipeline")

app = DurableApp()
app.entity(name="suppression")(SuppressionList)

_lock = threading.Lock()
_records: dict[int, EmailRecords] = {}


def records() -> EmailRecords:
    """The pipeline's records next to the app's current store (opened once per store)."""
    store = app.runtime.store
    with _lock:
        found = _records.get(id(store))
        if found is None:
            found = _records[id(store)] = open_records(store, app.settings.hub)
        return found


class UnknownMessageError(InstanceNotFoundError):
    """A receipt names a message no send has recorded (yet).

    An ``InstanceNotFoundError``, so event sources treat it as retryable: the
    signed webhook answers 404, an Event Grid batch 503 (Event Grid delivers it
    again; the batch's other events are raised already), a queue message is
    retried by the host. A receipt can beat the send's own bookkeeping by a
    few milliseconds; dropping it would leave the email waiting for 24 h.
    """

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.args = (f"no email was sent with message id {message_id!r} (yet); retry later",)


def instance_for_message(message_id: str) -> str:
    """The instance that sent ``message_id`` (``UnknownMessageError`` if none did)."""
    found = records().instance_for(message_id) if message_id else None
    if found is None:
        raise UnknownMessageError(message_id)
    return found


def provider() -> EmailProvider:
    """The provider the settings choose (read per send, so settings changes apply)."""
    return open_provider()


class Escalation(DeliveryOutcome):
    """What ``escalate`` reports: the outcome so far and who to notify."""

    operations_address: str
    recipients: list[str]
    subject: str


@app.activity()
def send_email(command: SendCommand, context: ActivityContext) -> SendResult:
    """Send once per (instance, attempt): a repeat returns the first recorded result."""
    key = command.idempotency_key
    ledger = records()
    earlier = ledger.sent(key)
    if earlier is not None:
        log.info(
            "send %s already done (delivery %d): not sending again", key, context.delivery_count
        )
        return earlier
    result = provider().send(command.request, key)
    # A crash right here (accepted, not yet recorded) is the one window left: the
    # retried activity sends again, with the same Message-ID / ACS operation id.
    return ledger.record_sent(key, result, command.instance_id)


@app.activity()
def escalate(escalation: Escalation) -> None:
    """No receipt in time: tell operations (by email, best effort) and log it."""
    log.warning(
        "escalating %s (%s to %s): %s",
        escalation.instance_id,
        escalation.subject,
        ", ".join(escalation.recipients),
        escalation.detail,
    )
    notice = EmailRequest.model_validate(
        {
            "from": escalation.operations_address,
            "to": [escalation.operations_address],
            "subject": f"[escalation] no delivery receipt for {escalation.instance_id}",
            "text": f"{escalation.subject!r} to {', '.join(escalation.recipients)}: "
            f"{escalation.detail}",
        }
    )
    command = SendCommand(
        instance_id=f"{escalation.instance_id}.escalation", attempt=1, request=notice
    )
    ledger = records()
    if ledger.sent(command.idempotency_key) is None:
        try:
            result = provider().send(notice, command.idempotency_key)
        except Exception as error:  # the log line above is the record; the email is a courtesy
            log.warning("escalation email for %s not sent: %s", escalation.instance_id, error)
            return
        ledger.record_sent(command.idempotency_key, result, command.instance_id)


@app.activity()
def record_outcome(outcome: DeliveryOutcome) -> DeliveryOutcome:
    """Write the outcome to the outcomes table."""
    records().record_outcome(outcome)
    return outcome


def _transient(error: TaskFailedError) -> bool:
    # Deterministic (replayed): decided by the remote exception's type name alone.
    return error.error_type.endswith("TransientProviderError")


def send_retry(policy: DeliveryPolicy) -> RetryPolicy:
    """How ``send_email`` is retried: back-off on transient provider errors, none on others."""
    return RetryPolicy(
        first_interval=timedelta(seconds=policy.send_retry_first_seconds),
        backoff=2.0,
        max_attempts=policy.send_retry_attempts,
        handle=_transient,
    )


@app.orchestrator(events={"DeliveryReceipt": DeliveryReceipt})
def email_delivery(ctx: OrchestrationContext, job: EmailJob) -> Orchestrator[DeliveryOutcome]:
    """Send, wait for the receipt, resend soft bounces, escalate silence, record the outcome."""
    policy = job.policy
    retry = send_retry(policy)
    outcome: DeliveryOutcome | None = None
    sent: SendResult | None = None
    attempt = 0
    # Emails started before the suppression list existed replay without it.
    checks_suppression = ctx.is_patched("suppression-list")
    if checks_suppression:
        ctx.set_custom_status({"stage": "checking suppressions"})
        blocked = yield from _suppressed(ctx, job.request)
        if blocked:
            detail = f"suppressed: {', '.join(blocked)}"
            outcome = _outcome(ctx, "suppressed", 0, None, None, detail)
    while outcome is None:
        attempt += 1
        ctx.set_custom_status({"stage": "sending", "attempt": attempt})
        command = SendCommand(instance_id=ctx.instance_id, attempt=attempt, request=job.request)
        try:
            sent = yield ctx.call_activity(send_email, command, retry=retry)
        except TaskFailedError as error:
            outcome = _outcome(ctx, "failed", attempt, None, None, error.message)
            break
        assert sent is not None
        # "since": the sweep and the digest tell how long an email has waited from it.
        ctx.set_custom_status(
            {
                "stage": "awaiting receipt",
                "attempt": attempt,
                "message_id": sent.message_id,
                "since": ctx.current_utc_datetime.isoformat(),
            }
        )
        receipt = yield from _receipt_for(ctx, sent, attempt, policy.receipt_timeout_seconds)
        if receipt is None:
            ctx.set_custom_status({"stage": "escalated", "attempt": attempt})
            detail = f"no delivery receipt within {policy.receipt_timeout_seconds:g} s"
            outcome = _outcome(ctx, "escalated", attempt, sent, None, detail)
            escalation = Escalation(
                **outcome.model_dump(),
                operations_address=policy.operations_address,
                recipients=list(job.request.to),
                subject=job.request.subject,
            )
            yield ctx.call_activity(escalate, escalation)
        elif receipt.status == "delivered":
            outcome = _outcome(ctx, "delivered", attempt, sent, receipt, receipt.detail)
        elif receipt.status in RETRYABLE and attempt < policy.max_sends:
            delay = policy.resend_backoff_seconds * 2 ** (attempt - 1)
            ctx.set_custom_status(
                {"stage": "retrying", "attempt": attempt, "after": receipt.status, "wait": delay}
            )
            yield ctx.create_timer(timedelta(seconds=delay))
        else:
            detail = receipt.detail or f"{receipt.status} after {attempt} send(s)"
            outcome = _outcome(ctx, "failed", attempt, sent, receipt, detail)
            if checks_suppression and receipt.status == "bounced_hard":
                _suppress_bounced(ctx, job.request, detail)
    ctx.set_custom_status({"stage": "recording", "status": outcome.status})
    yield ctx.call_activity(record_outcome, outcome)
    ctx.set_custom_status({"stage": "done", "status": outcome.status, "sends": outcome.sends})
    return outcome


def _suppressed(ctx: OrchestrationContext, request: EmailRequest) -> Orchestrator[list[str]]:
    """The recipients on the suppression list (asked of their entities at once)."""
    addresses = sorted({address.lower() for address in [*request.to, *request.cc]})
    found = yield when_all(
        [
            ctx.call_entity(suppression_of(a), "get", result_type=Suppression | None)
            for a in addresses
        ]
    )
    return [address for address, record in zip(addresses, found, strict=True) if record]


def _suppress_bounced(ctx: OrchestrationContext, request: EmailRequest, detail: str) -> None:
    """A hard bounce suppresses the recipient, if there was just one (else whose was it?)."""
    recipients = {address.lower() for address in [*request.to, *request.cc]}
    if len(recipients) != 1:
        ctx.logger.info("a hard bounce of %d recipients suppresses none", len(recipients))
        return
    record = Suppression(reason=detail, since=ctx.current_utc_datetime, instance_id=ctx.instance_id)
    ctx.signal_entity(suppression_of(recipients.pop()), "suppress", record)


def _receipt_for(
    ctx: OrchestrationContext, sent: SendResult, attempt: int, timeout_seconds: float
) -> Orchestrator[DeliveryReceipt | None]:
    """The receipt for ``sent``; None on timeout.

    Late receipts of earlier sends are skipped; malformed ones are counted in
    the custom status (``malformed_receipts``) and skipped too.
    """
    since = ctx.current_utc_datetime
    deadline = since + timedelta(seconds=timeout_seconds)
    malformed = 0
    while True:
        left = deadline - ctx.current_utc_datetime
        if left <= timedelta(0):
            return None
        try:
            receipt: DeliveryReceipt = yield ctx.wait_for_event(
                "DeliveryReceipt", timeout=left, result_type=DeliveryReceipt
            )
        except EventTimeoutError:
            return None
        except TaskFailedError as error:
            if error.error_type != "SerializationError":
                raise
            # Data that is not a receipt (raised by hand, a buggy relay) must not end
            # the email: note it where operators look, and keep waiting for the real one.
            malformed += 1
            ctx.logger.warning("ignoring a malformed DeliveryReceipt: %s", error.message)
            ctx.set_custom_status(
                {
                    "stage": "awaiting receipt",
                    "attempt": attempt,
                    "message_id": sent.message_id,
                    "since": since.isoformat(),
                    "malformed_receipts": malformed,
                    "last_malformed": error.message[:500],
                }
            )
            continue
        if receipt.message_id == sent.message_id:
            return receipt
        ctx.logger.info("skipping a receipt for %s (an earlier send)", receipt.message_id)


def _outcome(
    ctx: OrchestrationContext,
    status: str,
    sends: int,
    sent: SendResult | None,
    receipt: DeliveryReceipt | None,
    detail: str | None,
) -> DeliveryOutcome:
    return DeliveryOutcome.model_validate(
        {
            "instance_id": ctx.instance_id,
            "status": status,
            "sends": sends,
            "message_id": sent.message_id if sent else None,
            "receipt_status": receipt.status if receipt else None,
            "detail": detail,
            "ended_at": ctx.current_utc_datetime,
        }
    )
