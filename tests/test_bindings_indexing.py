"""DurableApp as the Functions host indexes it: functions, bindings, names from settings.

The last test runs ``shared/tools/check_function_app.py`` (the real Python
worker's indexing plus the host's name rules) on the repository's
``function_app.py``.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

import durable_fx
from durable_fx import AsyncDurableClient, DurableApp, DurableClient, Orchestrator, Registry, Worker
from durable_fx.bindings import hmac_sha256

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO.parent / "shared" / "tools" / "check_function_app.py"


def bindings_of(app: func.FunctionApp) -> dict[str, list[dict[str, Any]]]:
    """Each function's raw bindings, as the worker sends them to the host."""
    return {
        str(f.get_function_name()): [json.loads(raw) for raw in f.get_raw_bindings()]
        for f in app.get_functions()
    }


def test_durable_app_is_a_function_app_with_the_durable_functions() -> None:
    app = DurableApp()
    assert isinstance(app, func.FunctionApp)
    found = bindings_of(app)
    # One control function per partition (4 by default), and one on the legacy queue.
    controls = {f"dfx_control_{i:02d}": f"durablefx-control-{i:02d}" for i in range(4)}
    controls["dfx_control"] = "durablefx-control"
    for name, queue in controls.items():
        assert found[name] == [
            {
                "direction": "IN",
                "type": "queueTrigger",
                "name": "msg",
                "queueName": queue,
                "connection": "AzureWebJobsStorage",
            }
        ]
    assert sorted(n for n in found if n.startswith("dfx_control")) == sorted(controls)
    assert found["dfx_work_items"][0]["queueName"] == "durablefx-workitems"
    routes = {
        name: (b[0]["route"], b[0]["methods"], b[0]["authLevel"])
        for name, b in found.items()
        if b[0]["type"] == "httpTrigger"
    }
    assert routes == {
        "dfx_start": ("orchestrators/{name}/{instanceId?}", ["POST"], "FUNCTION"),
        "dfx_status": ("instances/{instanceId}", ["GET"], "FUNCTION"),
        "dfx_list": ("instances", ["GET"], "FUNCTION"),
        "dfx_raise_event": ("instances/{instanceId}/raiseEvent/{eventName}", ["POST"], "FUNCTION"),
        "dfx_terminate": ("instances/{instanceId}/terminate", ["POST"], "FUNCTION"),
        "dfx_suspend": ("instances/{instanceId}/suspend", ["POST"], "FUNCTION"),
        "dfx_resume": ("instances/{instanceId}/resume", ["POST"], "FUNCTION"),
        "dfx_rewind": ("instances/{instanceId}/rewind", ["POST"], "FUNCTION"),
        "dfx_restart": ("instances/{instanceId}/restart", ["POST"], "FUNCTION"),
        "dfx_purge": ("instances/{instanceId}", ["DELETE"], "FUNCTION"),
        "dfx_signal_entity": ("entities/{entityName}/{entityKey}", ["POST"], "FUNCTION"),
        "dfx_get_entity": ("entities/{entityName}/{entityKey}", ["GET"], "FUNCTION"),
        "dfx_list_entities": ("entities/{entityName?}", ["GET"], "FUNCTION"),
        "dfx_create_schedule": ("schedules/{scheduleId}", ["POST"], "FUNCTION"),
        "dfx_get_schedule": ("schedules/{scheduleId}", ["GET"], "FUNCTION"),
        "dfx_delete_schedule": ("schedules/{scheduleId}", ["DELETE"], "FUNCTION"),
        "dfx_list_schedules": ("schedules", ["GET"], "FUNCTION"),
        "dfx_steer_schedule": ("schedules/{scheduleId}/{action}", ["POST"], "FUNCTION"),
    }


def test_names_and_levels_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_FX_HUB", "Orders")
    monkeypatch.setenv("DURABLE_FX_CONNECTION", "OrdersStorage")
    monkeypatch.setenv("DURABLE_FX_MANAGEMENT_AUTH", "admin")
    monkeypatch.setenv("DURABLE_FX_PARTITIONS", "16")
    found = bindings_of(DurableApp())
    assert found["dfx_control"][0]["queueName"] == "orders-control"
    assert found["dfx_control_15"][0]["queueName"] == "orders-control-15"
    assert "dfx_control_16" not in found
    assert found["dfx_work_items"][0]["connection"] == "OrdersStorage"
    assert found["dfx_status"][0]["authLevel"] == "ADMIN"
    explicit = bindings_of(
        DurableApp(hub="billing", management_auth_level=func.AuthLevel.ANONYMOUS)
    )
    assert explicit["dfx_work_items"][0]["queueName"] == "billing-workitems"
    assert explicit["dfx_start"][0]["authLevel"] == "ANONYMOUS"
    assert "dfx_start" not in bindings_of(DurableApp(management_api=False))
    monkeypatch.delenv("DURABLE_FX_PARTITIONS")
    default = bindings_of(DurableApp(hub="billing"))
    assert "dfx_control_03" in default and "dfx_control_04" not in default
    monkeypatch.setenv("DURABLE_FX_DASHBOARD_KEY", "k")
    assert bindings_of(DurableApp())["dfx_dashboard"][0]["route"] == "dashboard/{*path}"
    monkeypatch.setenv("DURABLE_FX_DASHBOARD_ROUTE", "/ops/board/")
    assert bindings_of(DurableApp())["dfx_dashboard"][0]["route"] == "ops/board/{*path}"


def test_an_anonymous_management_api_warns_when_the_app_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Built at indexing time, so the Functions host's log shows it too, not only serve's.
    with caplog.at_level("WARNING", logger="durable_fx.functions"):
        DurableApp()
        assert not caplog.records
        DurableApp(management_auth_level=func.AuthLevel.ANONYMOUS)
    [warning] = caplog.records
    assert "management API is ANONYMOUS" in warning.getMessage()
    assert "without a key" in warning.getMessage()


def test_the_hub_in_the_store_url_names_the_queues() -> None:
    app = DurableApp(store="UseDevelopmentStorage=true;TaskHub=shop;Partitions=2")
    assert app.settings.control_queues == ("shop-control-00", "shop-control-01")
    assert app.settings.legacy_control_queue == "shop-control"
    app = DurableApp(store="azure://acct?hub=shop&partitions=3")
    assert app.settings.control_queues[-1] == "shop-control-02"


def test_bad_settings_are_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_FX_HUB", "no_underscores")
    with pytest.raises(ValueError, match="DURABLE_FX_HUB"):
        DurableApp()
    monkeypatch.delenv("DURABLE_FX_HUB")
    monkeypatch.setenv("DURABLE_FX_MANAGEMENT_AUTH", "everyone")
    with pytest.raises(ValueError, match="DURABLE_FX_MANAGEMENT_AUTH"):
        DurableApp()
    monkeypatch.delenv("DURABLE_FX_MANAGEMENT_AUTH")
    for route in ("ops board", "{*path}", "instances/board", "a//b", ""):
        monkeypatch.setenv("DURABLE_FX_DASHBOARD_ROUTE", route or "/")
        with pytest.raises(ValueError, match="DURABLE_FX_DASHBOARD_ROUTE"):
            DurableApp()
    monkeypatch.delenv("DURABLE_FX_DASHBOARD_ROUTE")
    for bad in ("0", "17", "four"):
        monkeypatch.setenv("DURABLE_FX_PARTITIONS", bad)
        with pytest.raises(ValueError, match="DURABLE_FX_PARTITIONS must be a whole number from 1"):
            DurableApp()


def test_queue_names_are_those_of_the_azure_store() -> None:
    from durable_fx.storage.azure import HubNames

    app = DurableApp(hub="Fulfilment1")
    names = HubNames.of("Fulfilment1")
    settings = app.settings
    assert (settings.control_queues, settings.legacy_control_queue, settings.work_queue) == (
        names.control_partitions,
        names.legacy_control_queue,
        names.work_queue,
    )


def test_decorators_return_the_users_functions_and_fill_the_registry() -> None:
    app = DurableApp()

    def double(n: int) -> int:
        return 2 * n

    def flow(ctx: durable_fx.OrchestrationContext, n: int) -> Orchestrator[int]:
        doubled: int = yield ctx.call_activity(double, n)
        return doubled

    assert app.activity()(double) is double
    assert app.orchestrator(name="flow")(flow) is flow
    assert double(2) == 4
    assert isinstance(app.registry, Registry)
    assert app.registry.orchestrator_names == ["flow"]
    assert app.registry.activity_names == ["double"]


def test_a_worker_runs_a_durable_apps_orchestrations() -> None:
    app = DurableApp()

    @app.activity()
    def shout(word: str) -> str:
        return word.upper()

    @app.orchestrator()
    def loud(ctx: durable_fx.OrchestrationContext, word: str) -> Orchestrator[str]:
        shouted: str = yield ctx.call_activity(shout, word)
        return shouted

    store = durable_fx.open_store("memory://")
    with Worker(app, store, max_poll_interval=0.05), DurableClient(store) as client:
        instance_id = client.start(loud, "hi")
        assert client.wait(instance_id, timeout=10).output == "HI"


def test_ordinary_function_app_features_keep_working() -> None:
    app = DurableApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    blueprint = func.Blueprint()

    @app.route(route="hello/{name}", methods=["GET"])
    def hello(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.route_params["name"])

    @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    def tick(timer: func.TimerRequest) -> None:
        pass

    @blueprint.queue_trigger(arg_name="msg", queue_name="work", connection="AzureWebJobsStorage")
    def consume(msg: func.QueueMessage) -> None:
        pass

    app.register_functions(blueprint)
    found = bindings_of(app)
    assert found["hello"][0]["authLevel"] == "ANONYMOUS"
    assert found["tick"][0]["type"] == "timerTrigger"
    assert found["consume"][0]["queueName"] == "work"


def test_event_sources_are_http_and_queue_functions() -> None:
    app = DurableApp()

    @app.event_webhook(
        route="hooks/receipt",
        event_name="Receipt",
        instance_id=lambda body: body["id"],
        verify=hmac_sha256("SECRET"),
    )
    def receipt(body: dict[str, Any]) -> dict[str, Any]:
        return body

    @app.event_webhook(route="hooks/open", event_name="Open", instance_id="instanceId")
    def opened(body: dict[str, Any]) -> None:
        return None

    @app.event_queue(queue_name="receipts", event_name="Receipt", instance_id=lambda b: b["id"])
    def queued(body: dict[str, Any]) -> dict[str, Any]:
        return body

    found = bindings_of(app)
    # A signature authenticates the sender: no function key needed.
    assert found["receipt"][0]["authLevel"] == "ANONYMOUS"
    assert found["opened"][0]["authLevel"] == "FUNCTION"
    assert found["queued"][0] == {
        "direction": "IN",
        "type": "queueTrigger",
        "name": "msg",
        "queueName": "receipts",
        "connection": "AzureWebJobsStorage",
    }


def test_durable_client_input_hides_the_client_from_the_worker() -> None:
    app = DurableApp()

    @app.route(route="start")
    @app.durable_client_input(client_name="client")
    async def start(req: func.HttpRequest, client: AsyncDurableClient) -> func.HttpResponse:
        return func.HttpResponse(type(client).__name__)

    @app.durable_client_input()
    def sync_user(req: func.HttpRequest, client: DurableClient) -> str:
        return type(client).__name__

    # The worker passes the invocation's context, for the host's trace; the client is hidden.
    assert list(inspect.signature(sync_user).parameters) == ["req", "context"]
    assert "client" not in sync_user.__annotations__
    assert sync_user.__annotations__["context"] is func.Context
    with pytest.raises(TypeError, match="AsyncDurableClient"):

        @app.durable_client_input()
        async def wrong(req: func.HttpRequest, client: DurableClient) -> None:
            pass

    with pytest.raises(TypeError, match="no parameter 'client'"):

        @app.durable_client_input()
        def missing(req: func.HttpRequest) -> None:
            pass

    with pytest.raises(ValueError, match="hub"):
        app.durable_client_input(task_hub="elsewhere")


def test_durable_app_is_exported_lazily() -> None:
    assert durable_fx.DurableApp is DurableApp
    assert DurableApp.__module__ == "durable_fx"


@pytest.mark.skipif(
    importlib.util.find_spec("azure_functions_runtime") is None,
    reason="azure-functions-runtime is not installed (make test installs it: see the Makefile)",
)
@pytest.mark.skipif(not CHECKER.exists(), reason=f"{CHECKER} is not there")
def test_function_app_passes_the_workers_indexing_and_the_hosts_rules() -> None:
    result = subprocess.run(
        [sys.executable, str(CHECKER), "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "host-side checks: OK" in result.stdout
