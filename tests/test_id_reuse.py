"""Id reuse: ``start`` keeps a finished instance unless asked to replace it (every store).

Through the public client and the CLI; the HTTP level (the email app's idempotency
key, the management API's start) is in ``test_security_data_loss.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask.internal import orchestrator_service_pb2 as pb
from typer.testing import CliRunner

from durable_fx import (
    AsyncDurableClient,
    DurableClient,
    IdReusePolicy,
    InstanceExistsError,
    OrchestrationContext,
    OrchestrationStatus,
    Registry,
    Store,
    Worker,
)
from durable_fx.cli import app as cli_app
from tests.support.sidecar import WAIT as SIDECAR_WAIT
from tests.support.sidecar import running_sidecar, start_worker

WAIT = 20.0


def _register(registry: Registry) -> None:
    @registry.orchestrator()
    def echo(ctx: OrchestrationContext, x: Any) -> Any:
        if x == "fail":
            raise ValueError("asked to fail")
        return x


def _finished(client: DurableClient, instance_id: str, value: Any = 1) -> Any:
    """Run ``echo`` under ``instance_id`` to its end; its state with history."""
    client.start("echo", value, instance_id=instance_id)
    client.wait(instance_id, timeout=WAIT)
    return client.get(instance_id, history=True)


def test_starting_a_finished_id_is_refused_and_keeps_its_history(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    _register(registry)
    for instance_id, value in (("done", 1), ("broken", "fail")):
        before = _finished(client, instance_id, value)
        with pytest.raises(InstanceExistsError) as refused:
            client.start("echo", 2, instance_id=instance_id)
        assert refused.value.status == before.status.value
        assert "keeps its history" in str(refused.value)
        assert client.get(instance_id, history=True) == before


def test_reuse_policy_replaces_only_the_statuses_it_names(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    _register(registry)
    _finished(client, "done", 1)
    failed = _finished(client, "broken", "fail")
    assert failed.status is OrchestrationStatus.FAILED
    with pytest.raises(InstanceExistsError):
        client.start("echo", 2, instance_id="done", reuse=IdReusePolicy.REPLACE_FAILED)
    client.start("echo", 2, instance_id="broken", reuse=IdReusePolicy.REPLACE_FAILED)
    assert client.wait("broken", timeout=WAIT).output == 2
    client.start("echo", 3, instance_id="done", reuse={"completed"})
    assert client.wait("done", timeout=WAIT).output == 3
    replaced = client.get("done", history=True)
    assert replaced is not None and replaced.history is not None
    assert [e.kind for e in replaced.history].count("ExecutionStarted") == 1


def test_a_running_instance_is_never_replaced(registry: Registry, client: DurableClient) -> None:
    _register(registry)
    client.start("echo", 1, instance_id="pending")  # no worker: it stays PENDING
    with pytest.raises(InstanceExistsError):
        client.start("echo", 2, instance_id="pending", reuse=IdReusePolicy.REPLACE_FINISHED)
    with pytest.raises(ValueError, match="only finished instances"):
        client.start("echo", 2, instance_id="pending", reuse={OrchestrationStatus.PENDING})


def test_restart_replaces_a_finished_instance_explicitly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    _register(registry)
    first = _finished(client, "again", 7)
    assert client.restart("again") == "again"
    second = client.wait("again", timeout=WAIT)
    assert (second.output, second.execution_id != first.execution_id) == (7, True)


def test_concurrent_starts_of_one_id_start_it_once(
    registry: Registry, worker: Worker, client: DurableClient, store: Store
) -> None:
    _register(registry)
    _finished(client, "finished", 1)
    worker.stop()  # else a replacement could finish, and be replaced, within the race

    async def race(instance_id: str, reuse: IdReusePolicy) -> list[Any]:
        async with AsyncDurableClient(store) as racer:
            starts = [
                racer.start("echo", n, instance_id=instance_id, reuse=reuse) for n in range(8)
            ]
            return await asyncio.gather(*starts, return_exceptions=True)

    for instance_id, reuse in (
        ("new", IdReusePolicy.REFUSE),
        ("finished", IdReusePolicy.REPLACE_FINISHED),
    ):
        outcomes = asyncio.run(race(instance_id, reuse))
        assert outcomes.count(instance_id) == 1, outcomes
        assert all(isinstance(o, InstanceExistsError) for o in outcomes if o != instance_id)
        state = client.get(instance_id)
        assert state is not None and state.status is OrchestrationStatus.PENDING, state


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
def test_cli_start_refuses_a_finished_id_unless_told_to_replace_it(
    registry: Registry, worker: Worker, client: DurableClient, store_url: str, tmp_path: Path
) -> None:
    _register(registry)
    before = _finished(client, "cli-done", 1)
    runner = CliRunner()
    refused = runner.invoke(cli_app, ["--store", store_url, "start", "echo", "--id", "cli-done"])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: instance 'cli-done' already exists and is COMPLETED")
    assert len(refused.stderr.strip().splitlines()) == 1
    assert client.get("cli-done", history=True) == before
    args = ["--store", store_url, "start", "echo", "--id", "cli-done", "--input", "5"]
    replaced = runner.invoke(cli_app, [*args, "--reuse", "replace-finished"])
    assert replaced.exit_code == 0, replaced.output
    assert client.wait("cli-done", timeout=WAIT).output == 5


def test_sidecar_start_follows_the_sdk_reuse_policy(tmp_path: Path) -> None:
    """The gRPC sidecar: no policy replaces a finished instance (as Durable Task backends do);
    a policy naming no finished status keeps it (ALREADY_EXISTS), checked by the store."""

    def hello(ctx: task.OrchestrationContext, name: str) -> str:
        return f"hello {name}"

    server = running_sidecar(f"sqlite:///{tmp_path / 'sidecar.db'}")
    worker = start_worker(server.address, [hello], [])
    sdk = dt_client.TaskHubGrpcClient(host_address=server.address)
    try:
        sdk.schedule_new_orchestration(hello, input="a", instance_id="s1")
        first = sdk.wait_for_orchestration_completion("s1", timeout=SIDECAR_WAIT)
        assert first is not None and first.serialized_output == '"hello a"'
        keep = pb.OrchestrationIdReusePolicy(replaceableStatus=[pb.ORCHESTRATION_STATUS_FAILED])
        with pytest.raises(grpc.RpcError) as refused:
            sdk.schedule_new_orchestration(hello, input="b", instance_id="s1", reuse_id_policy=keep)
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        kept = sdk.get_orchestration_state("s1")
        assert kept is not None and kept.serialized_output == '"hello a"'
        sdk.schedule_new_orchestration(hello, input="c", instance_id="s1")
        again = sdk.wait_for_orchestration_completion("s1", timeout=SIDECAR_WAIT)
        assert again is not None and again.serialized_output == '"hello c"'
    finally:
        sdk.close()
        worker.stop()
        server.stop()
