"""Under the Functions host: the host's trace context is the parent of what a function starts.

The functions are the indexed user functions, called with the ``context`` the
Python worker builds (``azure_functions_runtime.bindings.context.get_context``)
from an invocation whose trace context the host filled in; the worker's own
OpenTelemetry support is off, as it is by default.
"""

from __future__ import annotations

import asyncio
import types
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest
from azure_functions_runtime.bindings.context import get_context  # type: ignore[import-untyped]
from opentelemetry import trace

import durable_fx
from durable_fx import DurableApp, DurableClient, OrchestrationContext, Orchestrator
from durable_fx.hosting import http_request
from durable_fx.queues import MemoryQueues
from tests.support.spans import Spans, parent_id, trace_id

HOST_TRACE = uuid.uuid4().hex
HOST_SPAN = uuid.uuid4().hex[:16]
HOST_TRACEPARENT = f"00-{HOST_TRACE}-{HOST_SPAN}-01"


def invocation(name: str, traceparent: str = "", tracestate: str = "") -> Any:
    """The ``context`` argument the worker passes for an invocation the host traced."""
    request = types.SimpleNamespace(
        invocation_id=str(uuid.uuid4()),
        trace_context=types.SimpleNamespace(
            trace_parent=traceparent, trace_state=tracestate, attributes={}
        ),
        retry_context=types.SimpleNamespace(retry_count=0, max_retry_count=0, exception=None),
    )
    return get_context(request, name, "/home/site/wwwroot")


@pytest.fixture
def functions(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Callable[..., Any]]]:
    store = durable_fx.open_store("memory://")
    monkeypatch.setenv("DURABLE_FX_MANAGEMENT_AUTH", "ANONYMOUS")
    app = DurableApp(store=store)

    @app.orchestrator()
    def greet(ctx: OrchestrationContext, name: str) -> Orchestrator[str]:
        return f"hello {name}"
        yield  # a generator

    @app.route(route="greetings", methods=["POST"])
    @app.durable_client_input(client_name="client")
    def start_greeting(req: func.HttpRequest, client: DurableClient) -> func.HttpResponse:
        return func.HttpResponse(client.start("greet", req.get_json()["name"]), status_code=202)

    app.runtime.use_queues(MemoryQueues())
    yield {str(f.get_function_name()): f.get_user_function() for f in app.get_functions()}
    asyncio.run(app.runtime.aclose())
    asyncio.run(store.close())


def call(fn: Callable[..., Any], **kwargs: Any) -> func.HttpResponse:
    result = fn(**kwargs)
    response: func.HttpResponse = asyncio.run(result) if asyncio.iscoroutine(result) else result
    return response


def greeting_request() -> func.HttpRequest:
    url = "http://localhost:7071/api/greetings"
    return http_request("POST", url, {}, {}, {}, b'{"name": "ada"}')


def test_a_start_in_a_users_function_is_a_child_of_the_hosts_trace(
    functions: dict[str, Callable[..., Any]], spans: Spans
) -> None:
    context = invocation("start_greeting", HOST_TRACEPARENT, "vendor=1")
    answer = call(functions["start_greeting"], req=greeting_request(), context=context)
    assert answer.status_code == 202, answer.get_body()
    create = spans.one("create_orchestration:greet")
    assert (trace_id(create), parent_id(create)) == (int(HOST_TRACE, 16), int(HOST_SPAN, 16))


def test_a_start_through_the_management_api_is_a_child_of_the_hosts_trace(
    functions: dict[str, Callable[..., Any]], spans: Spans
) -> None:
    url = "http://localhost:7071/api/orchestrators/greet"
    req = http_request("POST", url, {}, {}, {"name": "greet"}, b'"grace"')
    context = invocation("dfx_start", HOST_TRACEPARENT)
    answer = call(functions["dfx_start"], req=req, context=context)
    assert answer.status_code == 202, answer.get_body()
    create = spans.one("create_orchestration:greet")
    assert (trace_id(create), parent_id(create)) == (int(HOST_TRACE, 16), int(HOST_SPAN, 16))


def test_a_span_made_current_by_the_worker_wins_over_the_invocations_context(
    functions: dict[str, Callable[..., Any]], spans: Spans
) -> None:
    """With its OpenTelemetry support on, the worker attaches the context itself."""
    context = invocation("start_greeting", HOST_TRACEPARENT)
    with trace.get_tracer("worker").start_as_current_span("invocation") as current:
        call(functions["start_greeting"], req=greeting_request(), context=context)
    create = spans.one("create_orchestration:greet")
    assert parent_id(create) == current.get_span_context().span_id


@pytest.mark.parametrize("traceparent", ["", "00-zz-not-a-trace-01", "garbage" * 100])
def test_without_a_valid_host_trace_the_start_begins_its_own(
    functions: dict[str, Callable[..., Any]], spans: Spans, traceparent: str
) -> None:
    context = invocation("start_greeting", traceparent)
    answer = call(functions["start_greeting"], req=greeting_request(), context=context)
    assert answer.status_code == 202
    create = spans.one("create_orchestration:greet")
    assert parent_id(create) is None
