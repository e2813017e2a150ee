"""Durable entities through the sidecar: the official SDK's entities on durable_fx stores.

The SDK's own entity e2e tests run in ``test_sdk_conformance.py`` (on SQLite);
these run the same model on every store, and act as workers the SDK would
never be (raw protocol) to test what a misbehaving worker or client sends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import entities, task
from durabletask import worker as dt_worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc
from google.protobuf import wrappers_pb2

from durable_fx.sidecar import SidecarServer
from tests.support.sidecar import (
    SDK_LOG,
    SIDECAR_STORES,
    WAIT,
    Status,
    Steps,
    running_sidecar,
    store_url_for,
    wait_for,
)

Stub = pb_grpc.TaskHubSidecarServiceStub


class Account(entities.DurableEntity):
    def deposit(self, amount: int) -> int:
        balance = self.get_state(int, 0) + amount
        self.set_state(balance)
        return balance

    def withdraw(self, amount: int) -> int:
        balance = self.get_state(int, 0)
        if amount > balance:
            raise ValueError(f"cannot withdraw {amount} from {balance}")
        self.set_state(balance - amount)
        return balance - amount

    def balance(self, _: Any = None) -> int:
        return self.get_state(int, 0)


def account(key: str) -> entities.EntityInstanceId:
    return entities.EntityInstanceId("account", key)


def deposit_then_read(ctx: task.OrchestrationContext, key: str) -> Steps:
    yield ctx.call_entity(account(key), "deposit", input=5)
    return (yield ctx.call_entity(account(key), "balance"))


def overdraw(ctx: task.OrchestrationContext, key: str) -> Steps:
    try:
        yield ctx.call_entity(account(key), "withdraw", input=1_000)
    except task.TaskFailedError as error:
        return error.details.message
    return "withdrew"


def transfer(ctx: task.OrchestrationContext, keys: list[str]) -> Steps:
    source, target = account(keys[0]), account(keys[1])
    with (yield ctx.lock_entities([source, target])):
        balance = yield ctx.call_entity(source, "balance")
        if balance >= 1:
            yield ctx.call_entity(source, "withdraw", input=1)
            yield ctx.call_entity(target, "deposit", input=1)
    return balance


@pytest.fixture(params=SIDECAR_STORES)
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SidecarServer]:
    # Frequent health pings: a raw worker's stream shows it was sent nothing else meanwhile.
    url = store_url_for(request.param, tmp_path, request)
    sidecar = running_sidecar(url, ping_interval=0.5)
    yield sidecar
    sidecar.stop()


@pytest.fixture
def sdk(server: SidecarServer) -> Iterator[dt_client.TaskHubGrpcClient]:
    client = dt_client.TaskHubGrpcClient(host_address=server.address, logger=SDK_LOG)
    yield client
    client.close()


@pytest.fixture
def bank(server: SidecarServer) -> Iterator[dt_worker.TaskHubGrpcWorker]:
    worker = dt_worker.TaskHubGrpcWorker(host_address=server.address, logger=SDK_LOG)
    for orchestrator in (deposit_then_read, overdraw, transfer):
        worker.add_orchestrator(orchestrator)
    worker.add_entity(Account)
    worker.start()
    yield worker
    worker.stop()


@contextlib.contextmanager
def raw_stub(address: str) -> Iterator[Stub]:
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.TaskHubSidecarServiceStub(channel)


def first_request(stream: Any, kind: str) -> pb.WorkItem:
    for item in stream:
        if item.HasField(kind):
            return item  # type: ignore[no-any-return]
    raise AssertionError(f"the stream ended without a {kind}")


def kinds_until_ping(stream: Any) -> list[str]:
    """What a raw stream was sent before its first health ping (a quiet moment)."""
    kinds = []
    for item in stream:
        kind = item.WhichOneof("request")
        if kind == "healthPing":
            break
        kinds.append(kind)
    stream.cancel()
    return kinds


def balance_of(sdk: dt_client.TaskHubGrpcClient, key: str) -> int | None:
    found = sdk.get_entity(account(key), include_state=True)
    return None if found is None else found.get_state(int)


# -- the model, through the official SDK, on every store ------------------------------------------


def test_signals_calls_and_reads_reach_one_state(
    sdk: dt_client.TaskHubGrpcClient, bank: dt_worker.TaskHubGrpcWorker
) -> None:
    for amount in (1, 2, 3):
        sdk.signal_entity(account("a"), "deposit", input=amount)
    wait_for(lambda: balance_of(sdk, "a") == 6)
    instance_id = sdk.schedule_new_orchestration(deposit_then_read, input="a")
    state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    assert state is not None and state.runtime_status == Status.COMPLETED
    assert state.serialized_output == "11"
    metadata = sdk.get_entity(account("a"), include_state=False)
    assert metadata is not None and metadata.id == account("a")


def test_a_failed_operation_fails_its_call_and_keeps_the_state(
    sdk: dt_client.TaskHubGrpcClient, bank: dt_worker.TaskHubGrpcWorker
) -> None:
    sdk.signal_entity(account("b"), "deposit", input=10)
    wait_for(lambda: balance_of(sdk, "b") == 10)
    instance_id = sdk.schedule_new_orchestration(overdraw, input="b")
    state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    assert state is not None and state.runtime_status == Status.COMPLETED
    assert "cannot withdraw 1000 from 10" in json.loads(state.serialized_output or '""')
    assert balance_of(sdk, "b") == 10


def _entity_metadata(stub: Stub, instance_id: str) -> pb.EntityMetadata:
    return stub.GetEntity(pb.GetEntityRequest(instanceId=instance_id)).entity


def test_critical_sections_move_every_unit_exactly_once(
    server: SidecarServer, sdk: dt_client.TaskHubGrpcClient, bank: dt_worker.TaskHubGrpcWorker
) -> None:
    sdk.signal_entity(account("x"), "deposit", input=6)
    wait_for(lambda: balance_of(sdk, "x") == 6)
    # Transfers both ways at once: the sorted lock set keeps them from deadlocking.
    ids = [
        sdk.schedule_new_orchestration(transfer, input=keys)
        for keys in (["x", "y"], ["y", "x"], ["x", "y"], ["x", "y"])
    ]
    for instance_id in ids:
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
        assert state is not None and state.runtime_status == Status.COMPLETED
    assert (balance_of(sdk, "x") or 0) + (balance_of(sdk, "y") or 0) == 6
    # The last unlock travels after its orchestration completed: wait for it. (The SDK's
    # get_locked_by() reads the holder as an entity id, so the raw answer is read.)
    with raw_stub(server.address) as stub:
        wait_for(lambda: not _entity_metadata(stub, "@account@x").HasField("lockedBy"))
        assert _entity_metadata(stub, "@account@x").backlogQueueSize == 0


def test_a_signal_sent_twice_with_one_request_id_is_applied_once(
    server: SidecarServer,
    sdk: dt_client.TaskHubGrpcClient,
    bank: dt_worker.TaskHubGrpcWorker,
) -> None:
    with raw_stub(server.address) as stub:
        for _ in range(3):
            stub.SignalEntity(
                pb.SignalEntityRequest(
                    instanceId="@account@dedupe", name="deposit", input=_text("7"), requestId="r1"
                )
            )
        stub.SignalEntity(
            pb.SignalEntityRequest(
                instanceId="@account@dedupe", name="deposit", input=_text("1"), requestId="r2"
            )
        )
    wait_for(lambda: balance_of(sdk, "dedupe") == 8)


def test_entities_are_queried_by_prefix_a_page_at_a_time(
    sdk: dt_client.TaskHubGrpcClient, bank: dt_worker.TaskHubGrpcWorker
) -> None:
    keys = [f"q{i}" for i in range(5)]
    for key in keys:
        sdk.signal_entity(account(key), "deposit", input=1)
    sdk.signal_entity(account("other"), "deposit", input=1)
    wait_for(lambda: all(balance_of(sdk, key) == 1 for key in keys))
    query = dt_client.EntityQuery(instance_id_starts_with="@Account@q", page_size=2)
    found = sdk.get_all_entities(query)
    assert sorted(str(e.id) for e in found) == [f"@account@{key}" for key in keys]
    assert {e.get_state(int) for e in found} == {1}


def test_cleaning_removes_entities_whose_state_was_deleted(
    sdk: dt_client.TaskHubGrpcClient, bank: dt_worker.TaskHubGrpcWorker
) -> None:
    for key in ("closed", "open"):
        sdk.signal_entity(account(key), "deposit", input=1)
    wait_for(lambda: balance_of(sdk, "closed") == 1 and balance_of(sdk, "open") == 1)
    sdk.signal_entity(account("closed"), "delete")  # DurableEntity's own: drops the state
    wait_for(lambda: balance_of(sdk, "closed") is None)
    cleaned = sdk.clean_entity_storage()
    assert (cleaned.empty_entities_removed, cleaned.orphaned_locks_released) == (1, 0)
    everything = dt_client.EntityQuery(include_transient=True)
    assert [str(e.id) for e in sdk.get_all_entities(everything)] == ["@account@open"]


def test_a_worker_that_asks_for_other_entities_gets_none(
    server: SidecarServer, sdk: dt_client.TaskHubGrpcClient
) -> None:
    sdk.signal_entity(account("filtered"), "deposit", input=1)
    with raw_stub(server.address) as stub:
        filters = pb.WorkItemFilters(entities=[pb.EntityFilter(name="ledger")])
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest(workItemFilters=filters))
        sent = kinds_until_ping(stream)
    assert "entityRequest" not in sent


def test_the_per_operation_shape_carries_the_request_events(tmp_path: Path) -> None:
    server = running_sidecar(f"sqlite:///{tmp_path / 'v2.db'}", entity_work_items="operations")
    sdk = dt_client.TaskHubGrpcClient(host_address=server.address, logger=SDK_LOG)
    try:
        with holding_a_batch(server.address, "@account@v2", "entityRequestV2") as (stub, _, held):
            request = held.entityRequestV2
            event = request.operationRequests[0].entityOperationSignaled
            assert (request.instanceId, event.operation, event.input.value) == (
                "@account@v2",
                "deposit",
                "3",
            )
            stub.AbandonTaskEntityWorkItem(
                pb.AbandonEntityTaskRequest(completionToken=held.completionToken)
            )
        worker = dt_worker.TaskHubGrpcWorker(host_address=server.address, logger=SDK_LOG)
        for orchestrator in (deposit_then_read, transfer):
            worker.add_orchestrator(orchestrator)
        worker.add_entity(Account)
        worker.start()
        try:
            wait_for(lambda: balance_of(sdk, "v2") == 3)
            state = sdk.wait_for_orchestration_completion(
                sdk.schedule_new_orchestration(deposit_then_read, input="v2"), timeout=WAIT
            )
            assert state is not None and state.serialized_output == "8"
            moved = sdk.wait_for_orchestration_completion(
                sdk.schedule_new_orchestration(transfer, input=["v2", "w2"]), timeout=WAIT
            )
            assert moved is not None and moved.runtime_status == Status.COMPLETED
            assert (balance_of(sdk, "v2"), balance_of(sdk, "w2")) == (7, 1)
        finally:
            worker.stop()
    finally:
        sdk.close()
        server.stop()


def test_an_unknown_entity_work_item_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entity_work_items"):
        SidecarServer(f"sqlite:///{tmp_path / 'x.db'}", entity_work_items="rows")  # type: ignore[arg-type]


# -- hostile input: what the SDK would never send ------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        pb.SignalEntityRequest(instanceId="account@a", name="deposit"),
        pb.SignalEntityRequest(instanceId="@account@", name="deposit"),
        pb.SignalEntityRequest(instanceId="@account@a", name=""),
        pb.SignalEntityRequest(instanceId="@account@a", name="x" * 10_000),
    ],
    ids=["no-leading-at", "no-key", "no-operation", "operation-too-long"],
)
def test_a_malformed_signal_is_invalid_argument_naming_the_problem(
    server: SidecarServer, request_: pb.SignalEntityRequest
) -> None:
    with raw_stub(server.address) as stub, pytest.raises(grpc.RpcError) as raised:
        stub.SignalEntity(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    assert "entity" in details or "operation" in details


def test_reading_a_malformed_or_missing_entity(server: SidecarServer) -> None:
    with raw_stub(server.address) as stub:
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetEntity(pb.GetEntityRequest(instanceId="not-an-entity"))
        missing = stub.GetEntity(pb.GetEntityRequest(instanceId="@account@never"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not missing.exists


def test_an_entity_answer_for_an_unknown_token_is_not_found(server: SidecarServer) -> None:
    with raw_stub(server.address) as stub:
        for call in (
            lambda: stub.CompleteEntityTask(pb.EntityBatchResult(completionToken="nope")),
            lambda: stub.AbandonTaskEntityWorkItem(
                pb.AbandonEntityTaskRequest(completionToken="nope")
            ),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@contextlib.contextmanager
def holding_a_batch(
    address: str, instance_id: str, kind: str = "entityRequest"
) -> Iterator[tuple[Stub, Any, pb.WorkItem]]:
    """A raw worker holding the first batch of ``instance_id``'s operations; disconnects after."""
    with raw_stub(address) as stub:
        stub.SignalEntity(
            pb.SignalEntityRequest(instanceId=instance_id, name="deposit", input=_text("3"))
        )
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        try:
            yield stub, stream, first_request(stream, kind)
        finally:
            stream.cancel()


def test_a_batch_given_back_or_failed_whole_is_delivered_again(server: SidecarServer) -> None:
    with holding_a_batch(server.address, "@account@again") as (stub, stream, first):
        batch = first.entityRequest
        assert (batch.instanceId, [op.operation for op in batch.operations]) == (
            "@account@again",
            ["deposit"],
        )
        stub.AbandonTaskEntityWorkItem(
            pb.AbandonEntityTaskRequest(completionToken=first.completionToken)
        )
        second = first_request(stream, "entityRequest")
        failed = pb.TaskFailureDetails(errorType="Crash", errorMessage="the worker broke")
        stub.CompleteEntityTask(
            pb.EntityBatchResult(completionToken=second.completionToken, failureDetails=failed)
        )
        third = first_request(stream, "entityRequest")
    assert second.entityRequest.operations[0].requestId == batch.operations[0].requestId
    assert third.entityRequest.operations[0].requestId == batch.operations[0].requestId
    assert len({first.completionToken, second.completionToken, third.completionToken}) == 3


def test_a_disconnected_worker_s_batch_goes_to_the_next_worker(
    server: SidecarServer, sdk: dt_client.TaskHubGrpcClient
) -> None:
    with holding_a_batch(server.address, "@account@handover"):
        pass  # the raw worker leaves without answering
    worker = dt_worker.TaskHubGrpcWorker(host_address=server.address, logger=SDK_LOG)
    worker.add_entity(Account)
    worker.start()
    try:
        wait_for(lambda: balance_of(sdk, "handover") == 3)
    finally:
        worker.stop()


def answer_a_call(
    server: SidecarServer,
    sdk: dt_client.TaskHubGrpcClient,
    answer: Callable[[str], pb.EntityBatchResult],
) -> dt_client.OrchestrationState:
    """Run ``deposit_then_read`` with its entity batch answered by a raw worker; its end state."""
    instance_id = sdk.schedule_new_orchestration(deposit_then_read, input="raw")
    orchestrator = dt_worker.TaskHubGrpcWorker(host_address=server.address, logger=SDK_LOG)
    orchestrator.add_orchestrator(deposit_then_read)
    only_orchestrations = dt_worker.OrchestrationWorkItemFilter(name="deposit_then_read")
    orchestrator.use_work_item_filters(
        dt_worker.WorkItemFilters(orchestrations=[only_orchestrations])
    )
    orchestrator.start()
    try:
        with raw_stub(server.address) as stub:
            filters = pb.WorkItemFilters(entities=[pb.EntityFilter(name="account")])
            stream = stub.GetWorkItems(pb.GetWorkItemsRequest(workItemFilters=filters))
            held = first_request(stream, "entityRequest")
            stub.CompleteEntityTask(answer(held.completionToken))
            stream.cancel()
        state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    finally:
        orchestrator.stop()
    assert state is not None
    return state


def test_operations_a_worker_left_without_results_fail_their_callers(
    server: SidecarServer, sdk: dt_client.TaskHubGrpcClient
) -> None:
    state = answer_a_call(server, sdk, lambda token: pb.EntityBatchResult(completionToken=token))
    assert state.runtime_status == Status.FAILED
    assert state.failure_details is not None
    assert "without a result" in state.failure_details.message


def test_an_answer_over_the_message_limit_fails_its_operations(tmp_path: Path) -> None:
    server = running_sidecar(f"sqlite:///{tmp_path / 'limit.db'}", max_message_bytes=64 * 1024)
    sdk = dt_client.TaskHubGrpcClient(host_address=server.address, logger=SDK_LOG)
    huge = _text(json.dumps("x" * 200_000))
    done = pb.OperationResult(success=pb.OperationResultSuccess(result=_text("1")))
    try:
        state = answer_a_call(
            server,
            sdk,
            lambda token: pb.EntityBatchResult(
                completionToken=token, entityState=huge, results=[done]
            ),
        )
        assert sdk.get_entity(account("raw")) is None  # the state was not kept
    finally:
        sdk.close()
        server.stop()
    assert state.runtime_status == Status.FAILED
    assert state.failure_details is not None
    # The SDK fails the call with the entity's failure as its message.
    assert "the answer to the batch of entity '@account@raw'" in state.failure_details.message


def test_an_orchestration_that_messages_no_entity_fails_with_why(
    server: SidecarServer, sdk: dt_client.TaskHubGrpcClient
) -> None:
    instance_id = sdk.schedule_new_orchestration("rogue")
    with raw_stub(server.address) as stub:
        stream = stub.GetWorkItems(pb.GetWorkItemsRequest())
        held = first_request(stream, "orchestratorRequest")
        bad = pb.SendEntityMessageAction(
            entityOperationCalled=pb.EntityOperationCalledEvent(
                requestId="r", operation="deposit", targetInstanceId=_text("not-an-entity")
            )
        )
        stub.CompleteOrchestratorTask(
            pb.OrchestratorResponse(
                instanceId=instance_id,
                completionToken=held.completionToken,
                actions=[pb.OrchestratorAction(id=0, sendEntityMessage=bad)],
            )
        )
        stream.cancel()
    state = sdk.wait_for_orchestration_completion(instance_id, timeout=WAIT)
    assert state is not None and state.runtime_status == Status.FAILED
    assert state.failure_details is not None
    assert state.failure_details.error_type == "InvalidEntityMessageError"
    assert "not-an-entity" in state.failure_details.message


def _text(value: str) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=value)
