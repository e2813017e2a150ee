"""Exposing the gRPC sidecar safely: token, TLS, the warning, message limits, oversized work.

Review finding 8 (probes F1-F5, S0-S2): the sidecar had no authentication
and no TLS, took 256 MiB messages (a 50 MiB start peaked near 1 GB), and sent
work items larger than a default SDK worker can receive, which broke the
worker's stream in a loop until an unrelated instance was poisoned. These
tests drive it with the official SDK, the protocol's generated stubs (for
what no SDK would send) and the ``durable-fx sidecar`` command.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import task
from durabletask import worker as dt_worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc
from google.protobuf import empty_pb2, wrappers_pb2

from durable_fx.sidecar import SidecarServer
from tests.support.sidecar import (
    SDK_LOG,
    WAIT,
    Status,
    Steps,
    running_sidecar,
    start_worker,
    wait_for,
)
from tests.support.tls import self_signed

TOKEN = "s3cret-token"
MiB = 1024 * 1024


# -- the orchestrations ----------------------------------------------------------------------


def blob(ctx: task.ActivityContext, size: int) -> str:
    return "x" * size


def two_blobs(ctx: task.OrchestrationContext, size: int) -> Steps:
    """Each result fits in a message; the history holding both does not."""
    first = yield ctx.call_activity(blob, input=size)
    second = yield ctx.call_activity(blob, input=size)
    return len(first) + len(second)


def hello(ctx: task.OrchestrationContext, name: str) -> str:
    return f"hello {name}"


def echo(ctx: task.ActivityContext, value: str) -> int:
    return len(value)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sidecar.db'}"


@pytest.fixture
def sidecars(store_url: str) -> Iterator[list[SidecarServer]]:
    started: list[SidecarServer] = []
    yield started
    for server in started:
        server.stop()


def serve(sidecars: list[SidecarServer], store_url: str, **options: Any) -> SidecarServer:
    server = running_sidecar(store_url, **options)
    sidecars.append(server)
    return server


@contextlib.contextmanager
def sdk_client(address: str, **options: Any) -> Iterator[dt_client.TaskHubGrpcClient]:
    sdk = dt_client.TaskHubGrpcClient(host_address=address, logger=SDK_LOG, **options)
    try:
        yield sdk
    finally:
        sdk.close()


@contextlib.contextmanager
def sdk_worker(
    address: str, orchestrators: list[Any], activities: list[Any], **options: Any
) -> Iterator[dt_worker.TaskHubGrpcWorker]:
    worker = start_worker(address, orchestrators, activities, **options)
    try:
        yield worker
    finally:
        worker.stop()


@contextlib.contextmanager
def raw_stub(
    address: str, *, limit: int | None = None
) -> Iterator[pb_grpc.TaskHubSidecarServiceStub]:
    options = [] if limit is None else [("grpc.max_receive_message_length", limit)]
    with grpc.insecure_channel(address, options=options) as channel:
        yield pb_grpc.TaskHubSidecarServiceStub(channel)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# -- F1, F2: a token on every call -----------------------------------------------------------


def test_without_the_token_every_call_is_unauthenticated_and_nothing_runs(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    server = serve(sidecars, store_url, auth_token=TOKEN)
    for metadata, says in [(None, "needs 'authorization: Bearer"), (bearer("wrong"), "not this")]:
        with sdk_client(server.address, metadata=metadata) as sdk:
            with pytest.raises(grpc.RpcError) as start:
                sdk.schedule_new_orchestration(hello, input="x", instance_id="anon-1")
            with pytest.raises(grpc.RpcError) as read:
                sdk.get_orchestration_state("anon-1")
        assert start.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert read.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert says in str(start.value.details())
    with raw_stub(server.address) as stub:  # the streaming call is checked too
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        with pytest.raises(grpc.RpcError) as work:
            next(stream)
    assert work.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with sdk_client(server.address, metadata=bearer(TOKEN)) as sdk:
        assert sdk.get_orchestration_state("anon-1") is None  # nothing was started


def test_an_sdk_client_and_worker_with_the_token_run_an_orchestration(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    server = serve(sidecars, store_url, auth_token=TOKEN)
    with (
        sdk_worker(server.address, [hello], [], metadata=bearer(TOKEN)),
        sdk_client(server.address, metadata=bearer(TOKEN)) as sdk,
    ):
        instance_id = sdk.schedule_new_orchestration(hello, input="ada")
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    assert state is not None
    assert state.runtime_status == Status.COMPLETED, state.failure_details
    assert state.get_output() == "hello ada"


# -- TLS ---------------------------------------------------------------------------------------


def test_over_tls_the_sdk_runs_with_a_private_ca_and_plaintext_is_refused(
    sidecars: list[SidecarServer], store_url: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    server = serve(sidecars, store_url, tls_cert=cert, tls_key=key, auth_token=TOKEN)
    # The SDK's secure_channel=True trusts only the system's roots; with a private CA
    # it takes a channel, and gRPC's call credentials add the bearer token to each call.
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()),
        grpc.access_token_call_credentials(TOKEN),
    )
    client_channel = grpc.secure_channel(server.address, credentials)
    worker_channel = grpc.secure_channel(server.address, credentials)
    try:
        with (
            sdk_worker(server.address, [hello], [], channel=worker_channel),
            sdk_client(server.address, channel=client_channel) as sdk,
        ):
            instance_id = sdk.schedule_new_orchestration(hello, input="tls")
            state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        client_channel.close()
        worker_channel.close()
    assert state is not None
    assert state.get_output() == "hello tls"
    with raw_stub(server.address) as plaintext, pytest.raises(grpc.RpcError) as refused:
        plaintext.Hello(empty_pb2.Empty(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the command line: bad settings, the open-bind warning, bounded memory ------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "durable_fx.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT, check=False)


@pytest.mark.slow
def test_the_sidecar_command_refuses_bad_tls_files_and_limits_in_one_line(
    store_url: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        (["--tls-cert", str(tmp_path / "missing.crt"), "--tls-key", str(key)], "missing.crt"),
        (["--tls-cert", str(cert)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(garbage), "--tls-key", str(key)], "must be PEM files"),
        (["--tls-cert", str(cert), "--tls-key", str(garbage)], "must be PEM files"),
        (["--max-message-bytes", "100"], "--max-message-bytes must be between"),
    ]
    for flags, says in cases:
        result = run_cli("--store", store_url, "sidecar", "--port", "0", *flags)
        assert result.returncode == 2, (flags, result.stderr)
        assert result.stderr.startswith("error: "), result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert says in result.stderr


@contextlib.contextmanager
def sidecar_command(
    store_url: str, *flags: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """``durable-fx sidecar`` on a free port: the process, its address, and its log.

    The log is complete once the block has ended (the process is stopped then).
    """
    command = [sys.executable, "-m", "durable_fx.cli", "--store", store_url, "sidecar"]
    process = subprocess.Popen(
        [*command, "--port", "0", *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    stderr = process.stderr
    assert stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    try:
        address = ""
        for line in stderr:
            lines.append(line)
            if "listening on" in line:
                address = line.split("listening on ")[1].split()[0]
                break
        assert address, "".join(lines)
        reader.start()
        yield process, address, lines
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=WAIT)
        if reader.is_alive():
            reader.join(timeout=WAIT)
        stderr.close()


@pytest.mark.slow
def test_an_open_bind_without_tls_or_token_warns_and_names_the_flags(store_url: str) -> None:
    with sidecar_command(store_url, "--host", "0.0.0.0") as (_, _, lines):
        pass
    warning = next(line for line in lines if "WARNING" in line)
    assert "0.0.0.0" in warning
    assert "DURABLE_FX_SIDECAR_TOKEN" in warning
    assert "--tls-cert" in warning
    token_only = {"DURABLE_FX_SIDECAR_TOKEN": TOKEN}  # read from the environment
    with sidecar_command(store_url, "--host", "0.0.0.0", env=token_only) as (_, _, lines):
        pass
    warning = next(line for line in lines if "WARNING" in line)
    assert "no TLS" in warning
    assert "clear text" in warning
    assert "DURABLE_FX_SIDECAR_TOKEN" not in warning
    assert TOKEN not in "".join(lines)


@pytest.mark.slow
def test_loopback_or_a_token_with_tls_does_not_warn(store_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    secured = ("--host", "0.0.0.0", "--tls-cert", str(cert), "--tls-key", str(key))
    for flags, env in [((), {}), (secured, {"DURABLE_FX_SIDECAR_TOKEN": TOKEN})]:
        with sidecar_command(store_url, *flags, env=env) as (_, _, lines):
            pass
        assert not [line for line in lines if "WARNING" in line], lines


@pytest.mark.slow
def test_a_50_mib_start_is_refused_before_the_sidecar_buffers_it(store_url: str) -> None:
    refusals = []
    with sidecar_command(store_url) as (process, address, _):
        # 50 MiB is over gRPC's hard cap (20 MiB); 19 MiB reaches the sidecar's own check.
        for size, instance_id in [(50 * MiB, "big"), (19 * MiB, "below-the-cap")]:
            with sdk_client(address) as sdk, pytest.raises(grpc.RpcError) as refused:
                sdk.schedule_new_orchestration(hello, input="x" * size, instance_id=instance_id)
            refusals.append(refused.value)
        peak_kib = _peak_rss_kib(process.pid)
        with sdk_client(address) as sdk:
            assert sdk.get_orchestration_state("big") is None
            assert sdk.get_orchestration_state("below-the-cap") is None
    assert [r.code() for r in refusals] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert "vs. 20971520)" in str(refusals[0].details())  # the size and the hard cap
    assert "vs. 4194304): the sidecar's --max-message-bytes" in str(refusals[1].details())
    # Before the limit, the 50 MiB start took the sidecar to about 956 MB (probe S1).
    assert peak_kib < 200_000, f"the sidecar peaked at {peak_kib} kB"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_oversized_requests_are_refused_with_the_size_and_gRPC_keeps_a_hard_cap(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    limit = 64 * 1024
    server = serve(sidecars, store_url, max_message_bytes=limit)
    with raw_stub(server.address) as stub:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="ev", name="hello"))
        big = wrappers_pb2.StringValue(value="x" * 100_000)
        with pytest.raises(grpc.RpcError) as start:
            stub.StartInstance(pb.CreateInstanceRequest(instanceId="big", name="h", input=big))
        with pytest.raises(grpc.RpcError) as event:
            stub.RaiseEvent(pb.RaiseEventRequest(instanceId="ev", name="e", input=big))
        # A completion up to the hard cap reaches its handler (which fails its work
        # item); over the cap, max(4 * limit, limit + 16 MiB), gRPC refuses it unread.
        huge = wrappers_pb2.StringValue(value="x" * (limit + 16 * MiB))
        with pytest.raises(grpc.RpcError) as completion:
            stub.CompleteActivityTask(pb.ActivityResponse(completionToken="t", result=huge))
        assert stub.GetInstance(pb.GetInstanceRequest(instanceId="big")).exists is False
    for refused in (start, event):
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "vs. 65536): the sidecar's --max-message-bytes" in str(refused.value.details())
    assert completion.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {limit + 16 * MiB})" in str(completion.value.details())


# -- S2: an oversized work item fails its own instance, not the worker's stream -------------


@pytest.mark.slow
def test_an_oversized_history_fails_its_instance_and_spares_the_others(
    sidecars: list[SidecarServer], store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable_fx.sidecar")
    server = serve(sidecars, store_url)  # default limit: what a default SDK worker receives
    big_state = run_big_then_small(server, two_blobs, int(2.5 * MiB), [blob])
    assert big_state.runtime_status == Status.FAILED
    assert big_state.failure_details is not None
    message = big_state.failure_details.message
    assert "the worker accepts at most 4194304" in message
    assert "--max-message-bytes" in message
    assert big_state.failure_details.error_type == "WorkItemTooLargeError"
    connects = [r for r in caplog.records if r.getMessage().startswith("worker connected")]
    assert len(connects) == 1, "the worker's stream broke and reconnected"


def run_big_then_small(
    server: SidecarServer, big: Any, size: int, activities: list[Any]
) -> dt_client.OrchestrationState:
    """Run ``big`` with ``size``, then ``hello``, on one SDK worker: ``big``'s final state.

    Whatever ``big`` met, the small instance after it completes on the same
    worker and nothing is poisoned.
    """
    with (
        sdk_worker(server.address, [big, hello], activities),
        sdk_client(server.address) as sdk,
    ):
        big_id = sdk.schedule_new_orchestration(big, input=size)
        big_state = sdk.wait_for_orchestration_completion(big_id, timeout=WAIT)
        small = sdk.schedule_new_orchestration(hello, input="small")
        small_state = sdk.wait_for_orchestration_completion(small, timeout=WAIT)
    assert small_state is not None
    assert small_state.runtime_status == Status.COMPLETED
    assert _poisoned(server) == []
    assert big_state is not None
    return big_state


def _poisoned(server: SidecarServer) -> list[Any]:
    import asyncio

    return asyncio.run(server.store.poisoned_messages())


def test_an_activity_too_large_for_the_worker_is_never_sent_and_fails_its_task(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    limit = 64 * 1024
    server = serve(sidecars, store_url, max_message_bytes=limit)
    received: list[pb.WorkItem] = []
    ended: list[grpc.RpcError] = []
    with raw_stub(server.address, limit=limit) as stub:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="act", name="fan"))
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        reader = threading.Thread(target=_drain, args=(stream, received, ended), daemon=True)
        try:
            first = _next_work(stream)
            # The largest scheduling answer the sidecar takes: its activity request,
            # which adds the execution id, is larger than the worker can receive.
            stub.CompleteOrchestratorTask(_schedule_filling(first, limit))
            reader.start()
            state = _wait_until_failed(stub, "act")
        finally:
            stream.cancel()
            if reader.is_alive():
                reader.join(timeout=WAIT)
    with raw_stub(server.address) as stub:  # a history chunk may be larger than the worker's limit
        history = [e for chunk in _history(stub, "act") for e in chunk.events]
    assert not [item for item in received if not item.HasField("healthPing")]
    # Ended by our cancel, not by an item over the stream's limit (RESOURCE_EXHAUSTED).
    assert [error.code() for error in ended] == [grpc.StatusCode.CANCELLED]
    task_failed = [e.taskFailed.failureDetails for e in history if e.HasField("taskFailed")]
    assert [d.errorType for d in task_failed] == ["WorkItemTooLargeError"]
    assert "the work item of activity 'echo'" in task_failed[0].errorMessage
    assert f"the worker accepts at most {limit}" in task_failed[0].errorMessage
    # The history now holds that input too, so the next episode could not be sent either.
    assert state.failureDetails.errorType == "WorkItemTooLargeError"
    assert "the work item of instance 'act'" in state.failureDetails.errorMessage


def _drain(stream: Any, into: list[pb.WorkItem], ended: list[grpc.RpcError]) -> None:
    try:
        into.extend(stream)
    except grpc.RpcError as error:  # cancelled at the end
        ended.append(error)


def _wait_until_failed(stub: pb_grpc.TaskHubSidecarServiceStub, instance_id: str) -> Any:
    request = pb.GetInstanceRequest(instanceId=instance_id)
    states: list[Any] = []

    def failed() -> bool:
        states.append(stub.GetInstance(request).orchestrationState)
        return bool(states[-1].orchestrationStatus == pb.ORCHESTRATION_STATUS_FAILED)

    wait_for(failed)
    return states[-1]


def _history(stub: pb_grpc.TaskHubSidecarServiceStub, instance_id: str) -> list[Any]:
    return list(stub.StreamInstanceHistory(pb.StreamInstanceHistoryRequest(instanceId=instance_id)))


def _next_work(stream: Any) -> pb.WorkItem:
    for item in stream:
        if not item.HasField("healthPing"):
            return item  # type: ignore[no-any-return]
    raise AssertionError("the stream ended")


def _schedule_filling(work: pb.WorkItem, limit: int) -> pb.OrchestratorResponse:
    """A response scheduling one activity whose size is exactly ``limit`` bytes."""

    def response(size: int) -> pb.OrchestratorResponse:
        schedule = pb.ScheduleTaskAction(
            name="echo", input=wrappers_pb2.StringValue(value='"' + "x" * size + '"')
        )
        return pb.OrchestratorResponse(
            instanceId=work.orchestratorRequest.instanceId,
            completionToken=work.completionToken,
            actions=[pb.OrchestratorAction(id=1, scheduleTask=schedule)],
        )

    size = limit - 100
    while response(size + 1).ByteSize() <= limit:
        size += 1
    return response(size)


# -- answers over the limit: a result or an episode fails its own item, the worker carries on ----


def guarded_blob(ctx: task.OrchestrationContext, size: int) -> Steps:
    """Calls an activity whose result is over the limit and reports how it failed."""
    try:
        yield ctx.call_activity(blob, input=size)
    except task.TaskFailedError as failed:
        return f"{failed.details.error_type}: {failed.details.message}"
    return "the result arrived"


def loud(ctx: task.OrchestrationContext, size: int) -> str:
    """An orchestrator whose answer (its custom status) is over the limit."""
    ctx.set_custom_status("x" * size)
    return "done"


@pytest.mark.slow
def test_a_result_over_the_limit_fails_its_activity_and_the_worker_carries_on(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    server = serve(sidecars, store_url, max_message_bytes=MiB)
    big_state = run_big_then_small(server, guarded_blob, int(1.5 * MiB), [blob])
    assert big_state.runtime_status == Status.COMPLETED, big_state.failure_details
    caught = big_state.get_output()
    assert caught.startswith("ResultTooLargeError: the result of activity 'blob'"), caught
    assert f"the sidecar takes at most {MiB}" in caught
    assert "--max-message-bytes" in caught


@pytest.mark.slow
def test_an_orchestrator_answer_over_the_limit_fails_its_instance(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    server = serve(sidecars, store_url, max_message_bytes=MiB)
    big_state = run_big_then_small(server, loud, int(1.5 * MiB), [])
    assert big_state.runtime_status == Status.FAILED
    assert big_state.failure_details is not None
    assert big_state.failure_details.error_type == "ResultTooLargeError"
    message = big_state.failure_details.message
    assert f"the answer of instance {big_state.instance_id!r}'s orchestrator" in message
    assert f"the sidecar takes at most {MiB}" in message
    assert "--max-message-bytes" in message
    assert big_state.serialized_custom_status is None  # the oversized status was not kept


def test_a_partial_answer_chunk_over_the_limit_fails_its_instance(
    sidecars: list[SidecarServer], store_url: str
) -> None:
    limit = 64 * 1024
    server = serve(sidecars, store_url, max_message_bytes=limit)
    with raw_stub(server.address) as stub:
        stub.StartInstance(pb.CreateInstanceRequest(instanceId="chunked", name="fan"))
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        try:
            work = _next_work(stream)
            chunk = _schedule_filling(work, 2 * limit)
            chunk.isPartial = True  # SDKs that split large answers send chunks like this
            assert stub.CompleteOrchestratorTask(chunk) == pb.CompleteTaskResponse()
            state = _wait_until_failed(stub, "chunked")
        finally:
            stream.cancel()
    assert state.failureDetails.errorType == "ResultTooLargeError"
    assert "the answer of instance 'chunked'" in state.failureDetails.errorMessage
    assert f"the sidecar takes at most {limit}" in state.failureDetails.errorMessage
