"""The ``email_delivery`` orchestration on the test kit, with its real timings.

A day-long receipt timeout, resends after soft bounces and retries of a
refusing SMTP server run on ``durable_fx.testing.TestEnvironment``: time skips
to each timer while the test waits, so each scenario takes milliseconds and
the history still shows the hours it covers. The activities that talk to the
outside (SMTP, the records) are replaced by fakes that note when they ran.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from durable_fx import (
    ActivityContext,
    OrchestrationContext,
    OrchestrationState,
    OrchestrationStatus,
    Orchestrator,
    Registry,
)
from durable_fx.history import PatchApplied, TimerCreated
from durable_fx.testing import TestEnvironment
from email_pipeline.app import Escalation, app, email_delivery, escalate, record_outcome, send_email
from email_pipeline.models import (
    DeliveryOutcome,
    DeliveryPolicy,
    DeliveryReceipt,
    EmailJob,
    EmailRequest,
    ReceiptStatus,
    SendCommand,
    SendResult,
)
from email_pipeline.providers import TransientProviderError
from email_pipeline.suppression import SuppressionList, suppression_of

DAY = timedelta(hours=24)


class FakeMail:
    """Stands in for the provider and the records: notes every call and when it came.

    ``refusals`` sends fail with a ``TransientProviderError`` first (a busy
    SMTP server); ``receipts`` are the statuses the provider reports for the
    accepted sends, in order, each raised as soon as its send is accepted
    (none left: the provider stays silent).
    """

    def __init__(
        self, env: TestEnvironment, *, refusals: int = 0, receipts: tuple[ReceiptStatus, ...] = ()
    ) -> None:
        self._env = env
        self._refusals = refusals
        self._receipts = iter(receipts)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.tries: list[tuple[datetime, int]] = []  # (when, the send's attempt)
        self.sent: list[tuple[datetime, SendResult]] = []
        self.escalations: list[tuple[datetime, Escalation]] = []
        self.outcomes: list[DeliveryOutcome] = []
        env.override(send_email, self.send)
        env.override(escalate, self.escalate)
        env.override(record_outcome, self.record)

    def send(self, command: SendCommand, context: ActivityContext) -> SendResult:
        with self._lock:
            self.tries.append((self._env.now(), context.attempt))
            if self._refusals > 0:
                self._refusals -= 1
                raise TransientProviderError("451 4.3.0 try again later")
            result = SendResult(
                message_id=f"<{next(self._ids)}@fake.example>",
                provider="fake",
                idempotency_key=command.idempotency_key,
            )
            self.sent.append((self._env.now(), result))
            status = next(self._receipts, None)
        if status is not None:
            receipt = DeliveryReceipt(
                message_id=result.message_id, status=status, event_id=f"receipt-{result.message_id}"
            )
            self._env.sync_client.raise_event(command.instance_id, "DeliveryReceipt", receipt)
        return result

    def escalate(self, escalation: Escalation) -> None:
        self.escalations.append((self._env.now(), escalation))

    def record(self, outcome: DeliveryOutcome) -> DeliveryOutcome:
        self.outcomes.append(outcome)
        return outcome


@pytest.fixture
def env() -> Iterator[TestEnvironment]:
    with TestEnvironment(app) as running:
        yield running


def job(**policy: Any) -> EmailJob:
    request = EmailRequest.model_validate(
        {
            "from": "shop@example.com",
            "to": ["ada@example.com"],
            "subject": "Your order",
            "text": ".",
        }
    )
    return EmailJob(request=request, policy=DeliveryPolicy(**policy))


def deliver(env: TestEnvironment, email: EmailJob) -> tuple[OrchestrationState, DeliveryOutcome]:
    began = env.now()
    instance_id = env.sync_client.start(email_delivery, email)
    state = env.sync_client.wait(instance_id, timeout=30)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    recorded = env.sync_client.get(instance_id, history=True)
    assert recorded is not None
    assert recorded.created_at == began
    return recorded, DeliveryOutcome.model_validate(state.output)


def offsets(times: list[datetime], start: datetime) -> list[float]:
    return [(moment - start).total_seconds() for moment in times]


def test_no_receipt_in_24_hours_escalates(env: TestEnvironment) -> None:
    mail = FakeMail(env)  # the provider accepts the email and never reports back
    state, outcome = deliver(env, job())

    assert outcome.status == "escalated"
    assert outcome.sends == 1
    assert outcome.detail == "no delivery receipt within 86400 s"
    [(escalated_at, escalation)] = mail.escalations
    assert escalated_at - state.created_at == DAY
    assert escalation.operations_address == "ops@example.com"
    assert (escalation.recipients, escalation.subject) == (["ada@example.com"], "Your order")
    assert mail.outcomes == [outcome]
    assert state.history is not None
    [timeout] = [e for e in state.history if isinstance(e, TimerCreated)]
    assert (timeout.purpose, timeout.fire_at - timeout.timestamp) == ("event-timeout", DAY)
    assert state.updated_at - state.created_at == DAY


def test_three_soft_bounces_are_resent_after_5_10_and_20_minutes(env: TestEnvironment) -> None:
    mail = FakeMail(env, receipts=("bounced_soft", "bounced_soft", "bounced_soft", "delivered"))
    state, outcome = deliver(env, job(max_sends=4, resend_backoff_seconds=300))

    assert outcome.status == "delivered"
    assert (outcome.sends, outcome.message_id) == (4, "<4@fake.example>")
    sent_at = [moment for moment, _ in mail.sent]
    # Each resend waits twice as long as the one before: 300 s, 600 s, 1200 s.
    assert offsets(sent_at, state.created_at) == [0, 300, 900, 2100]
    assert mail.escalations == []
    assert mail.outcomes == [outcome]


def test_a_refusing_smtp_server_is_retried_with_back_off(env: TestEnvironment) -> None:
    mail = FakeMail(env, refusals=3, receipts=("delivered",))
    state, outcome = deliver(env, job(send_retry_first_seconds=5))

    assert outcome.status == "delivered"
    assert outcome.sends == 1  # one email: its send took four tries
    # The retry policy's waits: 5 s, then doubled each time.
    assert offsets([moment for moment, _ in mail.tries], state.created_at) == [0, 5, 15, 35]
    assert [attempt for _, attempt in mail.tries] == [1, 2, 3, 4]
    assert state.history is not None
    waits = [e.fire_at - e.timestamp for e in state.history if isinstance(e, TimerCreated)]
    assert waits[:3] == [timedelta(seconds=s) for s in (5, 10, 20)]


def test_a_hard_bounce_fails_without_resending(env: TestEnvironment) -> None:
    mail = FakeMail(env, receipts=("bounced_hard",))
    _, outcome = deliver(env, job())
    assert (outcome.status, outcome.sends, outcome.receipt_status) == ("failed", 1, "bounced_hard")
    assert len(mail.sent) == 1
    assert mail.escalations == []


def test_a_hard_bounce_suppresses_the_address_until_an_operator_lifts_it(
    env: TestEnvironment,
) -> None:
    mail = FakeMail(env, receipts=("bounced_hard", "delivered"))
    deliver(env, job())
    ada = suppression_of("Ada@Example.com")
    entry = env.sync_client.get_entity(ada)
    assert entry is not None and "bounced_hard" in entry.state["reason"]
    _, later = deliver(env, job())
    assert (later.status, later.sends) == ("suppressed", 0)
    assert later.detail == "suppressed: ada@example.com"
    assert len(mail.sent) == 1  # the second email was never sent
    assert [o.status for o in mail.outcomes] == ["failed", "suppressed"]
    env.sync_client.signal_entity(ada, "lift")
    _, after_lift = deliver(env, job())
    assert after_lift.status == "delivered" and len(mail.sent) == 2


def test_a_hard_bounce_to_several_recipients_suppresses_none(env: TestEnvironment) -> None:
    FakeMail(env, receipts=("bounced_hard",))
    email = job()
    email.request.cc.append("bob@example.com")
    _, outcome = deliver(env, email)
    assert outcome.status == "failed"
    assert env.sync_client.get_entity(suppression_of("ada@example.com")) is None
    assert env.sync_client.get_entity(suppression_of("bob@example.com")) is None


def test_the_first_resend_waits_five_minutes_to_the_second() -> None:
    soft_bounce = {"status": "bounced_soft", "event_id": "receipt-1"}
    with TestEnvironment(app, time_skipping=False) as env:
        mail = FakeMail(env)  # receipts come from the test, step by step
        instance_id = env.sync_client.start(email_delivery, job())
        env.sleep_sync(timedelta(0))  # sent; waiting for its receipt
        [(_, first)] = mail.sent
        receipt = {**soft_bounce, "message_id": first.message_id}
        env.sync_client.raise_event(instance_id, "DeliveryReceipt", receipt)
        env.sleep_sync(timedelta(minutes=4, seconds=59))
        assert len(mail.sent) == 1
        env.sleep_sync(timedelta(seconds=1))
        assert len(mail.sent) == 2
        state = env.sync_client.get(instance_id)
    assert state is not None and state.custom_status["stage"] == "awaiting receipt"


def test_a_bound_method_or_a_lambda_can_stand_in() -> None:
    escalations: list[Any] = []
    with TestEnvironment(app) as env:
        FakeMail(env)
        env.override(escalate, escalations.append)
        env.override(record_outcome, lambda outcome: outcome)
        state = env.sync_client.wait(env.sync_client.start(email_delivery, job()))
    assert state.output["status"] == "escalated"
    assert [e.subject for e in escalations] == ["Your order"]


# -- a deploy while emails wait for their receipts -----------------------------------------------


def _deployed(*, patched: bool, checked: list[str], notified: list[str]) -> Registry:
    """The pipeline after a deploy: a recipient check before the send, a notice after the outcome.

    The check runs where parked emails have history already, so it must be
    behind ``is_patched``; the notice runs after the receipt, where no parked
    email has history yet, so it needs no patch.
    """
    v2 = Registry()
    for activity in (send_email, escalate, record_outcome):
        v2.activity()(activity)
    v2.entity(name="suppression")(SuppressionList)

    @v2.activity()
    def check_recipients(job: EmailJob) -> None:
        checked.append(job.request.subject)

    @v2.activity()
    def notify_sender(outcome: DeliveryOutcome) -> None:
        notified.append(outcome.instance_id)

    @v2.orchestrator(name="email_delivery", events={"DeliveryReceipt": DeliveryReceipt})
    def email_delivery_v2(ctx: OrchestrationContext, email: EmailJob) -> Orchestrator[Any]:
        if not patched or ctx.is_patched("check-recipients"):
            yield ctx.call_activity(check_recipients, email)
        outcome = yield from email_delivery(ctx, email)  # the pipeline's own flow
        yield ctx.call_activity(notify_sender, outcome)
        return outcome

    return v2


def _parked(env: TestEnvironment, instance_id: str) -> str:
    """The message id ``instance_id`` waits for a receipt of."""
    deadline = time.monotonic() + 30
    while True:
        state = env.sync_client.get(instance_id)
        status = (state.custom_status if state else None) or {}
        if status.get("stage") == "awaiting receipt":
            return str(status["message_id"])
        assert time.monotonic() < deadline, state
        time.sleep(0.01)


def _deliver_receipt(env: TestEnvironment, instance_id: str) -> None:
    receipt = {"message_id": _parked(env, instance_id), "status": "delivered", "event_id": "r"}
    env.sync_client.raise_event(instance_id, "DeliveryReceipt", receipt)


def test_emails_waiting_through_a_deploy_finish_on_the_new_code(env: TestEnvironment) -> None:
    mail = FakeMail(env)  # no receipts: every email parks until the test delivers one
    old = [env.sync_client.start(email_delivery, job(), instance_id=f"old-{n}") for n in (1, 2)]
    for instance_id in old:
        _parked(env, instance_id)
    checked: list[str] = []
    notified: list[str] = []
    env.deploy(_deployed(patched=True, checked=checked, notified=notified))
    new = env.sync_client.start("email_delivery", job(), instance_id="new-1")
    for instance_id in [*old, new]:
        _deliver_receipt(env, instance_id)
    for instance_id in [*old, new]:
        state = env.sync_client.wait(instance_id, timeout=30)
        assert state.status is OrchestrationStatus.COMPLETED, (instance_id, state.failure)
        assert state.output["status"] == "delivered"
    assert checked == ["Your order"]  # only the new email: the old ones had sent already
    assert sorted(notified) == ["new-1", "old-1", "old-2"]  # after the receipt: all of them
    assert len(mail.sent) == 3 and len(mail.outcomes) == 3
    history = env.sync_client.get("old-1", history=True).history or []  # type: ignore[union-attr]
    patches = [e.name for e in history if isinstance(e, PatchApplied)]
    assert patches == ["suppression-list"]  # the app's own; not the deploy's check-recipients


def test_without_the_patch_the_waiting_emails_fail_and_say_why(env: TestEnvironment) -> None:
    FakeMail(env)
    instance_id = env.sync_client.start(email_delivery, job(), instance_id="old")
    _parked(env, instance_id)
    env.deploy(_deployed(patched=False, checked=[], notified=[]))
    _deliver_receipt(env, instance_id)
    state = env.sync_client.wait(instance_id, timeout=30)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None and state.failure.error_type == "NonDeterminismError"
    assert "call_activity('check_recipients')" in state.failure.message
