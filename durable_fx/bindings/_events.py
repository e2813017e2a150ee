"""Event sources: webhooks and queue messages that become ``raise_event`` calls.

The decorated user function turns a validated payload (its parameter's type)
into the event's data (``None`` ignores the payload). ``instance_id`` says
which instance gets it: a callable on the payload, or the name of a route or
query parameter. User callables run off the event loop (they may read storage).

Every event is raised at most once per provider event id (``event_id``; by
default a queue message's id, a batch item's digest, and for a webhook the
body's digest when a verifier signs it, else its id header, else the body's
digest). The store dedupes atomically for the instance's life (20 concurrent
copies raise once); the ``EventLedger`` also remembers the id past that life,
so a redelivery after the instance was purged is still a duplicate.

What happens to an item that cannot become an event now:

==========================  ===============  ==================  ==================
item                        one webhook      batch item          queue message
==========================  ===============  ==================  ==================
payload does not match      400 with fields  dead-lettered       poisoned
names no / an invalid id    400              dead-lettered       poisoned
instance finished           410              dead-lettered       poisoned
no such instance (yet)      404              retried: 503        retried by host
store busy                  503 Retry-After  retried: 503        retried by host
==========================  ===============  ==================  ==================

A batch (Event Grid) raises every item it can whatever the others are and
answers per item; it answers 503 when an item is to be retried, so Event Grid
redelivers it (items raised already are then duplicates).
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

from .._errors import (
    InstanceNotFoundError,
    InvalidInstanceIdError,
    InvalidOperationError,
    StoreBusyError,
)
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
from ._management import busy_response
from ._runtime import AppRuntime, MessageRejected
from ._verify import WebhookRejected, WebhookVerifier

__all__ = ["EventSource", "InstanceIdSource", "QueueEventHandler", "WebhookHandler"]

log = logging.getLogger("durable_fx.functions")

InstanceIdSource = Callable[[Any], str | None] | str
"""A callable on the payload, or the name of a route (or query) parameter."""
EventIdSource = Callable[[Any], str | None]
Outcome = Literal["raised", "duplicate", "ignored", "poisoned", "retry"]

# Headers providers put their delivery id in (Standard Webhooks, GitHub, CloudEvents binary).
# Trusted only on routes a key protects: no signature covers them.
_EVENT_ID_HEADERS = ("webhook-id", "x-github-delivery", "ce-id")
_RETRY_AFTER_SECONDS = 10.0
"""What a batch asks for when an item names an instance that does not exist yet."""


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

    def validate(self, value: Any, where: str) -> Any:
        """The payload as the function's parameter type; a 400 ``HttpProblem`` if not."""
        if self.adapter is None:
            return value
        try:
            return self.adapter.validate_python(value)
        except ValidationError as error:
            fields = validation_problems(error, where)
            listed = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
            raise HttpProblem(400, f"the payload does not match: {listed}", fields) from None

    async def data(self, payload: Any) -> Any:
        """The event's data: the user function's answer (synchronous ones run on a thread)."""
        return await _off_loop(self.transform, payload)

    async def target(self, payload: Any, parameters: dict[str, str]) -> str | None:
        """The instance id for ``payload`` (``parameters``: route then query values)."""
        if isinstance(self.instance_id, str):
            return parameters.get(self.instance_id) or None
        found = await _off_loop(self.instance_id, payload)
        return str(found) if found else None

    async def provider_id(self, payload: Any) -> str | None:
        """The provider's event id from ``event_id=``, if given and found."""
        if self.event_id is None:
            return None
        found = await _off_loop(self.event_id, payload)
        return str(found) if found else None


async def _off_loop(fn: Callable[[Any], Any], value: Any) -> Any:
    """Await ``fn(value)``; a synchronous ``fn`` runs on a thread (it may read storage)."""
    if inspect.iscoroutinefunction(fn):
        return await fn(value)
    return await asyncio.to_thread(fn, value)


async def deliver(
    runtime: AppRuntime, source: EventSource, instance_id: str, data: Any, event_id: str
) -> Literal["raised", "duplicate"]:
    """Raise the event unless this provider event id was raised already.

    The store's dedupe is the atomic one; the ledger is read first only to
    recognise ids whose instance is gone (purged), and written after.
    """
    ledger = runtime.ledger
    if await ledger.seen(source.name, event_id):
        return "duplicate"
    key = f"{source.name}:{hashlib.sha256(event_id.encode()).hexdigest()[:32]}"
    raised = await runtime.client.raise_event(instance_id, source.event_name, data, event_id=key)
    await ledger.record(source.name, event_id)
    return "raised" if raised else "duplicate"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _item_digest(item: Any) -> str:
    return _digest(json.dumps(item, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class ItemResult:
    """What became of one payload (a batch answers one per item)."""

    outcome: Outcome
    event_id: str | None = None
    """The item's own ``id`` field, when it has one (Event Grid's)."""
    reason: str | None = None
    retry_after: float = 0.0

    def json(self, index: int) -> dict[str, Any]:
        """The answer's entry for this item: index, outcome, id and reason if known."""
        entry: dict[str, Any] = {"index": index, "outcome": self.outcome}
        if self.event_id is not None:
            entry["id"] = self.event_id
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


class WebhookHandler:
    """An HTTP function body: verify, parse, validate, raise once per provider event."""

    def __init__(
        self,
        runtime: AppRuntime,
        source: EventSource,
        verifiers: Sequence[WebhookVerifier],
        *,
        batch: bool,
        dead_letter_queue: str,
    ) -> None:
        self._runtime = runtime
        self._source = source
        self._verifiers = tuple(verifiers)
        self._signed = any(v.authenticates for v in self._verifiers)
        self._batch = batch
        self._dead_letter_queue = dead_letter_queue

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
        except StoreBusyError as error:
            return busy_response(error)
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
        parameters = {**req.params, **req.route_params}
        if not self._batch:
            outcome = await self._one(value, "body", parameters, self._default_id(req, body))
            counts = _counts([ItemResult(outcome)])
            return json_response(counts, 202 if outcome == "raised" else 200)
        if not isinstance(value, list):
            raise HttpProblem(400, "expected a JSON array of events", [FieldProblem("body", "")])
        results = [
            await self._batch_item(item, f"body[{index}]", parameters)
            for index, item in enumerate(value)
        ]
        return self._batch_answer(results)

    def _default_id(self, req: func.HttpRequest, body: bytes) -> str:
        """The event id when ``event_id=`` gives none: from signed material if signed."""
        if not self._signed:
            for header in _EVENT_ID_HEADERS:
                value = req.headers.get(header)
                if value:
                    return f"{header}:{value}"
        return _digest(body)

    async def _one(
        self, item: Any, where: str, parameters: dict[str, str], default_id: str
    ) -> Literal["raised", "duplicate", "ignored"]:
        """Raise ``item``'s event; problems with the item raise (see the module docstring)."""
        source = self._source
        payload = source.validate(item, where)
        data = await source.data(payload)
        if data is None:
            return "ignored"
        instance_id = await source.target(payload, parameters)
        if instance_id is None:
            raise HttpProblem(
                400,
                f"webhook {source.name}: the request names no instance",
                [FieldProblem("instanceId", "missing")],
            )
        event_id = await source.provider_id(payload) or default_id
        return await deliver(self._runtime, source, instance_id, data, event_id)

    async def _batch_item(self, item: Any, where: str, parameters: dict[str, str]) -> ItemResult:
        """Raise one item of a batch; dead-letter it if it never can be, or ask for a retry."""
        source = self._source
        event_id = _item_id(item)
        try:
            outcome = await self._one(item, where, parameters, _item_digest(item))
            return ItemResult(outcome, event_id)
        except (HttpProblem, InvalidInstanceIdError, InvalidOperationError) as error:
            return await self._dead_letter(item, event_id, str(error))
        except StoreBusyError as error:
            return ItemResult("retry", event_id, reason=str(error), retry_after=error.retry_after)
        except InstanceNotFoundError as error:
            retry_after = _RETRY_AFTER_SECONDS
            return ItemResult("retry", event_id, reason=str(error), retry_after=retry_after)
        except Exception as error:
            log.exception("webhook %s: item %s failed; asking for a retry", source.name, where)
            reason = f"{type(error).__name__}: {error}"
            return ItemResult("retry", event_id, reason=reason, retry_after=_RETRY_AFTER_SECONDS)

    async def _dead_letter(self, item: Any, event_id: str | None, reason: str) -> ItemResult:
        """Put ``item`` in the dead-letter queue's ``-poison`` twin, with ``reason``, once.

        Event Grid redelivers a whole batch while another item is retried: the
        ledger remembers what was dead-lettered so each item is copied once.
        """
        body = json.dumps(item).encode()
        # Its own ledger partition (Azure table keys refuse "/"): not an event id.
        ledger, source = self._runtime.ledger, f"{self._source.name}.dead-letters"
        digest = _digest(body)
        try:
            if await ledger.seen(source, digest):
                return ItemResult("poisoned", event_id, reason=f"{reason} (dead-lettered before)")
            await self._runtime.poison(self._dead_letter_queue, body, reason)
            await ledger.record(source, digest)
        except MessageRejected:
            # Nowhere to keep it: Event Grid keeps it instead (it retries, then dead-letters).
            problem = f"{reason}; and the app has no queue to dead-letter it to"
            return ItemResult("retry", event_id, reason=problem, retry_after=_RETRY_AFTER_SECONDS)
        except StoreBusyError as error:
            return ItemResult("retry", event_id, reason=str(error), retry_after=error.retry_after)
        return ItemResult("poisoned", event_id, reason=reason)

    def _batch_answer(self, results: list[ItemResult]) -> func.HttpResponse:
        """200/202, or 503 when an item is to be retried: Event Grid retries the batch then."""
        body: dict[str, Any] = {
            **_counts(results),
            "items": [result.json(index) for index, result in enumerate(results)],
        }
        waits = [r.retry_after for r in results if r.outcome == "retry"]
        if waits:
            headers = {"Retry-After": str(max(1, round(max(waits))))}
            body["error"] = "some events are to be retried; send the batch again"
            return json_response(body, 503, headers)
        raised = any(r.outcome == "raised" for r in results)
        return json_response(body, 202 if raised else 200)


def _item_id(item: Any) -> str | None:
    """An Event Grid item's own id, for the answer (``None`` if it has none)."""
    found = item.get("id") if isinstance(item, dict) else None
    return str(found) if isinstance(found, str | int) else None


def _counts(results: Sequence[ItemResult]) -> dict[str, int]:
    outcomes = [r.outcome for r in results]
    counts = {
        "raised": outcomes.count("raised"),
        "duplicates": outcomes.count("duplicate"),
        "ignored": outcomes.count("ignored"),
    }
    if any(o in ("poisoned", "retry") for o in outcomes):
        counts |= {"poisoned": outcomes.count("poisoned"), "retry": outcomes.count("retry")}
    return counts


class QueueEventHandler:
    """A queue-triggered function body: each message raises one event, once.

    A message that can never become an event (not JSON, the wrong shape, no
    instance, an instance that finished) is poisoned at once with the reason;
    anything that may pass on a retry (no such instance yet, a busy store)
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
            payload = source.validate(value, "message")
        except HttpProblem as problem:
            return "the message does not match: " + "; ".join(
                f"{f.field}: {f.message}" for f in problem.fields[:5]
            )
        data = await source.data(payload)
        if data is None:
            return None
        try:
            instance_id = await source.target(payload, {})
            if instance_id is None:
                return f"event source {source.name}: the message names no instance"
            event_id = await source.provider_id(payload) or self._default_id(msg, body)
            await deliver(self._runtime, source, instance_id, data, event_id)
        except (InvalidInstanceIdError, InvalidOperationError) as error:
            return str(error)
        except InstanceNotFoundError as error:
            raise MessageRejected(f"{error}; the message is retried") from None
        return None

    @staticmethod
    def _default_id(msg: func.QueueMessage, body: bytes) -> str:
        return f"message:{msg.id}" if msg.id else _digest(body)
