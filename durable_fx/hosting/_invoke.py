"""Calling a function the way the Python worker calls it.

Trigger values are built by azure-functions' own converters from the data the
host would send (``HttpRequestConverter``, ``QueueMessageInConverter``), so a
function receives the same ``func.HttpRequest`` and ``func.QueueMessage``
objects here as under Azure Functions. Arguments go by keyword; ``async def``
functions run on the loop, the others on a thread pool; ``func.Out`` queue
outputs and a ``$return`` queue output are sent after a successful call.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import azure.functions as func
from azure.functions import meta
from azure.functions.http import HttpRequestConverter, HttpResponseConverter
from azure.functions.queue import QueueMessageInConverter

from .._tracing import current_trace_context
from ..queues import MessageEncoding, QueueBackend, QueuedMessage, encode_body
from ._index import IndexedFunction

__all__ = ["HttpAnswer", "Invoker", "http_answer", "http_request", "queue_message"]

T = TypeVar("T")


def http_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    route_params: Mapping[str, str],
    body: bytes,
) -> func.HttpRequest:
    """A ``func.HttpRequest`` as the worker builds it from the host's RPC data."""
    datum = meta.Datum(
        type="http",
        value={
            "method": meta.Datum(method, "string"),
            "url": meta.Datum(url, "string"),
            "headers": {k.lower(): meta.Datum(v, "string") for k, v in headers.items()},
            "query": {k: meta.Datum(v, "string") for k, v in query.items() if v != ""},
            "params": {k: meta.Datum(v, "string") for k, v in route_params.items()},
            "body": meta.Datum(body, "bytes"),
        },
    )
    request: func.HttpRequest = HttpRequestConverter.decode(datum, trigger_metadata=None)
    return request


def queue_message(message: QueuedMessage, body: bytes) -> func.QueueMessage:
    """A ``func.QueueMessage`` as the worker builds it from the host's trigger metadata."""
    metadata = {
        "Id": meta.Datum(message.id, "string"),
        "DequeueCount": meta.Datum(message.dequeue_count, "int"),
        "InsertionTime": meta.Datum(_timestamp(message.inserted_at), "string"),
        "NextVisibleTime": meta.Datum(_timestamp(message.next_visible_at), "string"),
        "PopReceipt": meta.Datum(message.pop_receipt, "string"),
    }
    if message.expires_at is not None:
        metadata["ExpirationTime"] = meta.Datum(_timestamp(message.expires_at), "string")
    decoded: func.QueueMessage = QueueMessageInConverter.decode(
        meta.Datum(body, "bytes"), trigger_metadata=metadata
    )
    return decoded


def _timestamp(moment: datetime) -> str:
    """The host's format: UTC ISO 8601 with a ``+00:00`` offset."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


class HttpAnswer:
    """An HTTP response reduced to what goes on the wire."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def http_answer(result: Any) -> HttpAnswer:
    """The response the host sends for a function's return value."""
    if result is None:
        return HttpAnswer(204, [], b"")
    datum = HttpResponseConverter.encode(result, expected_type=None)
    if datum.type == "string":
        body = str(datum.value).encode()
        return HttpAnswer(200, [("content-type", "text/plain; charset=utf-8")], body)
    value = datum.value
    headers = [(str(k), str(v.value)) for k, v in value["headers"].items()]
    for cookie in value.get("cookies") or []:
        for morsel in cookie.values():
            headers.append(("set-cookie", morsel.OutputString()))
    body_datum = value["body"]
    raw = body_datum.value if body_datum is not None else b""
    body = raw.encode() if isinstance(raw, str) else bytes(raw or b"")
    return HttpAnswer(int(value["status_code"].value), headers, body)


class _Out(func.Out[T], Generic[T]):
    """An output binding parameter (``func.Out[T]``)."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, val: T) -> None:
        self._value = val

    def get(self) -> T:
        return self._value  # type: ignore[return-value]


class _TraceContext(func._abc.TraceContext):
    """The invocation's trace, as the host passes it: the span current when it was called."""

    def __init__(self) -> None:
        traced = current_trace_context()
        self._parent = traced.traceparent if traced else ""
        self._state = (traced.tracestate or "") if traced else ""

    @property
    def trace_state(self) -> str:
        return self._state

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _Context(func.Context):
    """The ``context`` argument: invocation id, function name and directory."""

    def __init__(self, invocation_id: str, function_name: str, directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._directory = directory
        self._local = threading.local
        self._trace = _TraceContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._directory

    @property
    def trace_context(self) -> func._abc.TraceContext:
        return self._trace

    @property
    def retry_context(self) -> func._abc.RetryContext:
        raise NotImplementedError("retry policies do not apply to HTTP and queue triggers")


class Invoker:
    """Calls indexed functions and delivers their queue outputs."""

    def __init__(
        self, threads: Executor, queues: QueueBackend | None, encoding: MessageEncoding
    ) -> None:
        self._threads = threads
        self._queues = queues
        self._encoding = encoding

    async def invoke(
        self, function: IndexedFunction, trigger_value: Any, invocation_id: str | None = None
    ) -> Any:
        """Call ``function`` with its trigger value; returns what it returned."""
        kwargs: dict[str, Any] = {function.trigger["name"]: trigger_value}
        outs: dict[str, _Out[Any]] = {b["name"]: _Out() for b in function.outputs}
        kwargs.update(outs)
        if function.wants_context:
            kwargs["context"] = _Context(
                invocation_id or str(uuid.uuid4()), function.name, function.directory
            )
        if function.is_async:
            result = await function.fn(**kwargs)
        else:
            # copy_context: contextvars set by the caller stay visible, as in the worker.
            call = functools.partial(contextvars.copy_context().run, function.fn, **kwargs)
            result = await asyncio.get_running_loop().run_in_executor(self._threads, call)
        for binding in function.outputs:
            await self._output(binding, outs[binding["name"]].get())
        if function.returns is not None and function.returns["type"] == "queue":
            await self._output(function.returns, result)
        return result

    async def _output(self, binding: dict[str, Any], value: Any) -> None:
        if value is None:
            return
        if self._queues is None:
            raise RuntimeError(f"no queues to send the {binding['name']!r} output to")
        items = value if isinstance(value, list | tuple) else [value]
        for item in _bodies(items):
            await self._queues.send(binding["queueName"], encode_body(item, self._encoding))


def _bodies(items: Iterable[Any]) -> Iterable[str | bytes]:
    for item in items:
        if isinstance(item, str | bytes):
            yield item
        elif isinstance(item, func.QueueMessage):
            yield item.get_body()
        else:
            raise TypeError(
                f"a queue output takes str, bytes or func.QueueMessage, not {type(item).__name__}"
            )
