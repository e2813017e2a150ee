"""The web dashboard: ``durable-fx dashboard`` on a SQLite file, driven over HTTP.

A worker in this process runs the orchestrations on the same file; the
dashboard runs as its own process (the command users run), and the tests
talk to it with httpx as a browser would (cookies, forms, htmx headers).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

import durable_fx
from durable_fx import (
    DurableClient,
    EntityId,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Worker,
)
from email_pipeline.localsmtp import LocalSmtp
from tests.support.dashboard import HTML, KEY, start_dashboard

# The fixtures: a worker on the module's SQLite file and the dashboard process on it.
from tests.support.dashboard import client as client
from tests.support.dashboard import dashboard as dashboard
from tests.support.dashboard import store_url as store_url
from tests.support.email_app import awaiting, email, served_email_app
from tests.support.instances import wait_until

pytestmark = pytest.mark.slow

JSON = {"accept": "application/json"}


@pytest.fixture
def browser(dashboard: str) -> Iterator[httpx.Client]:
    """Signed in, as a person would be: the login form sets the cookie."""
    with httpx.Client(base_url=dashboard, timeout=10) as http:
        answer = http.post("/login", data={"key": KEY}, follow_redirects=False)
        assert answer.status_code == 303
        yield http


def test_every_page_needs_the_key(dashboard: str) -> None:
    with httpx.Client(base_url=dashboard, timeout=10) as http:
        assert http.get("/instances").status_code == 401
        assert http.get("/instances", headers={"x-dashboard-key": "wrong"}).status_code == 401
        page = http.get("/instances", headers=HTML, follow_redirects=False)
        assert (page.status_code, page.headers["location"]) == (303, "/login")
        assert http.post("/instances/x/terminate").status_code == 401
        assert http.get("/instances", headers={"x-dashboard-key": KEY}).status_code == 200
        http.post("/login", data={"key": "wrong"})
        assert http.get("/instances").status_code == 401


def test_the_command_refuses_to_run_without_a_key(store_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_FX_")}
    done = subprocess.run(
        [sys.executable, "-m", "durable_fx.cli", "dashboard", "--store", store_url],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "DURABLE_FX_DASHBOARD_KEY" in done.stderr


def test_instances_are_listed_filtered_and_paged(
    browser: httpx.Client, client: DurableClient
) -> None:
    ids = [client.start("idle", None, instance_id=f"page-{n:03d}") for n in range(55)]
    other = client.start("deliver", "ada@example.com", instance_id="filter-deliver")
    wait_until(lambda: all(client.get(i) for i in [*ids, other]))

    named = browser.get("/instances", params={"name": "deliver", "prefix": "filter-"}).text
    assert "filter-deliver" in named and "page-000" not in named

    first = browser.get("/instances", params={"prefix": "page-"}).text
    shown = [i for i in ids if f">{i}<" in first]
    assert len(shown) == 50 and "More…" in first
    more = first.split('hx-get="')[-1].split('"')[0].replace("&amp;", "&")
    rest = browser.get(more, headers={"hx-request": "true"}).text
    assert "<html" not in rest  # a fragment, for htmx to append
    assert {i for i in ids if f">{i}<" in rest} == set(ids) - set(shown)

    scripted = browser.get("/instances", params={"prefix": "page-"}, headers=JSON)
    assert {i["instanceId"] for i in scripted.json()} == set(shown)
    token = scripted.headers["x-ms-continuation-token"]
    rest_json = browser.get("/instances", params={"prefix": "page-", "continuation": token})
    assert "<html" in rest_json.text  # no Accept: JSON, the page for a person

    answer = browser.get("/instances", params={"status": "BOGUS"})
    assert answer.status_code == 400 and answer.json()["field"] == "status"
    answer = browser.get("/instances", params={"from": "yesterday"})
    assert answer.status_code == 400 and answer.json()["field"] == "from"


def _counts(html: str) -> dict[str, int]:
    return {m[0]: int(m[1]) for m in re.findall(r"status=(\w+)\">\w+ <b>(\d+)</b>", html)}


def test_counts_per_status_lead_to_the_list_of_each(
    browser: httpx.Client, client: DurableClient
) -> None:
    before = _counts(browser.get("/counts").text)
    ids = [client.start("idle", None, instance_id=f"count-{n}") for n in range(3)]
    running = OrchestrationStatus.RUNNING
    wait_until(lambda: all(getattr(client.get(i), "status", None) is running for i in ids))
    page = browser.get("/instances").text
    counts = _counts(page)
    assert counts["RUNNING"] == before.get("RUNNING", 0) + 3
    assert counts == {s.name: n for s, n in (client.count_by_status() or {}).items()}
    listed = browser.get("/instances", params={"status": "RUNNING", "prefix": "count-"}).text
    assert all(f">{i}<" in listed for i in ids)
    refreshed = browser.get("/counts", headers={"hx-request": "true"}).text
    assert "<html" not in refreshed and _counts(refreshed) == counts


def test_entities_are_listed_with_their_state(browser: httpx.Client, client: DurableClient) -> None:
    for key, amount in (("dash-a", 2), ("dash-b", 5), ("other", 1)):
        client.signal_entity(EntityId("tally", key), "add", amount)
    # Each signal is its own entity's work: wait for the last one too, not only the "dash-" ones.
    wait_until(lambda: len(client.query_entities(name="tally").items) == 3)
    page = browser.get("/entities", params={"name": "tally", "key_prefix": "dash-"}).text
    assert ">dash-a<" in page and ">dash-b<" in page and ">other<" not in page
    assert "<code>5</code>" in page
    scripted = browser.get("/entities", params={"name": "tally"}, headers=JSON).json()
    assert {(e["entityId"]["key"], e["state"]) for e in scripted} >= {("dash-a", 2), ("other", 1)}
    refused = browser.get("/entities", params={"key_prefix": "dash-"})
    assert refused.status_code == 400 and refused.json()["field"] == "key_prefix"
    assert ">Entities<" in browser.get("/instances").text  # in the navigation


def test_schedules_are_listed_with_their_runs(browser: httpx.Client, client: DurableClient) -> None:
    every = timedelta(seconds=1)
    schedule = client.create_schedule("dash-every-second", "square_twice", 3, every=every)
    wait_until(lambda: any(r.instance_id for r in getattr(schedule.describe(), "recent_runs", [])))
    schedule.pause()
    # Quiet before reading on: other tests count instances by status.
    wait_until(lambda: (d := schedule.describe()) is not None and d.paused and not d.running)
    page = browser.get("/schedules").text
    assert ">dash-every-second<" in page and "every 0:00:01" in page
    run = next(r for r in (schedule.describe() or _missing()).recent_runs if r.instance_id)
    assert f"/instances/{run.instance_id}" in page  # each run links to its instance
    scripted = browser.get("/schedules", headers=JSON).json()
    assert [s["id"] for s in scripted if s["id"] == "dash-every-second"] == ["dash-every-second"]
    assert ">Schedules<" in browser.get("/instances").text  # in the navigation
    schedule.delete()
    wait_until(lambda: schedule.describe() is None)


def _missing() -> durable_fx.ScheduleDescription:
    raise AssertionError("the schedule is gone")


def test_a_custom_status_search_reads_on_past_the_first_page(
    browser: httpx.Client, client: DurableClient
) -> None:
    # The two matches are the oldest: the 60 newer instances fill the first page.
    needles = [client.start("deliver", f"needle-{n}@example.com") for n in range(2)]
    wait_until(lambda: all(getattr(client.get(i), "custom_status", None) for i in needles))
    hay = [client.start("idle", None, instance_id=f"hay-{n:02d}") for n in range(60)]
    wait_until(lambda: all(client.get(i) for i in hay))
    found = browser.get("/instances", params={"custom_status": "NEEDLE-"}).text
    assert all(f">{i}<" in found for i in needles) and "hay-" not in found


def test_an_instance_shows_its_timeline_and_completes_when_its_event_is_raised(
    browser: httpx.Client, client: DurableClient
) -> None:
    iid = client.start("deliver", "grace@example.com", instance_id="timeline-1")
    wait_until(lambda: (s := client.get(iid)) and s.custom_status and s.custom_status.get("stage"))
    page = browser.get(f"/instances/{iid}").text
    assert "awaiting receipt" in page and "RUNNING" in page
    for bar in (
        'class="bar activity completed"',
        'class="bar timer fired"',
        'class="bar wait running"',
    ):
        assert bar in page, bar

    bad = browser.post(
        f"/instances/{iid}/raise-event", data={"name": "Receipt", "data": "{not json"}
    )
    assert bad.status_code == 400 and "not JSON" in bad.text
    assert client.get(iid).status is OrchestrationStatus.RUNNING  # type: ignore[union-attr]

    raised = browser.post(
        f"/instances/{iid}/raise-event", data={"name": "Receipt", "data": '{"status": "delivered"}'}
    )
    assert raised.status_code == 200 and "raised Receipt" in raised.text
    done = client.wait(iid, timeout=20)
    assert done.output == {"sent": "sent to grace@example.com", "receipt": {"status": "delivered"}}
    page = browser.get(f"/instances/{iid}").text
    assert (
        "COMPLETED" in page
        and 'class="bar wait arrived"' in page
        and 'class="bar event arrived"' in page
    )
    events = browser.get(f"/instances/{iid}/events").json()
    assert "ExecutionStarted" in [e["kind"] for e in events]


def test_terminate_and_purge_go_through_the_client(
    browser: httpx.Client, client: DurableClient
) -> None:
    iid = client.start("idle", None, instance_id="act-1")
    wait_until(lambda: (s := client.get(iid)) and s.status is OrchestrationStatus.RUNNING)
    assert "terminated" in browser.post(f"/instances/{iid}/terminate", data={"reason": "test"}).text
    assert client.wait(iid, timeout=20).status is OrchestrationStatus.TERMINATED
    assert "purged" in browser.post(f"/instances/{iid}/purge").text
    assert client.get(iid) is None
    assert browser.get(f"/instances/{iid}").status_code == 404
    assert browser.post(f"/instances/{iid}/terminate").status_code == 404
    assert browser.post(f"/instances/{iid}/explode").status_code == 404


def test_a_read_only_dashboard_shows_but_never_acts(
    store_url: str, client: DurableClient, tmp_path: Path
) -> None:
    iid = client.start("idle", None, instance_id="read-only-1")
    wait_until(lambda: client.get(iid))
    process, base = start_dashboard(store_url, tmp_path / "ro.log", "--read-only")
    try:
        with httpx.Client(base_url=base, headers={"x-dashboard-key": KEY}, timeout=10) as http:
            page = http.get(f"/instances/{iid}").text
            assert "read-only" in page and "Terminate" not in page
            assert http.post(f"/instances/{iid}/terminate").status_code == 403
    finally:
        process.terminate()
        process.wait(30)
    assert client.get(iid).status is OrchestrationStatus.RUNNING  # type: ignore[union-attr]


def test_serve_mounts_the_dashboard_of_a_durable_app(request: pytest.FixtureRequest) -> None:
    """The email app under ``durable-fx serve``: the same pages at /api/dashboard/."""
    with LocalSmtp() as smtp:
        settings = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "DELIVERY_WEBHOOK_SECRET": "s",
            "DURABLE_FX_DASHBOARD_KEY": KEY,
        }
        with served_email_app(request, "dashboard-serve", "sqlite", settings) as app:
            with app.client() as api:
                instance_id = api.post("emails", json=email("lin@example.com")).json()["id"]
                awaiting(api, instance_id)
            base = f"http://127.0.0.1:{app.port}/api/dashboard"
            with httpx.Client(timeout=10) as http:
                page = http.get(f"{base}/instances", headers=HTML, follow_redirects=False)
                assert (page.status_code, page.headers["location"]) == (
                    303,
                    "/api/dashboard/login",
                )
                signed_in = http.post(f"{base}/login", data={"key": KEY}, follow_redirects=False)
                assert signed_in.headers["location"] == "/api/dashboard/instances"
                listed = http.get(f"{base}/instances").text
                assert instance_id in listed and "/api/dashboard/static/" in listed
                shown = http.get(f"{base}/instances/{instance_id}").text
                assert "awaiting receipt" in shown and 'class="bar activity completed"' in shown
                assert http.get(f"{base}/static/htmx-2.0.11.min.js").status_code == 200
                # A script asking for JSON gets the management API's documents.
                as_json = {"accept": "application/json"}
                one = http.get(f"{base}/instances/{instance_id}", headers=as_json).json()
                every = http.get(f"{base}/instances", headers=as_json).json()
                missing = http.get(f"{base}/instances/nobody", headers=as_json)
            with app.client() as api:
                status = api.get(f"instances/{instance_id}", params={"showHistory": "true"})
                assert one == status.json() and "historyEvents" in one
                assert every == api.get("instances").json()
            assert missing.status_code == 404 and "nobody" in missing.json()["error"]


def test_without_a_key_a_durable_app_has_no_dashboard(request: pytest.FixtureRequest) -> None:
    with LocalSmtp() as smtp:
        settings = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(smtp.port)}
        with served_email_app(request, "no-dashboard", "sqlite", settings) as app:
            answer = httpx.get(f"http://127.0.0.1:{app.port}/api/dashboard/instances")
            assert answer.status_code == 404


def test_a_long_history_is_drawn_a_page_at_a_time(
    browser: httpx.Client, client: DurableClient
) -> None:
    iid = client.start("fan_out", 620, instance_id="long-1")
    assert client.wait(iid, timeout=60).status is OrchestrationStatus.COMPLETED
    first = browser.get(f"/instances/{iid}").text
    assert first.count('class="bar activity completed"') == 500
    assert "Bars 1 to 500 of 620" in first and "?page=2" in first
    second = browser.get(f"/instances/{iid}", params={"page": 2}).text
    assert second.count('class="bar activity completed"') == 120
    assert browser.get(f"/instances/{iid}", params={"page": "x"}).status_code == 400


def test_poisoned_messages_are_requeued_or_deleted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'poison.db'}"
    registry = Registry()
    release = threading.Event()

    @registry.activity()
    async def hangs(_: None) -> str:
        if not release.is_set():
            await asyncio.Event().wait()  # until the stopping worker cancels it
        return "done"

    @registry.orchestrator()
    def stuck(ctx: OrchestrationContext, _: None) -> Orchestrator[str]:
        return (yield ctx.call_activity(hangs, None))

    store = durable_fx.open_store(url, max_dequeue_count=1)
    with DurableClient(store) as durable:
        iid = durable.start(stuck, None)
        worker = Worker(registry, store, max_poll_interval=0.05, shutdown_grace=0.05)
        worker.start()
        wait_until(
            lambda: durable.get(iid) and durable.get(iid).status is OrchestrationStatus.RUNNING
        )  # type: ignore[union-attr]
        time.sleep(0.3)  # it holds the activity
        worker.stop()
        [poisoned] = wait_until(durable.poisoned, what="the activity poisoned")
        process, base = start_dashboard(url, tmp_path / "poison.log")
        try:
            with httpx.Client(base_url=base, headers={"x-dashboard-key": KEY}, timeout=10) as http:
                listed = http.get("/poison").text
                assert "the worker stopped" in listed and "Requeue" in listed
                assert http.post("/poison/requeue", data={"id": "nope"}).status_code == 404
                assert http.post("/poison/explode", data={"id": "1"}).status_code == 404
                requeued = http.post("/poison/requeue", data={"id": poisoned.poison_id})
                assert requeued.status_code == 200 and "requeued" in requeued.text
                assert durable.poisoned() == []
        finally:
            process.terminate()
            process.wait(30)
        release.set()
        with Worker(registry, store, max_poll_interval=0.05):
            assert durable.wait(iid, timeout=20).output == "done"


def test_an_instance_links_its_parent_and_its_sub_orchestrations(
    browser: httpx.Client, client: DurableClient
) -> None:
    iid = client.start("parent", None, instance_id="family-1")
    assert client.wait(iid, timeout=20).status is OrchestrationStatus.COMPLETED
    page = browser.get(f"/instances/{iid}").text
    assert '<a href="/instances/family-1-child-0">family-1-child-0</a> (square_twice)' in page
    assert 'class="bar sub-orchestration completed"' in page
    child = browser.get("/instances/family-1-child-1").text
    assert '<dt>Parent</dt><dd><a href="/instances/family-1">family-1</a>' in child


def test_an_oversized_form_is_refused_before_it_is_read(
    browser: httpx.Client, client: DurableClient
) -> None:
    iid = client.start("idle", None, instance_id="big-form-1")
    wait_until(lambda: client.get(iid))
    data = '"' + "x" * (1024 * 1024) + '"'
    answer = browser.post(f"/instances/{iid}/raise-event", data={"name": "Never", "data": data})
    assert answer.status_code == 413 and answer.json()["field"] == "body"
    state = client.get(iid, history=True)
    assert state is not None and not [e for e in state.history or [] if e.kind == "EventRaised"]
