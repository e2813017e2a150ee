"""The email pipeline as an Azure Functions app (also run by ``durable-fx serve``).

``email_delivery`` (in ``email_pipeline.app``) sends an email, waits for its
delivery receipt, resends soft bounces, escalates silence and records the
outcome. Entry points:

* ``POST /api/emails``: an ``EmailRequest``; starts ``email_delivery`` (the
  idempotency key, when given, is the instance id: a repeat returns the same instance);
* ``POST /api/webhooks/delivery``: a receipt as HMAC-signed JSON
  (``DELIVERY_WEBHOOK_SECRET``; ``X-Signature`` over ``"<X-Timestamp>.<body>"``);
* ``POST /api/webhooks/delivery/eventgrid``: ACS delivery reports from an Event
  Grid subscription (validation handshake included; function key in the URL;
  events that can never apply go to ``email-delivery-events-poison``);
* the queue ``email-delivery-events``: the same reports through Event Grid -> Storage Queue;
* timers ``daily_digest`` (``EMAIL_DIGEST_SCHEDULE``) and ``stuck_sweep``
  (every ``EMAIL_SWEEP_INTERVAL_MINUTES``): they start ``email_digest`` and
  ``email_sweep`` (``email_pipeline.scheduled``) once per occurrence.

    durable-fx serve function_app:app      # or: func start (with Azurite)
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from pydantic import ValidationError

from durable_fx import (
    AsyncDurableClient,
    InstanceExistsError,
    InvalidInstanceIdError,
    validate_instance_id,
)
from durable_fx.bindings import (
    HttpProblem,
    event_grid_handshake,
    hmac_sha256,
    problem_response,
    read_body,
)
from email_pipeline.app import app, email_delivery, instance_for_message
from email_pipeline.eventgrid import EventGridEvent, receipt_from_event
from email_pipeline.models import DeliveryReceipt, EmailJob, EmailRequest
from email_pipeline.scheduled import (
    JobRequest,
    email_digest,
    email_sweep,
    job_instance_id,
    occurrence_of,
    start_once,
)
from email_pipeline.settings import (
    digest_schedule,
    policy_from_environment,
    stuck_after_seconds,
    sweep_schedule,
)

__all__ = ["app"]

log = logging.getLogger("email_pipeline")


def _problem(
    status: int, message: str, fields: list[dict[str, str]] | None = None
) -> func.HttpResponse:
    body = {"error": message, "fields": fields or []}
    return func.HttpResponse(json.dumps(body), status_code=status, mimetype="application/json")


@app.route(route="emails", methods=["POST"])
@app.durable_client_input(client_name="client")
async def emails(req: func.HttpRequest, client: AsyncDurableClient) -> func.HttpResponse:
    """Start a delivery; a repeated idempotency key answers with the existing instance."""
    try:
        # The same limit as the management API (DURABLE_FX_MAX_REQUEST_BYTES): 413 above it.
        request = EmailRequest.model_validate_json(read_body(req, app.settings.max_request_bytes))
    except HttpProblem as problem:
        return problem_response(problem)
    except ValidationError as error:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in error.errors()
        ]
        return _problem(400, "invalid email request", fields)
    instance_id = f"email-{request.idempotency_key}" if request.idempotency_key else None
    if instance_id is not None:
        try:
            validate_instance_id(instance_id)
        except InvalidInstanceIdError as error:
            return _problem(400, str(error), [{"field": "idempotency_key", "message": str(error)}])
    job = EmailJob(request=request, policy=policy_from_environment())
    try:
        started = await client.start(email_delivery, job, instance_id=instance_id)
    except InstanceExistsError:
        assert instance_id is not None
        response = app.create_check_status_response(req, instance_id)
        return func.HttpResponse(
            response.get_body(), status_code=200, headers=dict(response.headers)
        )
    return app.create_check_status_response(req, started)


@app.event_webhook(
    route="webhooks/delivery",
    event_name="DeliveryReceipt",
    # Receipts name the provider's message; the send recorded which instance sent it.
    instance_id=lambda receipt: instance_for_message(receipt.message_id),
    event_id=lambda receipt: receipt.event_id,
    verify=hmac_sha256("DELIVERY_WEBHOOK_SECRET"),
)
def delivery_webhook(receipt: DeliveryReceipt) -> DeliveryReceipt:
    """A signed receipt (any provider or relay that can sign JSON)."""
    return receipt


@app.event_webhook(
    route="webhooks/delivery/eventgrid",
    event_name="DeliveryReceipt",
    instance_id=lambda event: instance_for_message(event.message_id),
    event_id=lambda event: event.id,
    verify=event_grid_handshake(),
    batch=True,
    # Events that can never be applied land next to the queue source's, in
    # email-delivery-events-poison; moving one's "message" to email-delivery-events retries it.
    dead_letter_queue="email-delivery-events",
)
def delivery_eventgrid(event: EventGridEvent) -> DeliveryReceipt | None:
    """ACS EmailDeliveryReportReceived events pushed by Event Grid (others are ignored).

    Every event of a batch is raised whatever the others are; the answer lists
    each one's outcome, and is 503 (Event Grid delivers the batch again) while
    one names a message whose send is not recorded yet.
    """
    return receipt_from_event(event)


@app.event_queue(
    queue_name="email-delivery-events",
    event_name="DeliveryReceipt",
    instance_id=lambda event: instance_for_message(event.message_id),
    event_id=lambda event: event.id,
)
def delivery_queue(event: EventGridEvent) -> DeliveryReceipt | None:
    """ACS delivery reports delivered by Event Grid to a Storage queue."""
    return receipt_from_event(event)


def _job(timer: func.TimerRequest) -> JobRequest:
    # Settings are read per run (a changed threshold applies at the next one) and
    # travel in the input, so the run's replays agree.
    # The worker's TimerRequest has schedule_status; the abstract type does not declare it.
    status = getattr(timer, "schedule_status", None)
    occurrence = occurrence_of(status, datetime.now(UTC))
    return JobRequest(
        occurrence=occurrence,
        policy=policy_from_environment(),
        stuck_after_seconds=stuck_after_seconds(),
    )


# The schedules are read here, at import, so that a malformed setting stops the app
# at startup (host indexing, serve) with a message naming it. Timer triggers rather
# than durable schedules made at startup: both the Functions host and serve run
# them, and the Functions host has no startup hook (email_pipeline/README.md).
@app.timer_trigger(schedule=digest_schedule(), arg_name="timer")
@app.durable_client_input(client_name="client")
async def daily_digest(timer: func.TimerRequest, client: AsyncDurableClient) -> None:
    """Start this occurrence's ``email_digest`` (a repeat of the occurrence starts nothing)."""
    await _start_job(client, timer, "digest", email_digest)


@app.timer_trigger(schedule=sweep_schedule(), arg_name="timer")
@app.durable_client_input(client_name="client")
async def stuck_sweep(timer: func.TimerRequest, client: AsyncDurableClient) -> None:
    """Start this occurrence's ``email_sweep`` (a repeat of the occurrence starts nothing)."""
    await _start_job(client, timer, "sweep", email_sweep)


async def _start_job(
    client: AsyncDurableClient, timer: func.TimerRequest, kind: str, orchestrator: Any
) -> None:
    job = _job(timer)
    instance_id = job_instance_id(kind, job.occurrence)
    if not await start_once(client, orchestrator, job, instance_id):
        log.info("%s %s was started already", kind, instance_id)
