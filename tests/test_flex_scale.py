"""Parked work is not work: what the scale controllers make of emails waiting for receipts.

The email app runs under ``durable-fx serve`` on Azurite with a few hundred
emails parked (sent, waiting up to 24 h for their receipt). Then ``serve``
stops, so the queues are what a scale controller sees of an app at zero, and
``tests/support/scale_model.py`` applies the Flex and KEDA rules to every queue the
app's triggers listen on. Figures for larger counts: ``bench/flex_scale.py``.
"""

from __future__ import annotations

import re

import pytest
from azure.storage.queue import QueueServiceClient

from email_pipeline.localsmtp import LocalSmtp
from tests.support.azurite import Azurite
from tests.support.email_app import served_email_app
from tests.support.parked_emails import (
    EVENT_QUEUES,
    AzureObserver,
    app_settings,
    post_emails,
    post_receipts,
    start_directly,
    wait_for,
)
from tests.support.scale_model import ScaleRules, model, sample_queues, trigger_queues

pytestmark = [pytest.mark.slow, pytest.mark.azurite]

PARKED = 200
DAY = 86400.0


def _targets(azurite: Azurite, hub: str) -> dict[str, dict[str, int]]:
    service = QueueServiceClient.from_connection_string(azurite.connection_string())
    samples = sample_queues(service, trigger_queues(service, hub, EVENT_QUEUES))
    queues: dict[str, dict[str, int]] = model(samples, ScaleRules.of_repo())["queues"]
    return queues


def test_parked_emails_leave_the_app_at_zero_and_a_new_one_wakes_one_instance_per_partition(
    request: pytest.FixtureRequest, azurite: Azurite
) -> None:
    with LocalSmtp() as smtp:
        settings = app_settings(smtp.port, DAY)
        with served_email_app(request, "flex-scale", "azure", settings) as app:
            found = re.search(r"TaskHub=(\w+);", app.store_url)
            assert found is not None
            hub = found.group(1)
            observer = AzureObserver(azurite.connection_string(), hub)
            post_emails(f"http://127.0.0.1:{app.port}/api/", app.key, "park", PARKED)
            # Settled: parked, or done (on a loaded machine an SMTP send may exhaust its
            # retries and the email ends "failed"; it then waits for nothing).
            settled = wait_for(
                observer, "email-park-", lambda i: i.awaiting_receipt or i.completed, PARKED,
                timeout=300,
            )  # fmt: skip
            assert sum(i.awaiting_receipt for i in settled) >= PARKED * 0.9
            assert app.stop() == 0

            idle = _targets(azurite, hub)
            start_directly(app.store_url, "email-new-00000", DAY)
            one_new = _targets(azurite, hub)

            # Parked is not lost: every receipt resumes its email at once.
            app.start()
            wait_for(observer, "email-new-", lambda i: i.awaiting_receipt, 1, timeout=120)
            waiting = [i for i in observer.instances("email-") if i.awaiting_receipt]
            post_receipts(
                f"http://127.0.0.1:{app.port}/api/", app.key, [i.message_id for i in waiting]
            )
            wait_for(observer, "email-", lambda i: i.completed, len(settled) + 1, timeout=300)
            observer.close()

    assert {q: t["host_target"] for q, t in idle.items()} == dict.fromkeys(idle, 0)
    assert {q: t["keda_target"] for q, t in idle.items()} == dict.fromkeys(idle, 0)
    # One visible wake-up in one partition: at most one instance for any function,
    # however many emails wait for receipts in the same queues.
    assert max(t["host_target"] for t in one_new.values()) <= 1, one_new
    assert max(t["keda_target"] for t in one_new.values()) <= 1, one_new
