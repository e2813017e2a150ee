"""Orchestration versions: recorded at start, carried on, and the versions a worker runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    OnVersionMismatch,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Store,
    VersionMatch,
    VersionPolicy,
    Worker,
)
from durable_fx.bindings import DurableApp
from durable_fx.storage.azure import _orchestrations as azure_orchestrations
from tests.support.instances import status_of, wait_until

WAIT = 20.0


def _versions_app() -> Registry:
    app = Registry()

    @app.orchestrator(name="child")
    def child(ctx: OrchestrationContext) -> str | None:
        return ctx.version

    @app.orchestrator(name="parent")
    def parent(ctx: OrchestrationContext, generation: int) -> Orchestrator[Any]:
        if generation == 0:
            ctx.continue_as_new(1)
            return None
        child_version = yield ctx.call_sub_orchestrator("child", None)
        return {"parent": ctx.version, "child": child_version}

    return app


def test_the_version_is_recorded_and_carried_to_children_and_new_executions(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(_versions_app())
    iid = client.start("parent", 0, version="2.1")
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == {"parent": "2.1", "child": "2.1"}
    assert state.version == "2.1"
    assert {c.version for c in client.query(name="child").items} == {"2.1"}
    restarted = client.restart(iid, new_instance_id=True)
    assert client.wait(restarted, timeout=WAIT).version == "2.1"


def test_without_a_version_there_is_none_unless_the_client_has_a_default(
    store: Store, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(_versions_app())
    state = client.wait(client.start("child"), timeout=WAIT)
    assert (state.output, state.version) == (None, None)
    with DurableClient(store, default_version="3.0") as versioned:
        state = versioned.wait(versioned.start("child"), timeout=WAIT)
        assert (state.output, state.version) == ("3.0", "3.0")
        explicit = versioned.wait(versioned.start("child", version="1.0"), timeout=WAIT)
        assert explicit.output == "1.0"


@pytest.mark.parametrize(
    ("match", "runs", "fails"),
    [
        (VersionMatch.EXACT, {"2.0"}, {"1.0", "2.1", "10.0", None}),
        (VersionMatch.CURRENT_OR_OLDER, {"1.0", "2.0", None}, {"2.1", "10.0"}),
        (VersionMatch.ANY, {"1.0", "2.0", "2.1", "10.0", None}, set()),
    ],
)
def test_a_worker_runs_the_versions_its_policy_matches_and_fails_the_others(
    make_worker: Callable[..., Worker],
    client: DurableClient,
    match: VersionMatch,
    runs: set[str | None],
    fails: set[str | None],
) -> None:
    make_worker(_versions_app(), versioning=VersionPolicy("2.0", match))
    started = {client.start("child", version=v): v for v in runs | fails}
    for iid, version in started.items():
        state = client.wait(iid, timeout=WAIT)
        if version in runs:
            assert state.status is OrchestrationStatus.COMPLETED, (version, state.failure)
        else:
            assert state.status is OrchestrationStatus.FAILED, version
            assert state.failure is not None and "worker version '2.0'" in state.failure.message


def test_a_deployed_worker_fails_running_instances_of_a_version_it_does_not_run(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    app = Registry()

    @app.orchestrator(name="waits")
    def waits(ctx: OrchestrationContext) -> Orchestrator[Any]:
        return (yield ctx.wait_for_event("go"))

    old = make_worker(app)
    iid = client.start("waits", version="1.0")
    wait_until(lambda: status_of(client, iid) is OrchestrationStatus.RUNNING)
    old.stop()
    make_worker(app, versioning=VersionPolicy("2.0", VersionMatch.EXACT))
    client.raise_event(iid, "go", 1)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert state.failure.error_type == "VersionMismatchError"
    assert "version '1.0'" in state.failure.message


def test_a_durable_app_starts_with_its_default_version(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_FX_DEFAULT_VERSION", "from-settings")
    assert DurableApp(store=store).settings.default_version == "from-settings"
    app = DurableApp(store=store, default_version="4.2")

    @app.orchestrator()
    def versioned(ctx: OrchestrationContext) -> str | None:
        return ctx.version

    with Worker(app, store, max_poll_interval=0.05):
        client = app.runtime.sync_client()
        state = client.wait(client.start(versioned), timeout=WAIT)
    assert (state.output, state.version) == ("4.2", "4.2")


def test_a_version_3_sqlite_file_learns_to_keep_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v3.db'}"
    with DurableClient(url) as client:
        client.start("child", instance_id="before")
    with sqlite3.connect(tmp_path / "v3.db") as db:  # the layout before versions
        db.executescript(
            "ALTER TABLE instances DROP COLUMN orch_version;"
            " ALTER TABLE work_items DROP COLUMN heartbeat_timeout;"
            " ALTER TABLE work_items DROP COLUMN heartbeat_details;"
            " ALTER TABLE work_items DROP COLUMN trace_context;"
            " PRAGMA user_version=3;"
        )
    db.close()
    with DurableClient(url) as client:
        before = client.get("before")
        assert before is not None and before.version is None
        client.start("child", instance_id="after", version="5")
        after = client.get("after")
        assert after is not None and after.version == "5"


def _which_app(version: str) -> Registry:
    app = Registry()

    @app.orchestrator(name="which")
    def which(ctx: OrchestrationContext) -> str:
        return f"ran on {version}"

    return app


def _leaving_others(version: str) -> VersionPolicy:
    return VersionPolicy(version, VersionMatch.EXACT, OnVersionMismatch.LEAVE)


def test_workers_of_two_versions_each_run_their_own_and_leave_the_others_pending(
    store: Store, make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    make_worker(_which_app("1"), versioning=_leaving_others("1"))
    started = {client.start("which", version=v): v for v in ("1", "2", "1", "2")}
    orphan = client.start("which", version="3")
    for iid, version in started.items():
        if version == "1":
            assert client.wait(iid, timeout=WAIT).output == "ran on 1"
    make_worker(_which_app("2"), versioning=_leaving_others("2"))
    for iid, version in started.items():
        done = client.wait(iid, timeout=WAIT)
        assert done.output == f"ran on {version}", done.failure
    # No worker runs version 3: it is neither run nor failed.
    state = client.get(orphan)
    assert state is not None and state.status is OrchestrationStatus.PENDING, state.failure


def test_workers_of_two_versions_on_one_store_object_pass_each_other_nothing(
    store: Store,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for version in ("1", "2"):
        make_worker(_which_app(version), versioning=_leaving_others(version))
    # A worker is known to the store once it has polled: one run of each version
    # proves both have (before that, the other passes its instances on, for 2 s).
    for version in ("1", "2"):
        warm_up = client.start("which", version=version)
        assert client.wait(warm_up, timeout=WAIT).output == f"ran on {version}"
    # An instance passed on to another process would now wait an hour for its
    # next wake-up: only a hand-over inside the store object finishes in time.
    monkeypatch.setattr(azure_orchestrations, "PASS_ON_AFTER", timedelta(hours=1))
    started = {client.start("which", version=str(1 + n % 2)): str(1 + n % 2) for n in range(20)}
    for iid, version in started.items():
        assert client.wait(iid, timeout=WAIT).output == f"ran on {version}"
