"""The ASGI application that serves an app's HTTP triggers like the Functions host.

Routes come from the triggers' templates under host.json's ``routePrefix``;
a request that matches no route (or not its methods) is 404, one without the
key its auth level needs is 401, and an exception in the function is an
empty 500, as on Azure. ``GET /`` answers 200 so a health probe needs no key.

Bodies are bounded while they are read, before any function runs: over
``max_request_bytes`` is a 413 as soon as the excess is known (at once from
``Content-Length``, else when the chunks pass the limit), and a body that
takes longer than ``body_timeout`` seconds is a 408, so neither a large nor a
slow upload can hold memory or a connection (uvicorn stops reading a socket
while the app is not reading). Both close the connection. A path or query
that is not UTF-8 once percent-decoded is a 400: replacing the bytes with
U+FFFD would map different ids to the same one. A ``StoreBusyError`` out of a
function is a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qsl, quote

from opentelemetry.trace import Span, SpanKind

from .._errors import StoreBusyError
from .._history import TraceContext
from .._tracing import parent_of, span_in
from ..bindings._management import busy_response
from ..bindings._settings import DEFAULT_BODY_TIMEOUT_SECONDS, DEFAULT_MAX_REQUEST_BYTES
from ._index import IndexedFunction
from ._invoke import HttpAnswer, Invoker, http_answer, http_request
from ._keys import FunctionKeys
from ._logging import invocation
from ._routes import PathNotText, RouteTable

__all__ = ["MAX_REQUEST_BYTES", "FunctionsAsgi"]

log = logging.getLogger("durable_fx.serve")

MAX_REQUEST_BYTES = 100 * 1024 * 1024
"""The Functions host's own request size limit (100 MB); serve's default is far lower."""

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class FunctionsAsgi:
    """Serves the HTTP-triggered functions of an app.

    Args:
        functions: The indexed functions (those without an HTTP trigger are ignored).
        route_prefix: host.json's ``extensions.http.routePrefix``.
        keys: The function and master keys.
        invoker: Calls the functions.
        after_invocation: Called after each invocation (serve polls queues sooner).
        max_request_bytes: The largest body read (``DURABLE_FX_MAX_REQUEST_BYTES``).
        body_timeout: Seconds a client has to send its whole body
            (``DURABLE_FX_BODY_TIMEOUT_SECONDS``).
    """

    def __init__(
        self,
        functions: list[IndexedFunction],
        *,
        route_prefix: str,
        keys: FunctionKeys,
        invoker: Invoker,
        after_invocation: Callable[[], None] = lambda: None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    ) -> None:
        self.routes: RouteTable[IndexedFunction] = RouteTable(route_prefix)
        for function in functions:
            if function.trigger_type == "httpTrigger":
                route = function.trigger.get("route") or function.name
                self.routes.add(route, function.trigger.get("methods"), function)
        self._keys = keys
        self._invoker = invoker
        self._after = after_invocation
        self._limit = max_request_bytes
        self._body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            answer = await self._answer(scope, receive)
            await _send(send, answer)

    async def _answer(self, scope: Scope, receive: Receive) -> HttpAnswer:
        method = str(scope["method"]).upper()
        raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        query_string = scope.get("query_string", b"").decode("latin-1")
        try:
            match = self.routes.match(method, path)
            pairs = parse_qsl(query_string, keep_blank_values=True, errors="strict")
        except PathNotText as error:
            return _problem(400, str(error), "path")
        except UnicodeDecodeError:
            return _problem(400, "the query string is not UTF-8 once percent-decoded", "query")
        if match is None:
            if path.strip("/") == "" and method in ("GET", "HEAD"):
                return HttpAnswer(200, [("content-type", "text/plain")], b"durable-fx serve\n")
            return HttpAnswer(404, [], b"")
        function = match.target
        query = _joined(pairs)
        headers = _joined(
            [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        )
        offered = headers.get("x-functions-key") or query.get("code")
        level = str(function.trigger.get("authLevel") or "FUNCTION")
        if not self._keys.allows(level, offered):
            return HttpAnswer(401, [], b"")
        body = await _read_body(
            receive, self._limit, headers.get("content-length"), self._body_timeout
        )
        if isinstance(body, HttpAnswer):
            return body
        url = f"{scope.get('scheme', 'http')}://{_host(scope, headers)}{path}"
        url += f"?{query_string}" if query_string else ""
        request = http_request(method, url, headers, query, match.route_params, body)
        invocation_id = str(uuid.uuid4())
        route = str(function.trigger.get("route") or function.name)
        try:
            with (
                _request_span(method, route, path, headers) as span,
                invocation(
                    function.name, "http", invocation_id, method=method, path=path
                ) as record,
            ):
                try:
                    result = await self._invoker.invoke(function, request, invocation_id)
                except StoreBusyError as error:
                    record.fields["outcome"] = "busy"
                    result = busy_response(error)
                answer = http_answer(result)
                record.fields["status"] = answer.status
                span.set_attribute("http.response.status_code", answer.status)
        except Exception:
            answer = HttpAnswer(500, [], b"")
        finally:
            self._after()
        return answer


def _request_span(
    method: str, route: str, path: str, headers: dict[str, str]
) -> AbstractContextManager[Span]:
    """The request's SERVER span, under the caller's ``traceparent`` if it sent a valid one."""
    traceparent = headers.get("traceparent")
    caller = (
        TraceContext(traceparent=traceparent, tracestate=headers.get("tracestate") or None)
        if traceparent
        else None
    )
    attributes = {"http.request.method": method, "http.route": route, "url.path": path}
    return span_in(
        f"{method} {route}", parent_of(caller), kind=SpanKind.SERVER, attributes=attributes
    )


def _joined(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated names joined with commas, as the host passes them."""
    joined: dict[str, str] = {}
    for key, value in pairs:
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def _host(scope: Scope, headers: dict[str, str]) -> str:
    if headers.get("host"):
        return headers["host"]
    server = scope.get("server") or ("localhost", 80)
    return f"{server[0]}:{server[1]}"


async def _read_body(
    receive: Receive, limit: int, declared: str | None, timeout: float
) -> bytes | HttpAnswer:
    """The whole body, or the answer refusing it (413 over ``limit``, 408 too slow)."""
    if _exceeds(declared, limit):
        return _too_large(f"is {declared} bytes", limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # Never run a function on part of a body; the client is gone anyway.
                    return _problem(400, "the client disconnected before its body ended", "body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return _too_large(f"is over {limit} bytes", limit)
                chunks.append(chunk)
                if not message.get("more_body"):
                    return b"".join(chunks)
    except TimeoutError:
        late = f"the request body did not arrive within {timeout:g} s"
        return _problem(408, f"{late} (DURABLE_FX_BODY_TIMEOUT_SECONDS)", "body", close=True)


def _exceeds(declared: str | None, limit: int) -> bool:
    """Whether a ``Content-Length`` announces more than ``limit`` bytes."""
    if not declared or not (declared.isascii() and declared.isdigit()):
        return False  # absent or malformed: the body is counted as it arrives
    digits = declared.lstrip("0")
    # Compare lengths first: int() of a 5,000-digit header is refused by Python itself.
    return len(digits) > len(str(limit)) or int(digits or "0") > limit


def _too_large(size: str, limit: int) -> HttpAnswer:
    message = (
        f"the request body {size}; at most {limit} are accepted (DURABLE_FX_MAX_REQUEST_BYTES)"
    )
    # Closing the connection stops the client from sending the rest.
    return _problem(413, message, "body", close=True)


def _problem(status: int, message: str, field: str, *, close: bool = False) -> HttpAnswer:
    """A JSON problem answer, as the management API writes them."""
    body = {"error": message, "fields": [{"field": field, "message": message}]}
    headers = [("content-type", "application/json")]
    if close:
        headers.append(("connection", "close"))
    return HttpAnswer(status, headers, json.dumps(body).encode())


async def _send(send: Send, answer: HttpAnswer) -> None:
    # The length is the body's: a Content-Length the function set itself could lie.
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in answer.headers
        if k.lower() != "content-length"
    ]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
