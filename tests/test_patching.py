"""Patching: change an orchestrator while instances of the old code wait, without breaking them.

Each test runs instances on one version of the code (a ``Registry``), stops
that worker while they wait for an event, and deploys the next version (a new
worker, so every instance is replayed from its history under the new code).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from durable_fx import (
    DurableClient,
    NonDeterminismError,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    Replayer,
    Worker,
)
from tests.support.instances import custom_status_of, history_kinds, wait_until

WAIT = 20.0


def _app(version: str, audits: list[str] | None = None) -> Registry:
    """The code of ``version``: v1 has no audit, v2 patches one in, v3 keeps only it.

    The audit goes in before a step history records (notify): without the
    patch, v1's history has notify where v2's code asks for the audit.
    """
    app = Registry()

    @app.activity(name="charge")
    def charge(order: str) -> str:
        return f"charged {order}"

    @app.activity(name="audit")
    def audit(order: str) -> str:
        if audits is not None:
            audits.append(order)
        return f"audited {order}"

    @app.activity(name="notify")
    def notify(order: str) -> str:
        return f"notified {order}"

    @app.orchestrator(name="order")
    def order(ctx: OrchestrationContext, name: str) -> Orchestrator[Any]:
        steps = [(yield ctx.call_activity("charge", name))]
        unpatched = version == "v2-unpatched"
        if unpatched or (version == "v2" and ctx.is_patched("audit")):
            steps.append((yield ctx.call_activity("audit", name)))
        elif version == "v3":
            ctx.deprecate_patch("audit")
            steps.append((yield ctx.call_activity("audit", name)))
        steps.append((yield ctx.call_activity("notify", name)))
        ctx.set_custom_status("waiting")
        steps.append((yield ctx.wait_for_event("shipped")))
        return steps

    return app


def _park(client: DurableClient, worker: Worker, *names: str) -> None:
    for name in names:
        client.start("order", name, instance_id=name)
    wait_until(lambda: all(custom_status_of(client, name) == "waiting" for name in names))
    worker.stop()


def _ship(client: DurableClient, *names: str) -> dict[str, Any]:
    for name in names:
        client.raise_event(name, "shipped", "box")
    outputs = {}
    for name in names:
        state = client.wait(name, timeout=WAIT)
        assert state.status is OrchestrationStatus.COMPLETED, (name, state.failure)
        outputs[name] = state.output
    return outputs


def test_a_patch_keeps_old_instances_on_their_path_and_new_ones_on_the_new(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    _park(client, make_worker(_app("v1")), "old")
    audits: list[str] = []
    make_worker(_app("v2", audits))
    client.start("order", "new", instance_id="new")
    wait_until(lambda: custom_status_of(client, "new") == "waiting")
    outputs = _ship(client, "old", "new")
    assert outputs == {
        "old": ["charged old", "notified old", "box"],
        "new": ["charged new", "audited new", "notified new", "box"],
    }
    assert audits == ["new"]
    assert "PatchApplied" not in history_kinds(client, "old")
    assert history_kinds(client, "new").count("PatchApplied") == 1


def test_without_the_patch_the_old_instance_fails_with_the_reason(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    _park(client, make_worker(_app("v1")), "old")
    make_worker(_app("v2-unpatched"))
    client.raise_event("old", "shipped", "box")
    state = client.wait("old", timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None and "is_patched" in state.failure.message


def test_deprecate_patch_replays_histories_that_hold_the_marker(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    _park(client, make_worker(_app("v2")), "patched")
    make_worker(_app("v3"))
    client.start("order", "latest", instance_id="latest")
    wait_until(lambda: custom_status_of(client, "latest") == "waiting")
    outputs = _ship(client, "patched", "latest")
    assert outputs == {
        "patched": ["charged patched", "audited patched", "notified patched", "box"],
        "latest": ["charged latest", "audited latest", "notified latest", "box"],
    }
    assert "PatchApplied" not in history_kinds(client, "latest")  # v3 records no marker


def test_the_replayer_checks_a_deploy_against_recorded_histories(
    make_worker: Callable[..., Worker], client: DurableClient
) -> None:
    _park(client, make_worker(_app("v1")), "old")
    state = client.get("old", history=True)
    assert state is not None and state.history is not None
    assert Replayer(_app("v2")).replay(state.history).status is OrchestrationStatus.RUNNING
    with pytest.raises(NonDeterminismError, match=r"call_activity\('audit'\)"):
        Replayer(_app("v2-unpatched")).replay(state.history)


def test_is_patched_answers_the_same_all_through_an_execution(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    @registry.orchestrator()
    def twice(ctx: OrchestrationContext) -> Orchestrator[Any]:
        first = ctx.is_patched("p")
        yield ctx.wait_for_event("go")
        return [first, ctx.is_patched("p"), ctx.is_patched("other")]

    iid = client.start(twice)
    client.raise_event(iid, "go")
    state = client.wait(iid, timeout=WAIT)
    assert state.output == [True, True, True]
    assert history_kinds(client, iid).count("PatchApplied") == 2
