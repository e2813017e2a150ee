"""The HTTP management API: start, inspect and steer instances, Durable Functions style.

=======  ===========================================  ===================================
method   route (after the route prefix)                answer
=======  ===========================================  ===================================
POST     ``orchestrators/{name}[/{instanceId}]``      202, Location, check-status body
GET      ``instances/{instanceId}``                   202 running, 200 finished, 404
GET      ``instances``                                200, JSON array; paging header
POST     ``instances/{instanceId}/raiseEvent/{event}``  202; 404; 410 if finished
POST     ``instances/{instanceId}/terminate``         202; 404; 410 if finished
POST     ``instances/{instanceId}/suspend``, resume   202; 404; 410 if finished
POST     ``instances/{instanceId}/rewind``            202; 404; 410 unless failed
POST     ``instances/{instanceId}/restart``           202, check-status body; 404; 409 running
DELETE   ``instances/{instanceId}``                   200 ``{"instancesDeleted": 1}``; 409 running
POST     ``entities/{name}/{key}?op=``                202 (the body is the operation's input)
GET      ``entities/{name}/{key}``                    200, the entity's state; 404 if none
GET      ``entities[/{name}]``                        200, JSON array; paging header
=======  ===========================================  ===================================

Bodies, field names, ``runtimeStatus`` values and the continuation header
(``x-ms-continuation-token``) are those of Durable Functions, so its tooling
and habits carry over.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from pydantic import TypeAdapter, ValidationError

from .._entity import EntityId, EntityMetadata
from .._errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    InvalidOperationError,
    StoreBusyError,
    UnknownNameError,
)
from .._ids import validate_instance_id
from .._registry import OrchestratorDefinition, validate_event_name
from .._serialization import encode, input_parameter
from .._state import OrchestrationStatus
from ..client._status_json import (
    CONTINUATION_HEADER,
    RUNTIME_STATUS,
    entity_json,
    status_json,
)
from ._http import (
    FieldProblem,
    HttpProblem,
    base_url,
    instance_url,
    json_response,
    parse_json_body,
    problem_response,
    validation_problems,
)
from ._runtime import AppRuntime

__all__ = ["ManagementApi", "busy_response", "check_status_payload", "guarded", "status_json"]

log = logging.getLogger("durable_fx.functions")

_RESTART_QUERY = {"restartWithNewInstanceId": "{restartWithNewInstanceId}"}
_BY_LOOSE_NAME = {s.value.replace("_", ""): s for s in OrchestrationStatus}

Handler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]


def guarded(handler: Handler) -> Handler:
    """Turn the errors a caller can fix into 4xx answers, anything else into a logged 500."""

    async def run(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return await handler(req)
        except HttpProblem as problem:
            return problem_response(problem)
        except InvalidInstanceIdError as error:
            return problem_response(
                HttpProblem(400, str(error), [FieldProblem("instanceId", error.reason)])
            )
        except (InstanceNotFoundError, UnknownNameError) as error:
            return problem_response(HttpProblem(404, str(error)))
        except InstanceExistsError as error:
            return problem_response(HttpProblem(409, str(error)))
        except StoreBusyError as error:
            return busy_response(error)
        except Exception:
            # The path only: the query may hold the caller's key (?code=).
            log.exception("%s %s failed", req.method, urlsplit(req.url).path)
            return json_response({"error": "internal error; see the app's logs"}, 500)

    return run


def busy_response(error: StoreBusyError) -> func.HttpResponse:
    """503 with ``Retry-After`` (whole seconds): the store is locked or throttled for now."""
    retry_after = str(max(1, math.ceil(error.retry_after)))
    return json_response({"error": str(error)}, 503, {"Retry-After": retry_after})


def check_status_payload(base: str, instance_id: str) -> dict[str, str]:
    """Durable Functions' check-status body: where to query and steer ``instance_id``.

    The URLs carry no key (Durable Functions writes ``?code=``): a key in a URL
    ends up in logs, browser history and proxies. Callers send their own key
    (``x-functions-key``) with each request.
    """

    def url(suffix: str = "", reason: bool = False) -> str:
        return instance_url(base, instance_id, suffix, {"reason": "{text}"} if reason else None)

    return {
        "id": instance_id,
        "statusQueryGetUri": url(),
        "sendEventPostUri": url("/raiseEvent/{eventName}"),
        "terminatePostUri": url("/terminate", reason=True),
        "suspendPostUri": url("/suspend", reason=True),
        "resumePostUri": url("/resume", reason=True),
        "rewindPostUri": url("/rewind", reason=True),
        "restartPostUri": instance_url(base, instance_id, "/restart", _RESTART_QUERY),
        "purgeHistoryDeleteUri": url(),
    }


class ManagementApi:
    """The management API's handlers, bound to one app's runtime."""

    def __init__(self, runtime: AppRuntime) -> None:
        self._runtime = runtime
        self._inputs: dict[str, tuple[TypeAdapter[Any] | None, inspect.Parameter | None]] = {}

    def _base(self) -> str:
        runtime = self._runtime
        return base_url(runtime.settings.public_origin(), runtime.host_config.route_prefix)

    def check_status_response(self, req: func.HttpRequest, instance_id: str) -> func.HttpResponse:
        """202 with a Location header and the check-status body for ``instance_id``."""
        payload = check_status_payload(self._base(), instance_id)
        headers = {"Location": payload["statusQueryGetUri"], "Retry-After": "1"}
        return json_response(payload, 202, headers)

    # -- starting -------------------------------------------------------------------

    async def start(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST orchestrators/{name}[/{instanceId}]: start an instance with the body as input."""
        runtime = self._runtime
        name = req.route_params.get("name", "")
        definition = runtime.registry.find_orchestrator(name)
        if definition is None:
            raise UnknownNameError("orchestrator", name, runtime.registry.orchestrator_names)
        instance_id = req.route_params.get("instanceId") or None
        if instance_id is not None:
            validate_instance_id(instance_id)
        value = parse_json_body(req, runtime.settings.max_request_bytes)
        started = await runtime.client.start(
            name, self._validated_input(definition, value), instance_id=instance_id
        )
        return self.check_status_response(req, started)

    def _validated_input(self, definition: OrchestratorDefinition, value: Any) -> Any:
        adapter, parameter = self._input_of(definition)
        if parameter is None:
            if value is not None:
                raise HttpProblem(
                    400,
                    f"orchestrator {definition.name!r} takes no input; send an empty body",
                    [FieldProblem("input", "no input expected")],
                )
            return None
        if value is None and parameter.default is not inspect.Parameter.empty:
            return None  # the orchestrator gets its default
        if adapter is None:
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError as error:
            fields = validation_problems(error, "input")
            listed = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
            raise HttpProblem(
                400, f"the input does not match {definition.name}'s input type: {listed}", fields
            ) from None

    def _input_of(
        self, definition: OrchestratorDefinition
    ) -> tuple[TypeAdapter[Any] | None, inspect.Parameter | None]:
        cached = self._inputs.get(definition.name)
        if cached is None:
            parameter = input_parameter(definition.fn, 1)
            annotation = parameter.annotation if parameter is not None else Any
            empty = annotation in (Any, inspect.Parameter.empty)
            cached = (None if empty else TypeAdapter(annotation), parameter)
            self._inputs[definition.name] = cached
        return cached

    # -- reading --------------------------------------------------------------------

    async def status(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET instances/{instanceId}: 202 while it runs, 200 once finished."""
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        show_history = _flag(req, "showHistory", default=False)
        show_input = _flag(req, "showInput", default=True)
        state = await self._runtime.client.get(instance_id, history=show_history)
        if state is None:
            raise InstanceNotFoundError(instance_id)
        body = status_json(state, show_input=show_input, show_history=show_history)
        if state.status.is_terminal:
            return json_response(body, 200)
        location = check_status_payload(self._base(), instance_id)
        headers = {"Location": location["statusQueryGetUri"], "Retry-After": "1"}
        return json_response(body, 202, headers)

    async def list(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET instances: one page of instances, newest first, filtered by the query."""
        params = req.params
        page_size = _int_param(req, "top", default=100, low=1, high=1000)
        continuation = req.headers.get(CONTINUATION_HEADER) or params.get("continuationToken")
        try:
            page = await self._runtime.client.query(
                status=_statuses(params.get("runtimeStatus")),
                name=params.get("name") or None,
                created_from=_time_param(req, "createdTimeFrom"),
                created_to=_time_param(req, "createdTimeTo"),
                instance_id_prefix=params.get("instanceIdPrefix") or None,
                page_size=page_size,
                continuation=continuation or None,
            )
        except ValueError as error:
            if continuation and "continuation" in str(error):
                raise HttpProblem(
                    400, str(error), [FieldProblem("continuationToken", "not a token we issued")]
                ) from None
            raise
        show_input = _flag(req, "showInput", default=False)
        body = [status_json(state, show_input=show_input) for state in page.items]
        headers = {CONTINUATION_HEADER: page.continuation} if page.continuation else {}
        return json_response(body, 200, headers)

    # -- entities -------------------------------------------------------------------

    async def signal_entity(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST entities/{entityName}/{entityKey}?op=: the body is the operation's input.

        202 sent. With ``Idempotency-Key`` (or ``?requestId=``) a repeat, for the
        entity's life, answers 200 ``{"duplicate": true}`` and sends nothing.
        """
        entity = _entity_id(req)
        operation = req.params.get("op", "")
        try:
            validate_event_name(operation)
        except ValueError as error:
            problem = f"invalid operation name {operation[:80]!r}: {error}"
            raise HttpProblem(400, problem, [FieldProblem("op", str(error))]) from None
        data = parse_json_body(req, self._runtime.settings.max_request_bytes)
        request_id = req.params.get("requestId") or req.headers.get("idempotency-key") or None
        client = self._runtime.client
        sent = await client.signal_entity(entity, operation, data, request_id=request_id)
        if not sent:
            return json_response({"duplicate": True, "requestId": request_id}, 200)
        return func.HttpResponse(status_code=202)

    async def get_entity(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET entities/{entityName}/{entityKey}: its state (JSON); 404 if it has none."""
        entity = _entity_id(req)
        found: EntityMetadata[Any] | None = await self._runtime.client.get_entity(entity, Any)
        if found is None:
            raise HttpProblem(404, f"entity {str(entity)!r} has no state")
        return json_response(found.state, 200)

    async def list_entities(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET entities[/{entityName}]: entities with state, Durable Functions' list shape."""
        name = req.route_params.get("entityName") or None
        page_size = _int_param(req, "top", default=100, low=1, high=1000)
        continuation = req.headers.get(CONTINUATION_HEADER) or req.params.get("continuationToken")
        fetch_state = _flag(req, "fetchState", default=False)
        try:
            page = await self._runtime.client.query_entities(
                name=name, page_size=page_size, continuation=continuation or None
            )
        except ValueError as error:
            if continuation and "continuation" in str(error):
                raise HttpProblem(
                    400, str(error), [FieldProblem("continuationToken", "not a token we issued")]
                ) from None
            raise
        body = [entity_json(m, show_state=fetch_state) for m in page.items]
        headers = {CONTINUATION_HEADER: page.continuation} if page.continuation else {}
        return json_response(body, 200, headers)

    # -- steering -------------------------------------------------------------------

    async def raise_event(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/raiseEvent/{eventName}: the body is the event's data.

        202 raised. With ``?eventId=`` or ``Idempotency-Key`` a repeat, for the
        instance's life, answers 200 ``{"duplicate": true}`` and raises nothing.
        If the instance's orchestrator declared its events, other names and data
        that would not decode are 400 naming the fields: they would fail it.
        """
        runtime = self._runtime
        name = req.route_params.get("eventName", "")
        try:
            validate_event_name(name)
        except ValueError as error:
            problem = f"invalid event name {name[:80]!r}: {error}"
            raise HttpProblem(400, problem, [FieldProblem("eventName", str(error))]) from None
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        data = parse_json_body(req, runtime.settings.max_request_bytes)
        state = await runtime.client.get(instance_id)
        if state is None:
            raise InstanceNotFoundError(instance_id)
        self._check_event(state.name, name, data)
        event_id = req.params.get("eventId") or req.headers.get("idempotency-key") or None
        try:
            raised = await runtime.client.raise_event(instance_id, name, data, event_id=event_id)
        except InvalidOperationError as error:  # finished, and this is a new event
            raise HttpProblem(410, str(error)) from None
        if not raised:
            return json_response({"duplicate": True, "eventId": event_id}, 200)
        return func.HttpResponse(status_code=202)

    def _check_event(self, orchestrator: str, name: str, data: Any) -> None:
        """400 if ``orchestrator`` declared its events and this one would not decode."""
        definition = self._runtime.registry.find_orchestrator(orchestrator)
        if definition is None or definition.events is None:
            return
        declaration = definition.event(name)
        if declaration is None:
            declared = ", ".join(d.name for d in definition.events.values()) or "none"
            problem = (
                f"orchestrator {orchestrator!r} waits for no event {name!r} (declared: {declared})"
            )
            raise HttpProblem(400, problem, [FieldProblem("eventName", "not declared")])
        if declaration.adapter is None:
            return
        try:
            # As the orchestrator will decode it: from the JSON text it is stored as.
            declaration.adapter.validate_json(encode(data) or "null")
        except ValidationError as error:
            fields = validation_problems(error, "body")
            listed = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
            problem = f"the data does not match event {declaration.name!r}'s type: {listed}"
            raise HttpProblem(400, problem, fields) from None

    async def terminate(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/terminate?reason=: stop it (and the children it waits on)."""
        instance_id = await self._running(req, "terminate")
        await self._runtime.client.terminate(instance_id, req.params.get("reason"))
        return func.HttpResponse(status_code=202)

    async def suspend(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/suspend?reason=: pause it."""
        instance_id = await self._running(req, "suspend")
        await self._runtime.client.suspend(instance_id, req.params.get("reason"))
        return func.HttpResponse(status_code=202)

    async def resume(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/resume?reason=: continue a suspended instance."""
        instance_id = await self._running(req, "resume")
        await self._runtime.client.resume(instance_id, req.params.get("reason"))
        return func.HttpResponse(status_code=202)

    async def rewind(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/rewind?reason=: run a failed instance on (410 otherwise)."""
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        try:
            await self._runtime.client.rewind(instance_id, req.params.get("reason"))
        except InvalidOperationError as error:  # not FAILED (checked by the store)
            raise HttpProblem(410, str(error)) from None
        return func.HttpResponse(status_code=202)

    async def restart(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST instances/{instanceId}/restart?restartWithNewInstanceId=: start it again.

        202 with the check-status body of the instance that starts (the same
        id, or a new one); 409 for an unfinished instance under its own id.
        """
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        new_id = _flag(req, "restartWithNewInstanceId", default=False)
        try:
            started = await self._runtime.client.restart(instance_id, new_instance_id=new_id)
        except InvalidOperationError as error:
            raise HttpProblem(409, str(error)) from None
        return self.check_status_response(req, started)

    async def purge(self, req: func.HttpRequest) -> func.HttpResponse:
        """DELETE instances/{instanceId}: delete a finished instance and its history."""
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        try:
            deleted = await self._runtime.client.purge(instance_id)
        except InvalidOperationError as error:
            raise HttpProblem(409, str(error)) from None
        return json_response({"instancesDeleted": deleted}, 200)

    async def _running(self, req: func.HttpRequest, action: str) -> str:
        """The route's instance id, if it exists (404) and has not finished (410 Gone)."""
        instance_id = validate_instance_id(req.route_params.get("instanceId", ""))
        state = await self._runtime.client.get(instance_id)
        if state is None:
            raise InstanceNotFoundError(instance_id)
        if state.status.is_terminal:
            raise HttpProblem(
                410, f"cannot {action} instance {instance_id!r}: it is {state.status.value}"
            )
        return instance_id


def _entity_id(req: func.HttpRequest) -> EntityId:
    name = req.route_params.get("entityName", "")
    key = req.route_params.get("entityKey", "")
    try:
        return EntityId(name, key)
    except ValueError as error:
        # The message names the part at fault: "entity name", "entity key" or both.
        text = str(error)
        fields = [
            f for f in ("entityName", "entityKey") if f.removeprefix("entity").lower() in text
        ]
        raise HttpProblem(400, text, [FieldProblem(f, text) for f in fields]) from None


def _flag(req: func.HttpRequest, name: str, *, default: bool) -> bool:
    raw = str(req.params.get(name) or "")
    if not raw:
        return default
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise HttpProblem(400, f"{name} must be true or false", [FieldProblem(name, raw)])
    return lowered == "true"


def _int_param(req: func.HttpRequest, name: str, *, default: int, low: int, high: int) -> int:
    raw = req.params.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        problem = f"must be a whole number from {low} to {high}"
        raise HttpProblem(400, f"{name} {problem}", [FieldProblem(name, problem)])
    return value


def _time_param(req: func.HttpRequest, name: str) -> datetime | None:
    raw = req.params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        problem = "must be an ISO 8601 time such as 2024-05-01T00:00:00Z"
        raise HttpProblem(400, f"{name} {problem}", [FieldProblem(name, problem)]) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _statuses(raw: str | None) -> list[OrchestrationStatus] | None:
    if not raw:
        return None
    chosen = []
    for part in raw.split(","):
        status = _BY_LOOSE_NAME.get(part.strip().replace("_", "").upper())
        if status is None:
            names = ", ".join(RUNTIME_STATUS.values())
            problem = f"{part.strip()!r} is not a status; use {names}"
            raise HttpProblem(
                400, f"runtimeStatus: {problem}", [FieldProblem("runtimeStatus", problem)]
            )
        chosen.append(status)
    return chosen
