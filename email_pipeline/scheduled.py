"""The pipeline's scheduled jobs: the daily digest and the sweep of overdue receipts.

``function_app.py`` runs both from timer triggers (``daily_digest``,
``stuck_sweep``), which start the orchestrations below under an instance id
made from the occurrence (``digest-20260107T070000Z``): a timer that fires
again for the same occurrence (the host's past-due run after a crash, a
redelivered ``serve`` timer activity) finds the instance there and starts
nothing. The orchestrations send through ``send_email`` with the instance id
as the send's key, so the sent-ledger keeps each occurrence to one email.

* ``email_digest``: the outcomes of the 24 h before the occurrence, counted
  by status (failures by what the provider reported), and the emails
  overdue now, mailed to the operations address.
* ``email_sweep``: emails waiting for their receipt longer than
  ``EMAIL_STUCK_AFTER_SECONDS`` are re-checked (still waiting, for the same
  send?) and each send found overdue is reported to operations once, in one
  notice per sweep. The email keeps waiting: a late receipt still counts, and
  its own receipt timeout still escalates it. Nothing is ever sent again.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from durable_fx import (
    AsyncDurableClient,
    InstanceExistsError,
    OrchestrationContext,
    OrchestrationState,
    OrchestrationStatus,
    Orchestrator,
)

from .app import app, email_delivery, records, send_email, send_retry
from .models import DeliveryPolicy, EmailRequest, SendCommand, SendResult

__all__ = [
    "DIGEST_WINDOW",
    "DigestReport",
    "JobRequest",
    "OverdueEmail",
    "OverdueScan",
    "SweepReport",
    "claim_overdue",
    "count_outcomes",
    "email_digest",
    "email_sweep",
    "find_overdue",
    "job_instance_id",
    "occurrence_of",
    "start_once",
]

DIGEST_WINDOW = timedelta(hours=24)
LISTED = 200
"""Overdue emails one scan returns (oldest first); a notice names them all, the rest wait."""


class JobRequest(BaseModel):
    """The input of both jobs: fixed when the timer fires, so replays agree."""

    occurrence: datetime
    policy: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    stuck_after_seconds: float = Field(default=3600, gt=0)


class OutcomeWindow(BaseModel):
    start: datetime
    end: datetime


class OutcomeCounts(BaseModel):
    """How the deliveries of a window ended: by status, and the failures by provider report."""

    total: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    failed_by_report: dict[str, int] = Field(default_factory=dict)


class OverdueQuery(BaseModel):
    as_of: datetime
    stuck_after_seconds: float


class OverdueEmail(BaseModel):
    """One email waiting for the receipt of its send ``attempt`` since ``since``."""

    instance_id: str
    attempt: int
    message_id: str
    since: datetime
    recipients: list[str] = Field(default_factory=list)
    subject: str = ""

    @property
    def key(self) -> str:
        """The send that is overdue: a later resend of the email is another one."""
        return f"{self.instance_id}.{self.attempt}"


class OverdueScan(BaseModel):
    total: int
    emails: list[OverdueEmail]
    """The oldest ``LISTED`` of them, oldest first."""


class OverdueClaim(BaseModel):
    sweep_id: str
    emails: list[OverdueEmail]


class DigestReport(BaseModel):
    """What ``email_digest`` returns."""

    start: datetime
    end: datetime
    counts: OutcomeCounts
    overdue: int
    message_id: str


class SweepReport(BaseModel):
    """What ``email_sweep`` returns: how many were overdue, and which this sweep reported."""

    overdue: int
    reported: list[str]
    message_id: str | None = None


# -- starting a job from its timer ------------------------------------------------------


def occurrence_of(schedule_status: Mapping[str, Any] | None, now: datetime) -> datetime:
    """The occurrence a timer call stands for.

    With the schedule monitor, the host (and ``serve``) put this run's
    occurrence in ``ScheduleStatus.Next``, the same on a past-due repeat.
    Without it, the minute the call came in is the best name it has.
    """
    text = str((schedule_status or {}).get("Next") or "")
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        # The host writes local-less times in UTC.
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return now.astimezone(UTC).replace(second=0, microsecond=0)


def job_instance_id(job: str, occurrence: datetime) -> str:
    """``<job>-<UTC time>``: one instance per occurrence (no email's id looks like it)."""
    stamp = occurrence.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    micro = f".{occurrence.microsecond:06d}" if occurrence.microsecond else ""
    return f"{job}-{stamp}{micro}Z"


async def start_once(
    client: AsyncDurableClient, orchestrator: Any, request: JobRequest, instance_id: str
) -> bool:
    """Start the job's instance unless this occurrence has one; True if this call started it."""
    try:
        await client.start(orchestrator, request, instance_id=instance_id)
    except InstanceExistsError:
        return False
    return True


# -- activities (all reading happens here: the orchestrations stay deterministic) --------


@app.activity()
def count_outcomes(window: OutcomeWindow) -> OutcomeCounts:
    """Count the outcomes recorded as ended in the window."""
    outcomes = records().outcomes_between(window.start, window.end)
    by_status = Counter(o.status for o in outcomes)
    failed = Counter(o.receipt_status or "send refused" for o in outcomes if o.status == "failed")
    return OutcomeCounts(
        total=len(outcomes),
        by_status={s: by_status[s] for s in ("delivered", "failed", "escalated", "suppressed")},
        failed_by_report=dict(sorted(failed.items())),
    )


@app.activity()
async def find_overdue(query: OverdueQuery) -> OverdueScan:
    """The running deliveries waiting for a receipt for ``stuck_after_seconds`` or more."""
    cutoff = query.as_of - timedelta(seconds=query.stuck_after_seconds)
    found: list[OverdueEmail] = []
    continuation: str | None = None
    while True:
        page = await app.runtime.client.query(
            status=OrchestrationStatus.RUNNING,
            name=email_delivery.__name__,
            page_size=500,
            continuation=continuation,
        )
        found.extend(e for e in map(_waiting, page.items) if e is not None and e.since <= cutoff)
        continuation = page.continuation
        if continuation is None:
            break
    found.sort(key=lambda e: (e.since, e.instance_id))
    return OverdueScan(total=len(found), emails=found[:LISTED])


@app.activity()
async def claim_overdue(claim: OverdueClaim) -> list[OverdueEmail]:
    """The overdue sends this sweep reports: still waiting, and claimed by no other sweep.

    The claim names the sweep, so a redelivered call returns the same list.
    """
    ledger = records()
    claimed = []
    for email in claim.emails:
        # Re-check: the receipt (or the timeout) may have come since the scan.
        state = await app.runtime.client.get(email.instance_id)
        now = _waiting(state) if state and state.status is OrchestrationStatus.RUNNING else None
        if now is None or now.attempt != email.attempt:
            continue
        if ledger.claim_overdue(email.key, claim.sweep_id) == claim.sweep_id:
            claimed.append(email)
    return claimed


def _waiting(state: OrchestrationState) -> OverdueEmail | None:
    """The receipt wait an ``email_delivery`` instance's custom status shows, if it waits."""
    status = state.custom_status if isinstance(state.custom_status, dict) else {}
    if status.get("stage") != "awaiting receipt" or not status.get("message_id"):
        return None
    since = state.updated_at  # emails started before "since" was in the status
    with contextlib.suppress(KeyError, ValueError):
        moment = datetime.fromisoformat(str(status["since"]))
        since = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    request = (state.input or {}).get("request") if isinstance(state.input, dict) else None
    request = request if isinstance(request, dict) else {}
    return OverdueEmail(
        instance_id=state.instance_id,
        attempt=int(status.get("attempt") or 1),
        message_id=str(status["message_id"]),
        since=since,
        recipients=[str(a) for a in request.get("to") or []],
        subject=str(request.get("subject") or ""),
    )


# -- the orchestrations ----------------------------------------------------------------


@app.orchestrator()
def email_digest(ctx: OrchestrationContext, job: JobRequest) -> Orchestrator[DigestReport]:
    """Mail operations the last 24 h's outcomes and the emails overdue now."""
    window = OutcomeWindow(start=job.occurrence - DIGEST_WINDOW, end=job.occurrence)
    ctx.set_custom_status({"stage": "counting"})
    counts: OutcomeCounts = yield ctx.call_activity(count_outcomes, window)
    scan: OverdueScan = yield ctx.call_activity(find_overdue, _overdue_query(ctx, job))
    notice = _digest_email(job, window, counts, scan)
    ctx.set_custom_status({"stage": "sending"})
    # The instance id names the occurrence: one send key, one email, per occurrence.
    command = SendCommand(instance_id=ctx.instance_id, attempt=1, request=notice)
    sent: SendResult = yield ctx.call_activity(send_email, command, retry=send_retry(job.policy))
    ctx.set_custom_status({"stage": "done"})
    return DigestReport(
        start=window.start,
        end=window.end,
        counts=counts,
        overdue=scan.total,
        message_id=sent.message_id,
    )


@app.orchestrator()
def email_sweep(ctx: OrchestrationContext, job: JobRequest) -> Orchestrator[SweepReport]:
    """Report to operations, once each, the sends waiting too long for their receipt."""
    scan: OverdueScan = yield ctx.call_activity(find_overdue, _overdue_query(ctx, job))
    if not scan.emails:
        return SweepReport(overdue=0, reported=[])
    claim = OverdueClaim(sweep_id=ctx.instance_id, emails=scan.emails)
    claimed: list[OverdueEmail] = yield ctx.call_activity(claim_overdue, claim)
    if not claimed:
        return SweepReport(overdue=scan.total, reported=[])
    notice = _overdue_email(job, claimed)
    command = SendCommand(instance_id=ctx.instance_id, attempt=1, request=notice)
    sent: SendResult = yield ctx.call_activity(send_email, command, retry=send_retry(job.policy))
    return SweepReport(
        overdue=scan.total,
        reported=[e.instance_id for e in claimed],
        message_id=sent.message_id,
    )


def _overdue_query(ctx: OrchestrationContext, job: JobRequest) -> OverdueQuery:
    # Orchestration time: "now" as this run first saw it, the same on every replay.
    return OverdueQuery(as_of=ctx.current_utc_datetime, stuck_after_seconds=job.stuck_after_seconds)


def _digest_email(
    job: JobRequest, window: OutcomeWindow, counts: OutcomeCounts, scan: OverdueScan
) -> EmailRequest:
    lines = [
        f"Email outcomes from {_utc(window.start)} to {_utc(window.end)}: {counts.total} in all.",
        "",
        *(f"  {status}: {n}" for status, n in counts.by_status.items()),
    ]
    if counts.failed_by_report:
        lines += ["", "Failures by what the provider reported:"]
        lines += [f"  {report}: {n}" for report, n in counts.failed_by_report.items()]
    lines += ["", f"Waiting for a receipt for over {job.stuck_after_seconds:g} s: {scan.total}"]
    lines += _listed(scan.emails, scan.total)
    return _to_operations(job, f"[digest] email outcomes to {_utc(window.end)}", lines)


def _overdue_email(job: JobRequest, emails: list[OverdueEmail]) -> EmailRequest:
    lines = [
        f"{len(emails)} email(s) have waited over {job.stuck_after_seconds:g} s for a "
        "delivery receipt. They keep waiting (a late receipt still counts) and escalate at "
        f"their receipt timeout ({job.policy.receipt_timeout_seconds:g} s); none is sent again.",
        "Check the provider's delivery logs and the delivery webhook.",
        "",
        *_listed(emails, len(emails)),
    ]
    return _to_operations(job, f"[overdue] {len(emails)} email(s) without a receipt", lines)


def _listed(emails: list[OverdueEmail], total: int) -> list[str]:
    lines = [
        f"  {e.instance_id} (send {e.attempt}, {e.message_id}) since {_utc(e.since)}: "
        f"{e.subject[:80]!r} to {', '.join(e.recipients)[:200]}"
        for e in emails
    ]
    if total > len(emails):
        lines.append(f"  ... and {total - len(emails)} more")
    return lines


def _to_operations(job: JobRequest, subject: str, lines: list[str]) -> EmailRequest:
    address = job.policy.operations_address
    return EmailRequest.model_validate(
        {"from": address, "to": [address], "subject": subject, "text": "\n".join(lines)}
    )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
