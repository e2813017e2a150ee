"""Work-item dispatch through the sidecar: release on disconnect, abandon, tokens, leases, restarts.

Some tests speak the protocol directly (the SDK's generated stub) to act as a
worker that misbehaves: one that disconnects holding work, or gives it back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc
from google.protobuf import empty_pb2

from durable_fx.sidecar import SidecarServer
from tests.support.sidecar import (
    SDK_LOG,
    SIDECAR_STORES,
    WAIT,
    RunCounter,
    Status,
    Steps,
    free_port,
    running_sidecar,
    start_worker,
    store_url_for,
    wait_for,
)

Stub = pb_grpc.TaskHubSidecarServiceStub

_runs = RunCounter()


def step(ctx: task.ActivityContext, value: int) -> int:
    _runs.add(f"{ctx.orchestration_id}/{ctx.task_id}")
    return value + 1


def slow_step(ctx: task.ActivityContext, value: int) -> int:
    _runs.add(f"{ctx.orchestration_id}/{ctx.task_id}")
    time.sleep(0.4)
    return value + 1


def long_step(ctx: task.ActivityContext, seconds: float) -> str:
    _runs.add(ctx.orchestration_id)
    time.sleep(seconds)
    return "done"


def steps(ctx: task.OrchestrationContext, count: int) -> Steps:
    value = 0
    for _ in range(count):
        value = yield ctx.call_activity(step, input=value)
    return value


def slow_steps(ctx: task.OrchestrationContext, count: int) -> Steps:
    value = 0
    for _ in range(count):
        value = yield ctx.call_activity(slow_step, input=value)
    return value


def one_long_step(ctx: task.OrchestrationContext, seconds: float) -> Steps:
    return (yield ctx.call_activity(long_step, input=seconds))


def impatient_step(ctx: task.OrchestrationContext, seconds: float) -> Steps:
    try:
        return (yield ctx.call_activity(long_step, input=seconds))
    except task.TaskFailedError as error:
        return [error.details.error_type, error.details.message]


@pytest.fixture(params=SIDECAR_STORES)
def store_url(tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return store_url_for(request.param, tmp_path, request)


@pytest.fixture
def make_sidecar(store_url: str) -> Iterator[Callable[..., SidecarServer]]:
    servers: list[SidecarServer] = []

    def make(**options: Any) -> SidecarServer:
        server = running_sidecar(store_url, **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def sdk_for() -> Iterator[Callable[[str], dt_client.TaskHubGrpcClient]]:
    clients: list[dt_client.TaskHubGrpcClient] = []

    def make(address: str) -> dt_client.TaskHubGrpcClient:
        clients.append(dt_client.TaskHubGrpcClient(host_address=address, logger=SDK_LOG))
        return clients[-1]

    yield make
    for sdk in clients:
        sdk.close()


@contextlib.contextmanager
def raw_stub(address: str) -> Iterator[Stub]:
    """The protocol's generated stub, to act as a worker the SDK would never be; closed after."""
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.TaskHubSidecarServiceStub(channel)


@contextlib.contextmanager
def holding_an_episode(address: str) -> Iterator[tuple[Stub, Any, pb.WorkItem]]:
    """A raw worker's stub, its stream, and the first episode sent on it; disconnects after."""
    with raw_stub(address) as stub:
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        try:
            yield stub, stream, first_request(stream, "orchestratorRequest")
        finally:
            stream.cancel()


Scheduled = tuple[SidecarServer, dt_client.TaskHubGrpcClient, str]


@pytest.fixture
def schedule_steps(
    make_sidecar: Callable[..., SidecarServer],
    sdk_for: Callable[[str], dt_client.TaskHubGrpcClient],
) -> Callable[..., Scheduled]:
    """Starts a sidecar (with the options given), an SDK client, and a ``steps`` instance."""

    def schedule(value: int, **options: Any) -> Scheduled:
        server = make_sidecar(**options)
        sdk = sdk_for(server.address)
        return server, sdk, sdk.schedule_new_orchestration(steps, input=value)

    return schedule


def first_request(stream: Any, kind: str) -> pb.WorkItem:
    """The first work item of ``kind`` on a raw stream (health pings skipped)."""
    for item in stream:
        if item.HasField(kind):
            return item  # type: ignore[no-any-return]
    raise AssertionError(f"the stream ended without a {kind}")


def test_a_disconnected_worker_s_work_goes_to_another_at_once(
    schedule_steps: Callable[..., Scheduled],
) -> None:
    # Only the release can free the episode in time: its lease outlasts the test.
    server, sdk, instance_id = schedule_steps(2, lease=timedelta(minutes=10))
    with holding_an_episode(server.address) as (_, _, taken):
        assert taken.orchestratorRequest.instanceId == instance_id
    worker = start_worker(server.address, [steps], [step])
    try:
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        worker.stop()
    assert state is not None and state.get_output() == 2


def test_an_abandoned_work_item_is_delivered_again(
    schedule_steps: Callable[..., Scheduled],
) -> None:
    server, _, instance_id = schedule_steps(1)
    with holding_an_episode(server.address) as (stub, stream, first):
        stub.AbandonTaskOrchestratorWorkItem(
            pb.AbandonOrchestrationTaskRequest(completionToken=first.completionToken)
        )
        again = first_request(stream, "orchestratorRequest")
    assert again.orchestratorRequest.instanceId == instance_id
    assert again.completionToken != first.completionToken


def test_a_response_in_chunks_is_committed_whole(
    schedule_steps: Callable[..., Scheduled],
) -> None:
    server, _, instance_id = schedule_steps(1)
    with holding_an_episode(server.address) as (stub, stream, first):
        schedule = pb.OrchestratorAction(id=1, scheduleTask=pb.ScheduleTaskAction(name="step"))
        for part in ([schedule], []):
            stub.CompleteOrchestratorTask(
                pb.OrchestratorResponse(
                    instanceId=instance_id,
                    completionToken=first.completionToken,
                    actions=part,
                    isPartial=bool(part),
                )
            )
        activity = first_request(stream, "activityRequest").activityRequest
    assert (activity.name, activity.taskId) == ("step", 1)
    assert activity.orchestrationInstance.instanceId == instance_id


@pytest.mark.parametrize(
    "complete",
    [
        lambda stub: stub.CompleteActivityTask(pb.ActivityResponse(completionToken="nope")),
        lambda stub: stub.CompleteOrchestratorTask(pb.OrchestratorResponse(completionToken="nope")),
    ],
    ids=["activity", "orchestration"],
)
def test_completions_with_unknown_tokens_are_not_found(
    make_sidecar: Callable[..., SidecarServer], complete: Callable[[Stub], object]
) -> None:
    server = make_sidecar()
    with raw_stub(server.address) as stub, pytest.raises(grpc.RpcError) as raised:
        complete(stub)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "completion token 'nope'" in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("complete", "named"),
    [
        (
            lambda stub: stub.CompleteActivityTask(
                pb.ActivityResponse(instanceId="nobody", taskId=3)
            ),
            "task 3 of instance 'nobody'",
        ),
        (
            lambda stub: stub.CompleteOrchestratorTask(
                pb.OrchestratorResponse(instanceId="nobody")
            ),
            "instance 'nobody'",
        ),
    ],
    ids=["activity", "orchestration"],
)
def test_completions_without_a_token_for_nothing_held_are_not_found(
    make_sidecar: Callable[..., SidecarServer], complete: Callable[[Stub], object], named: str
) -> None:
    """SDKs without completion tokens are matched by instance (and task): nothing held, 404."""
    server = make_sidecar()
    with raw_stub(server.address) as stub, pytest.raises(grpc.RpcError) as raised:
        complete(stub)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"without a completion token names {named}" in (raised.value.details() or "")


def test_an_idle_stream_gets_health_pings(make_sidecar: Callable[..., SidecarServer]) -> None:
    server = make_sidecar(ping_interval=0.1)
    with raw_stub(server.address) as stub:
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        assert next(stream).HasField("healthPing")
        stream.cancel()


@pytest.mark.slow  # waits out real leases (1.5 s) in the sidecar and the SDK
def test_a_long_activity_keeps_its_lease(
    make_sidecar: Callable[..., SidecarServer],
    sdk_for: Callable[[str], dt_client.TaskHubGrpcClient],
) -> None:
    server = make_sidecar(lease=timedelta(seconds=1.5))
    sdk = sdk_for(server.address)
    worker = start_worker(server.address, [one_long_step], [long_step])
    try:
        instance_id = sdk.schedule_new_orchestration(one_long_step, input=3.0)
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        worker.stop()
    assert state is not None and state.get_output() == "done"
    assert _runs[instance_id] == 1  # renewed: never handed to anyone else meanwhile


def test_an_activity_held_past_the_activity_timeout_fails_and_frees_its_orchestration(
    make_sidecar: Callable[..., SidecarServer],
    sdk_for: Callable[[str], dt_client.TaskHubGrpcClient],
) -> None:
    """The protocol has no heartbeat: the sidecar's timeout is what frees a hung SDK activity."""
    server = make_sidecar(activity_timeout=timedelta(seconds=0.5))
    sdk = sdk_for(server.address)
    worker = start_worker(server.address, [impatient_step], [long_step])
    try:
        instance_id = sdk.schedule_new_orchestration(impatient_step, input=3.0)
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        worker.stop()
    assert state is not None, "no state"
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    error_type, message = state.get_output()
    assert error_type == "ActivityTimeoutError"
    assert "long_step did not finish within 0:00:00.500000 at the worker" in message


@pytest.mark.slow  # waits out real leases (1.5 s) in the sidecar and the SDK
def test_an_episode_held_past_its_lease_stays_with_its_worker(
    schedule_steps: Callable[..., Scheduled], make_sidecar: Callable[..., SidecarServer]
) -> None:
    lease = timedelta(seconds=1.5)
    # Health pings let the raw streams below notice the time.
    server, _, instance_id = schedule_steps(1, lease=lease, ping_interval=0.2)
    # Another sidecar on the same store, whose worker would take a lost instance over.
    other = make_sidecar(lease=lease, ping_interval=0.2)
    with holding_an_episode(server.address) as (stub, stream, held):
        with raw_stub(other.address) as other_stub:
            watching = other_stub.GetWorkItems(pb.GetWorkItemsRequest())
            try:
                taken = work_sent(watching, seconds=3 * lease.total_seconds())
            finally:
                watching.cancel()
        assert taken == [], "an episode held past its lease went to another sidecar's worker"
        schedule = pb.OrchestratorAction(id=1, scheduleTask=pb.ScheduleTaskAction(name="step"))
        stub.CompleteOrchestratorTask(
            pb.OrchestratorResponse(
                instanceId=instance_id, completionToken=held.completionToken, actions=[schedule]
            )
        )
        after = work_sent(stream, seconds=WAIT, first_only=True)
    # Next on the holder's stream is the activity the late completion scheduled: the
    # instance was not handed out again meanwhile, and the commit counted.
    kinds = [item.WhichOneof("request") for item in after]
    assert kinds == ["activityRequest"], f"handed out again, or its commit was lost: {after}"
    activity = after[0].activityRequest
    assert (activity.name, activity.taskId) == ("step", 1)
    assert activity.orchestrationInstance.instanceId == instance_id


def work_sent(stream: Any, *, seconds: float, first_only: bool = False) -> list[pb.WorkItem]:
    """Work a raw stream sends within about ``seconds`` (it needs pings to notice the time)."""
    deadline = time.monotonic() + seconds
    work = []
    for item in stream:
        if not item.HasField("healthPing"):
            work.append(item)
            if first_only:
                break
        if time.monotonic() >= deadline:
            break
    return work


def test_client_errors_map_to_grpc_status_codes(
    make_sidecar: Callable[..., SidecarServer],
    sdk_for: Callable[[str], dt_client.TaskHubGrpcClient],
) -> None:
    server = make_sidecar()
    sdk = sdk_for(server.address)
    assert sdk.get_orchestration_state("missing") is None
    with pytest.raises(grpc.RpcError) as missing:
        sdk.raise_orchestration_event("missing", "e")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with raw_stub(server.address) as stub:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="dup", name="steps"))
        with pytest.raises(grpc.RpcError) as duplicate:
            stub.StartInstance(pb.CreateInstanceRequest(instanceId="dup", name="steps"))
        with pytest.raises(grpc.RpcError) as bad_id:
            stub.StartInstance(pb.CreateInstanceRequest(instanceId="a/b", name="steps"))
        with pytest.raises(grpc.RpcError) as running:
            stub.PurgeInstances(pb.PurgeInstancesRequest(instanceId="dup"))
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert running.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(TimeoutError):
        sdk.wait_for_orchestration_completion("dup", timeout=0.3)


# -- restarts: the sidecar as a process of its own -------------------------------------------------


@pytest.fixture
def sidecar_process(store_url: str) -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(port: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "durable_fx.cli", "--store", store_url, "sidecar"]
        command += ["--port", str(port), "--lease", "2", "--log-level", "WARNING"]
        process = subprocess.Popen(command)
        processes.append(process)
        _wait_until_serving(f"127.0.0.1:{port}", process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def _wait_until_serving(address: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT
    with raw_stub(address) as stub:
        while True:
            assert process.poll() is None, f"the sidecar exited with {process.returncode}"
            try:
                stub.Hello(empty_pb2.Empty(), timeout=0.5)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_worker_reconnects_after_the_sidecar_restarts(
    sidecar_process: Callable[[int], subprocess.Popen[bytes]],
    sdk_for: Callable[[str], dt_client.TaskHubGrpcClient],
    stop: signal.Signals,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = sidecar_process(port)
    sdk = sdk_for(address)
    worker = start_worker(address, [slow_steps], [slow_step])
    try:
        instance_id = sdk.schedule_new_orchestration(slow_steps, input=4)
        wait_for(lambda: f"{instance_id}/1" in _runs)  # mid-run: an activity in flight
        os.kill(process.pid, stop)
        assert process.wait(timeout=WAIT) in (0, -signal.SIGKILL)
        sidecar_process(port)  # same store, same port: the worker finds it again
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        worker.stop()
    assert state is not None
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    assert state.get_output() == 4


# -- the command line ------------------------------------------------------------------------------


def test_the_sidecar_command_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from durable_fx.cli import app

    runner = CliRunner()
    bad_store = runner.invoke(app, ["--store", "bogus://nowhere", "sidecar", "--port", "0"])
    assert bad_store.exit_code == 2, bad_store.output
    assert bad_store.stderr.startswith("error: ")
    assert len(bad_store.stderr.splitlines()) == 1
    with socket_in_use() as port:
        busy = runner.invoke(
            app, ["--store", f"sqlite:///{tmp_path / 'x.db'}", "sidecar", "--port", str(port)]
        )
    assert busy.exit_code == 1, busy.output
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr


@contextlib.contextmanager
def socket_in_use() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]
