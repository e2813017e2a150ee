"""The email pipeline's scheduled jobs: the daily digest and the overdue-receipt sweep.

End to end, ``durable-fx serve function_app:app`` on SQLite with a real SMTP
server (aiosmtpd) and receipts through the signed webhook: the timers
``daily_digest`` and ``stuck_sweep`` are fired through the management API
(``POST schedules/dfx-timer.<timer>/trigger``: one occurrence each), the
host is SIGKILLed around a digest, and the SMTP server counts what arrived.
The settings' parsing and the records' new tables are checked directly.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest

from durable_fx import open_store
from durable_fx.bindings import FunctionsSettings
from email_pipeline.localrun import AppProcess, signed, wait_until
from email_pipeline.localsmtp import LocalSmtp
from email_pipeline.models import DeliveryOutcome
from email_pipeline.records import (
    AzureRecords,
    EmailRecords,
    MemoryRecords,
    SqliteRecords,
    open_records,
)
from email_pipeline.scheduled import job_instance_id, occurrence_of
from email_pipeline.settings import digest_schedule, stuck_after_seconds, sweep_schedule
from tests.support.azurite import Azurite, new_hub
from tests.support.email_app import awaiting, email, output

SECRET = "schedules-test-secret"
OPS = "ops@example.com"
NOW = datetime(2026, 3, 4, 7, 0, tzinfo=UTC)
AFTER_KILL = 240.0
"""Room for waits after a SIGKILL: work in flight comes back when its 60 s lease ends."""


# -- settings: hostile values stop the app with the setting's name ----------------------


def test_the_schedules_come_from_settings_with_defaults() -> None:
    assert digest_schedule({}) == "0 0 7 * * *"
    assert digest_schedule({"EMAIL_DIGEST_SCHEDULE": " 0 30 6 * * 1-5 "}) == "0 30 6 * * 1-5"
    assert sweep_schedule({}) == "0 */15 * * * *"
    assert sweep_schedule({"EMAIL_SWEEP_INTERVAL_MINUTES": "60"}) == "0 0 * * * *"
    assert sweep_schedule({"EMAIL_SWEEP_INTERVAL_MINUTES": "360"}) == "0 0 */6 * * *"
    assert sweep_schedule({"EMAIL_SWEEP_INTERVAL_MINUTES": "1440"}) == "0 0 0 * * *"
    assert stuck_after_seconds({}) == 3600
    assert stuck_after_seconds({"EMAIL_STUCK_AFTER_SECONDS": "90.5"}) == 90.5


@pytest.mark.parametrize(
    "value",
    ["every day", "0 0 7 * *", "0 0 25 * * *", "0 0 7 * * * *", "%DIGEST%", "0 0 7 * * *\n0"],
)
def test_a_bad_digest_schedule_names_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match="EMAIL_DIGEST_SCHEDULE"):
        digest_schedule({"EMAIL_DIGEST_SCHEDULE": value})


@pytest.mark.parametrize("value", ["7", "0", "-15", "15m", "1e3", "9" * 50, "nan"])
def test_a_bad_sweep_interval_names_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match="EMAIL_SWEEP_INTERVAL_MINUTES"):
        sweep_schedule({"EMAIL_SWEEP_INTERVAL_MINUTES": value})


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf", "1e400"])
def test_a_bad_stuck_threshold_names_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match="EMAIL_STUCK_AFTER_SECONDS"):
        stuck_after_seconds({"EMAIL_STUCK_AFTER_SECONDS": value})


def test_an_occurrence_is_named_by_the_timer_status_else_by_the_minute() -> None:
    at = occurrence_of({"Next": "2026-03-04T07:00:00+00:00"}, NOW + timedelta(minutes=3))
    assert at == NOW
    assert occurrence_of({"Next": "2026-03-04T07:00:00"}, NOW) == NOW  # the host's UTC
    late = NOW + timedelta(seconds=42, microseconds=5)
    assert occurrence_of({}, late) == NOW
    assert occurrence_of({"Next": "garbage"}, late) == NOW
    assert job_instance_id("digest", NOW) == "digest-20260304T070000Z"


# -- records: outcomes by the time they ended, and overdue claims ------------------------


def outcome(
    instance_id: str, status: str, ended_at: datetime | None, **more: Any
) -> DeliveryOutcome:
    fields = {"instance_id": instance_id, "status": status, "sends": 1, "ended_at": ended_at}
    return DeliveryOutcome.model_validate({**fields, **more})


@pytest.fixture(params=["memory", "sqlite", pytest.param("azure", marks=pytest.mark.azurite)])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmailRecords]:
    if request.param == "memory":
        yield MemoryRecords()
    elif request.param == "sqlite":
        yield SqliteRecords(tmp_path / "app.db")
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        hub = new_hub()
        store = open_store(azurite.connection_string(hub))
        try:
            found = open_records(store, hub)
            assert isinstance(found, AzureRecords)
            yield found
        finally:
            asyncio.run(store.close())


def test_outcomes_are_found_by_when_they_ended(records: EmailRecords) -> None:
    records.record_outcome(outcome("a", "delivered", NOW - timedelta(hours=1)))
    records.record_outcome(outcome("b", "failed", NOW - timedelta(hours=24)))  # first instant
    records.record_outcome(outcome("c", "escalated", NOW - timedelta(hours=24, microseconds=1)))
    records.record_outcome(outcome("d", "delivered", NOW))  # the end is outside
    # Other time zones are the same instants.
    plus_two = NOW.astimezone(timezone(timedelta(hours=2))) - timedelta(minutes=1)
    records.record_outcome(outcome("e", "suppressed", plus_two))
    found = records.outcomes_between(NOW - timedelta(hours=24), NOW)
    assert [o.instance_id for o in found] == ["a", "b", "e"]
    # An outcome of older code (no ended_at) counts from when it was recorded.
    records.record_outcome(outcome("f", "delivered", None))
    recent = records.outcomes_between(
        datetime.now(UTC) - timedelta(minutes=5), datetime.max.replace(tzinfo=UTC)
    )
    assert [o.instance_id for o in recent] == ["f"]


def test_an_overdue_send_is_claimed_by_one_sweep(records: EmailRecords) -> None:
    assert records.claim_overdue("email-1.1", "sweep-a") == "sweep-a"
    assert records.claim_overdue("email-1.1", "sweep-b") == "sweep-a"
    assert records.claim_overdue("email-1.1", "sweep-a") == "sweep-a"  # a redelivery
    assert records.claim_overdue("email-1.2", "sweep-b") == "sweep-b"


def test_an_outcomes_table_from_before_the_digest_gets_its_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE email_outcomes (instance_id TEXT PRIMARY KEY, outcome TEXT NOT NULL)"
        )
        old = outcome("old", "delivered", None).model_dump_json(exclude={"ended_at"})
        conn.execute("INSERT INTO email_outcomes VALUES (?, ?)", ("old", old))
    conn.close()
    records = SqliteRecords(path)
    records.record_outcome(outcome("new", "failed", NOW - timedelta(hours=2)))
    assert [o.instance_id for o in records.outcomes()] == ["new", "old"]
    assert [o.instance_id for o in records.outcomes_between(NOW - timedelta(days=1), NOW)] == [
        "new"
    ]
    assert SqliteRecords(path).outcomes_between(NOW - timedelta(days=1), NOW)  # opened again


# -- end to end under serve ----------------------------------------------------------------


def settings(smtp: LocalSmtp, **more: str) -> dict[str, str]:
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "DELIVERY_WEBHOOK_SECRET": SECRET,
        "EMAIL_RECEIPT_TIMEOUT_SECONDS": "600",
        "EMAIL_SEND_RETRY_SECONDS": "0.5",
        "EMAIL_OPERATIONS_ADDRESS": OPS,
        "EMAIL_STUCK_AFTER_SECONDS": "1",
        # Occurrences come from the tests (manual runs), not the clock: Jan 1 and midnight.
        "EMAIL_DIGEST_SCHEDULE": "0 0 0 1 1 *",
        "EMAIL_SWEEP_INTERVAL_MINUTES": "1440",
        **more,
    }


@pytest.fixture
def smtp() -> Iterator[LocalSmtp]:
    with LocalSmtp() as server:
        yield server


@pytest.fixture
def host(tmp_path: Path, smtp: LocalSmtp) -> Iterator[AppProcess]:
    process = AppProcess(f"sqlite:///{tmp_path / 'app.db'}", settings(smtp), tmp_path / "serve.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def start(client: httpx.Client, to: str) -> str:
    answer = client.post("emails", json=email(to))
    assert answer.status_code == 202, answer.text
    instance_id: str = answer.json()["id"]
    return instance_id


def receipt(client: httpx.Client, message_id: str, status: str) -> None:
    body = {"message_id": message_id, "status": status, "event_id": uuid.uuid4().hex}
    raw, headers = signed(body, SECRET)
    answer = client.post("webhooks/delivery", content=raw, headers=headers)
    assert answer.status_code == 202, answer.text


def fire(client: httpx.Client, timer: str) -> None:
    """One occurrence of a timer now (a manual run of its schedule)."""
    answer = client.post(f"schedules/dfx-timer.{timer}/trigger")
    assert answer.status_code == 202, answer.text


def jobs(client: httpx.Client, prefix: str) -> list[dict[str, Any]]:
    answer = client.get("instances", params={"instanceIdPrefix": prefix, "top": "100"})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


def finished_jobs(
    client: httpx.Client, prefix: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """The runs of a job once ``count`` (or more: a real occurrence) have all finished.

    After a kill, give ``timeout`` room for the worker's 60 s lease on work in flight.
    """

    def check() -> list[dict[str, Any]] | None:
        found = jobs(client, prefix)
        done = [j for j in found if j["runtimeStatus"] in ("Completed", "Failed")]
        return done if len(found) >= count and len(done) == len(found) else None

    done = wait_until(check, timeout, f"{count} {prefix}* run(s) to finish")
    assert {j["runtimeStatus"] for j in done} == {"Completed"}, done
    return done


def to_ops(smtp: LocalSmtp, tag: str) -> list[Message]:
    return [m for m in smtp.messages if m["To"] == OPS and str(m["Subject"]).startswith(tag)]


def body(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(message.get_content_charset() or "utf-8").replace("\r\n", "\n")


def seed(store_url: str, outcomes: list[DeliveryOutcome]) -> None:
    """Outcomes recorded earlier, written where the app keeps them."""
    store = open_store(store_url)
    hub = FunctionsSettings.from_environment({}, store_url=store_url).hub
    try:
        records = open_records(store, hub)
        for found in outcomes:
            records.record_outcome(found)
    finally:
        asyncio.run(store.close())


@pytest.mark.slow
def test_the_digest_counts_the_last_day_and_lists_the_overdue(
    host: AppProcess, smtp: LocalSmtp
) -> None:
    now = datetime.now(UTC)
    seed(
        host.store_url,
        [
            outcome("old-1", "delivered", now - timedelta(hours=30)),
            outcome("old-2", "failed", now - timedelta(hours=25), receipt_status="bounced_hard"),
            outcome("earlier-1", "escalated", now - timedelta(hours=23)),
            outcome("earlier-2", "suppressed", now - timedelta(hours=2)),
            outcome("earlier-3", "failed", now - timedelta(hours=1)),  # the send was refused
        ],
    )
    with host.client() as client:
        delivered, bounced, waiting = (start(client, f"{n}@example.com") for n in "abc")
        receipt(client, awaiting(client, delivered), "delivered")
        receipt(client, awaiting(client, bounced), "bounced_hard")
        assert output(client, delivered)["status"] == "delivered"
        assert output(client, bounced)["status"] == "failed"
        waiting_id = awaiting(client, waiting)
        time.sleep(1.5)  # past EMAIL_STUCK_AFTER_SECONDS (1 s): overdue
        fire(client, "daily_digest")
        [digest] = finished_jobs(client, "digest-", 1)
    [mail] = to_ops(smtp, "[digest]")
    text = body(mail)
    assert text.splitlines()[0].endswith(": 5 in all.")
    assert "  delivered: 1\n  failed: 2\n  escalated: 1\n  suppressed: 1" in text
    assert "  bounced_hard: 1\n  send refused: 1" in text
    assert "Waiting for a receipt for over 1 s: 1" in text
    assert f"  {waiting} (send 1, {waiting_id}) since " in text
    assert delivered not in text and bounced not in text
    assert digest["output"]["counts"]["total"] == 5
    assert digest["output"]["message_id"] == mail["Message-ID"]
    # Each customer got their one email; the digest went to operations only.
    assert sorted(str(m["To"]) for m in smtp.messages) == sorted(
        ["a@example.com", "b@example.com", "c@example.com", OPS]
    )


@pytest.mark.slow
def test_a_digest_is_sent_once_per_occurrence_whatever_the_crashes(
    tmp_path: Path,
) -> None:
    # Slow enough that a kill lands while the digest is being handed over.
    with LocalSmtp(delay=1.0) as smtp:
        app = AppProcess(f"sqlite:///{tmp_path / 'app.db'}", settings(smtp), tmp_path / "serve.log")
        app.start()
        try:
            with app.client() as client:
                fire(client, "daily_digest")
            app.kill()  # somewhere between the trigger and the digest's send
            app.start()
            with app.client() as client:
                finished_jobs(client, "digest-", 1, timeout=AFTER_KILL)
                before = smtp.started
                fire(client, "daily_digest")
                wait_until(lambda: smtp.started > before or None, 60, "the second digest's send")
            app.kill()  # mid-send: the SMTP server has not taken it
            app.start()
            with app.client() as client:
                runs = finished_jobs(client, "digest-", 2, timeout=AFTER_KILL)
            app.kill()  # after everything: a restart sends nothing again
            app.start()
            with app.client() as client:
                assert len(finished_jobs(client, "digest-", 2, timeout=AFTER_KILL)) == 2
        finally:
            app.stop()
    digests = to_ops(smtp, "[digest]")
    # One email per occurrence: each run's send key (and Message-ID) is its instance id's.
    assert sorted(str(m["Message-ID"]) for m in digests) == sorted(
        r["output"]["message_id"] for r in runs
    )
    assert len({r["instanceId"] for r in runs}) == 2
    assert smtp.started > len(digests)  # a send really was torn by the kill and made again


@pytest.mark.slow
def test_the_sweep_reports_an_overdue_email_once_and_sends_nothing_again(
    host: AppProcess, smtp: LocalSmtp
) -> None:
    with host.client() as client:
        stuck = start(client, "stuck@example.com")
        prompt = start(client, "prompt@example.com")
        stuck_id = awaiting(client, stuck)
        receipt(client, awaiting(client, prompt), "delivered")
        assert output(client, prompt)["status"] == "delivered"

        # Sweeps until one finds the email overdue (it must wait 1 s), then two more.
        def reported() -> bool | None:
            fire(client, "stuck_sweep")
            time.sleep(0.5)
            return True if to_ops(smtp, "[overdue]") else None

        wait_until(reported, 60, "a sweep to report the overdue email")
        sweeps = len(jobs(client, "sweep-"))
        fire(client, "stuck_sweep")
        time.sleep(0.01)  # two occurrences: their ids differ by the time they fired
        fire(client, "stuck_sweep")
        runs = finished_jobs(client, "sweep-", sweeps + 2)
        state = client.get(f"instances/{stuck}").json()
        assert state["runtimeStatus"] == "Running"
        assert state["customStatus"]["stage"] == "awaiting receipt"
        # The email was not ended by the sweep: its late receipt still counts.
        receipt(client, stuck_id, "delivered")
        assert output(client, stuck)["sends"] == 1
    [notice] = to_ops(smtp, "[overdue]")
    assert f"{stuck} (send 1, {stuck_id})" in body(notice)
    assert prompt not in body(notice)
    reports = [r["output"] for r in runs]
    assert sum(r["reported"] == [stuck] for r in reports) == 1
    assert all(r["reported"] == [] for r in reports if r["reported"] != [stuck])
    # Nothing was sent again: one email each to the customers, one notice.
    assert sorted(str(m["To"]) for m in smtp.messages) == sorted(
        ["stuck@example.com", "prompt@example.com", OPS]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "value"),
    [("EMAIL_DIGEST_SCHEDULE", "daily at seven"), ("EMAIL_SWEEP_INTERVAL_MINUTES", "7")],
)
def test_a_bad_schedule_setting_stops_serve_at_startup(
    tmp_path: Path, smtp: LocalSmtp, setting: str, value: str
) -> None:
    log = tmp_path / "serve.log"
    app = AppProcess(f"sqlite:///{tmp_path / 'app.db'}", settings(smtp, **{setting: value}), log)
    with pytest.raises(RuntimeError, match="serve exited"):
        app.start()
    assert app.process is not None and app.process.returncode != 0
    assert setting in log.read_text()
