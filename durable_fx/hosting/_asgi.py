"""The ASGI application that serves an app's HTTP triggers like the Functions host.

Routes come from the triggers' templates under host.json's ``routePrefix``;
a request that matches no route (or not its methods) is 404, one without the
key its auth level needs is 401, a body over the limit is 413, and an
exception in the function is an empty 500, as on Azure. ``GET /`` answers
200 so a health probe needs no key.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from ._index import IndexedFunction
from ._invoke import HttpAnswer, Invoker, http_answer, http_request
from ._keys import FunctionKeys
from ._logging import invocation
from ._routes import RouteTable

__all__ = ["MAX_REQUEST_BYTES", "FunctionsAsgi"]

log = logging.getLogger("durable_fx.serve")

MAX_REQUEST_BYTES = 100 * 1024 * 1024
"""The Functions host's request size limit (100 MB)."""

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
    """

    def __init__(
        self,
        functions: list[IndexedFunction],
        *,
        route_prefix: str,
        keys: FunctionKeys,
        invoker: Invoker,
        after_invocation: Callable[[], None] = lambda: None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
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
        match = self.routes.match(method, path)
        if match is None:
            if path.strip("/") == "" and method in ("GET", "HEAD"):
                return HttpAnswer(200, [("content-type", "text/plain")], b"durable-fx serve\n")
            return HttpAnswer(404, [], b"")
        function = match.target
        query_string = scope.get("query_string", b"").decode("latin-1")
        query = _joined(parse_qsl(query_string, keep_blank_values=True))
        headers = _joined(
            [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        )
        offered = headers.get("x-functions-key") or query.get("code")
        level = str(function.trigger.get("authLevel") or "FUNCTION")
        if not self._keys.allows(level, offered):
            return HttpAnswer(401, [], b"")
        body = await _read_body(receive, self._limit, headers.get("content-length"))
        if body is None:
            return HttpAnswer(413, [], b"")
        url = f"{scope.get('scheme', 'http')}://{_host(scope, headers)}{path}"
        url += f"?{query_string}" if query_string else ""
        request = http_request(method, url, headers, query, match.route_params, body)
        invocation_id = str(uuid.uuid4())
        try:
            with invocation(
                function.name, "http", invocation_id, method=method, path=path
            ) as record:
                answer = http_answer(await self._invoker.invoke(function, request, invocation_id))
                record.fields["status"] = answer.status
        except Exception:
            answer = HttpAnswer(500, [], b"")
        finally:
            self._after()
        return answer


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


async def _read_body(receive: Receive, limit: int, declared: str | None) -> bytes | None:
    """The whole body, or ``None`` as soon as it is known to exceed ``limit``."""
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


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
