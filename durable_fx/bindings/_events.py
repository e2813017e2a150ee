"""Event sources: webhooks and queue messages that become ``raise_event`` calls.

The decorated user function turns a validated payload (its parameter's type)
into the event's data (``None`` ignores the payload). ``instance_id`` says
which instance gets it: a callable on the payload, or the name of a route or
query parameter. Every event is raised at most once per provider event id
(``event_id``; by default a webhook's id header or the body's hash, a queue
message's id), remembered in the ``EventLedger``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import azure.functions as func
from pydantic import TypeAdapter, ValidationError

from .._errors import InstanceNotFoundError, InvalidInstanceIdError, InvalidOperationError
from .._serialization import input_parameter
from ._http import (
    FieldProblem,
    HttpProblem,
    json_response,
    parse_json,
    problem_response,
    read_body,
    validation_problems,
)
from ._runtime import AppRuntime, MessageRejected
from ._verify import WebhookRejected, WebhookVerifier

__all__ = ["EventSource", "InstanceIdSource", "QueueEventHandler", "WebhookHandler"]

log = logging.getLogger("durable_fx.functions")

InstanceIdSource = Callable[[Any], str | None] | str
"""A callable on the payload, or the name of a route (or query) parameter."""
EventIdSource = Callable[[Any], str | None]

# Headers providers put their delivery id in (Standard Webhooks, GitHub, CloudEvents binary).
_EVENT_ID_HEADERS = ("webhook-id", "x-github-delivery", "ce-id")


@dataclass(frozen=True, slots=True)
class EventSource:
    """One event source: which event it raises, on which instance, from what payload."""

    name: str
    event_name: str
    transform: Callable[..., Any]
    instance_id: InstanceIdSource
    event_id: EventIdSource | None
    adapter: TypeAdapter[Any] | None

    @classmethod
    def of(
        cls,
        name: str,
        transform: Callable[..., Any],
        *,
        event_name: str,
        instance_id: InstanceIdSource,
        event_id: EventIdSource | None,
    ) -> EventSource:
        """Describe ``transform``, whose one parameter's annotation types the payload."""
        parameter = input_parameter(transform, 0)
        if parameter is None:
            raise TypeError(
                f"event source {name!r}: {transform.__qualname__} must take the payload as "
                "its parameter (annotate it with a pydantic model, dataclass or builtin)"
            )
        annotation = parameter.annotation
        empty = annotation in (Any, inspect.Parameter.empty)
        adapter = None if empty else TypeAdapter(annotation)
        return cls(name, event_name, transform, instance_id, event_id, adapter)

    def validate(self, value: Any) -> Any:
        """The payload as the function's parameter type (pydantic ``ValidationError`` if not)."""
        return value if self.adapter is None else self.adapter.validate_python(value)

    async def data(self, payload: Any) -> Any:
        """The event's data: the user function's answer (synchronous ones run on a thread)."""
        if inspect.iscoroutinefunction(self.transform):
            return await self.transform(payload)
        return await asyncio.to_thread(self.transform, payload)

    def target(self, payload: Any, parameters: dict[str, str]) -> str | None:
        """The instance id for ``payload`` (``parameters``: route then query values)."""
        if isinstance(self.instance_id, str):
            return parameters.get(self.instance_id) or None
        found = self.instance_id(payload)
        return str(found) if found else None


async def deliver(
    runtime: AppRuntime, source: EventSource, instance_id: str, data: Any, event_id: str
) -> Literal["raised", "duplicate"]:
    """Raise the event unless this provider event id was raised already."""
    ledger = runtime.ledger
    if await ledger.seen(source.name, event_id):
        return "duplicate"
    key = f"{source.name}:{hashlib.sha256(event_id.encode()).hexdigest()[:32]}"
    await runtime.client.raise_event(instance_id, source.event_name, data, event_id=key)
    await ledger.record(source.name, event_id)
    return "raised"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class WebhookHandler:
    """An HTTP function body: verify, parse, validate, raise once per provider event."""

    def __init__(
        self,
        runtime: AppRuntime,
        source: EventSource,
        verifiers: Sequence[WebhookVerifier],
        *,
        batch: bool,
    ) -> None:
        self._runtime = runtime
        self._source = source
        self._verifiers = tuple(verifiers)
        self._batch = batch

    async def __call__(self, req: func.HttpRequest) -> func.HttpResponse:
        """Handle one delivery; see the module docstring."""
        try:
            return await self._handle(req)
        except HttpProblem as problem:
            return problem_response(problem)
        except WebhookRejected as rejected:
            log.warning("webhook %s refused: %s", self._source.name, rejected.reason)
            return problem_response(HttpProblem(rejected.status, rejected.reason))
        except InvalidInstanceIdError as error:
            return problem_response(HttpProblem(400, str(error), [FieldProblem("instanceId", "")]))
        except InstanceNotFoundError as error:
            return problem_response(HttpProblem(404, str(error)))
        except InvalidOperationError as error:
            return problem_response(HttpProblem(410, str(error)))
        except Exception:
            log.exception("webhook %s failed", self._source.name)
            return json_response({"error": "internal error; see the app's logs"}, 500)

    async def _handle(self, req: func.HttpRequest) -> func.HttpResponse:
        body = read_body(req, self._runtime.settings.max_request_bytes)
        for verify in self._verifiers:
            answer = verify(req, body)
            if answer is not None:
                return answer
        if req.method.upper() != "POST":
            raise HttpProblem(405, f"{req.method} is not a webhook delivery; send POST")
        value = parse_json(body, "body")
        if self._batch and not isinstance(value, list):
            raise HttpProblem(400, "expected a JSON array of events", [FieldProblem("body", "")])
        items = value if self._batch else [value]
        parameters = {**req.params, **req.route_params}
        counts = {"raised": 0, "duplicate": 0, "ignored": 0}
        for index, item in enumerate(items):
            where = f"body[{index}]" if self._batch else "body"
            outcome = await self._one(item, where, parameters, req, body)
            counts[outcome] += 1
        summary = {
            "raised": counts["raised"],
            "duplicates": counts["duplicate"],
            "ignored": counts["ignored"],
        }
        return json_response(summary, 202 if counts["raised"] else 200)

    async def _one(
        self,
        item: Any,
        where: str,
        parameters: dict[str, str],
        req: func.HttpRequest,
        body: bytes,
    ) -> Literal["raised", "duplicate", "ignored"]:
        source = self._source
        try:
            payload = source.validate(item)
        except ValidationError as error:
            fields = validation_problems(error, where)
            listed = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
            raise HttpProblem(400, f"the payload does not match: {listed}", fields) from None
        data = await source.data(payload)
        if data is None:
            return "ignored"
        instance_id = source.target(payload, parameters)
        if instance_id is None:
            raise HttpProblem(
                400,
                f"webhook {source.name}: the request names no instance",
                [FieldProblem("instanceId", "missing")],
            )
        event_id = self._event_id(payload, item, req, body)
        return await deliver(self._runtime, source, instance_id, data, event_id)

    def _event_id(self, payload: Any, item: Any, req: func.HttpRequest, body: bytes) -> str:
        if self._source.event_id is not None:
            found = self._source.event_id(payload)
            if found:
                return str(found)
        if self._batch:
            return _digest(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())
        for header in _EVENT_ID_HEADERS:
            value = req.headers.get(header)
            if value:
                return f"{header}:{value}"
        return _digest(body)


class QueueEventHandler:
    """A queue-triggered function body: each message raises one event, once.

    A message that can never become an event (not JSON, the wrong shape, no
    instance, an instance that finished) is poisoned at once with the reason;
    anything that may pass on a retry (no such instance yet, a storage error)
    raises, so the host retries it and poisons it after maxDequeueCount.
    """

    def __init__(
        self, runtime: AppRuntime, source: EventSource, queue_name: str, connection: str
    ) -> None:
        self._runtime = runtime
        self._source = source
        self._queue = queue_name
        self._connection = connection

    async def __call__(self, msg: func.QueueMessage) -> None:
        """Handle one message."""
        body = msg.get_body() or b""
        reason = await self._try(msg, body)
        if reason is not None:
            await self._runtime.poison(self._queue, body, reason, connection=self._connection)

    async def _try(self, msg: func.QueueMessage, body: bytes) -> str | None:
        """Raise the message's event; returns why it must be poisoned, if it must."""
        source = self._source
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            return f"the message is not valid JSON: {error}"
        try:
            payload = source.validate(value)
        except ValidationError as error:
            fields = validation_problems(error, "message")
            return "the message does not match: " + "; ".join(
                f"{f.field}: {f.message}" for f in fields[:5]
            )
        data = await source.data(payload)
        if data is None:
            return None
        instance_id = source.target(payload, {})
        if instance_id is None:
            return f"event source {source.name}: the message names no instance"
        event_id = self._event_id(payload, msg, body)
        try:
            await deliver(self._runtime, source, instance_id, data, event_id)
        except (InvalidInstanceIdError, InvalidOperationError) as error:
            return str(error)
        except InstanceNotFoundError as error:
            raise MessageRejected(f"{error}; the message is retried") from None
        return None

    def _event_id(self, payload: Any, msg: func.QueueMessage, body: bytes) -> str:
        if self._source.event_id is not None:
            found = self._source.event_id(payload)
            if found:
                return str(found)
        return f"message:{msg.id}" if msg.id else _digest(body)
