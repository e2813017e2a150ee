"""A small durable_fx app for Azure Functions and ``durable-fx serve``.

``hello`` greets someone through an activity and, if asked to, waits for an
``Approval`` event that arrives by a signed webhook or through a queue.

    durable-fx serve function_app:app          # or: func start (with Azurite)
    curl -X POST "localhost:7071/api/orchestrators/hello?code=$KEY" -d '{"name": "Ada"}'

(The email pipeline will replace this sample.)
"""

from __future__ import annotations

from collections.abc import Generator
from datetime import timedelta
from typing import Any

import azure.functions as func
from pydantic import BaseModel

from durable_fx import AsyncDurableClient, DurableApp, EventTimeoutError, OrchestrationContext
from durable_fx.bindings import hmac_sha256

app = DurableApp()


class Greeting(BaseModel):
    """What ``hello`` is started with."""

    name: str
    wait_for_approval: bool = False


class Approval(BaseModel):
    """An approval for a waiting ``hello`` instance (webhook body or queue message)."""

    instance_id: str
    approved: bool
    by: str | None = None


@app.activity()
def say_hello(name: str) -> str:
    """The real work: build a greeting."""
    return f"Hello, {name}!"


@app.orchestrator()
def hello(ctx: OrchestrationContext, request: Greeting) -> Generator[Any, Any, dict[str, Any]]:
    """Greet, then (if asked) wait up to an hour for an approval."""
    greeting = yield ctx.call_activity(say_hello, request.name)
    if not request.wait_for_approval:
        return {"greeting": greeting}
    try:
        approval = yield ctx.wait_for_event(
            "Approval", timeout=timedelta(hours=1), result_type=Approval
        )
    except EventTimeoutError:
        return {"greeting": greeting, "approved": False, "by": None}
    return {"greeting": greeting, "approved": approval.approved, "by": approval.by}


@app.event_webhook(
    route="webhooks/approval",
    event_name="Approval",
    instance_id=lambda approval: approval.instance_id,
    verify=hmac_sha256("APPROVAL_WEBHOOK_SECRET"),
)
def approval_webhook(approval: Approval) -> Approval:
    """A signed POST (X-Signature over "<X-Timestamp>.<body>") approves an instance."""
    return approval


@app.event_queue(
    queue_name="approvals",
    event_name="Approval",
    instance_id=lambda approval: approval.instance_id,
)
def approval_queue(approval: Approval) -> Approval:
    """A message on the ``approvals`` queue approves an instance."""
    return approval


@app.route(route="hello/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def hello_start(req: func.HttpRequest, client: AsyncDurableClient) -> func.HttpResponse:
    """A user route that starts ``hello`` through the durable client."""
    instance_id = await client.start(hello, Greeting(name=req.route_params["name"]))
    return app.create_check_status_response(req, instance_id)
