"""A real HTTP server on a free loopback port for durable HTTP tests (starlette on uvicorn).

A test scripts each path with the responses it gives, in order (the last one
repeats), and reads back every request the server received. It also serves
the App Service managed-identity protocol (``IDENTITY_ENDPOINT`` +
``IDENTITY_HEADER``) that azure-identity's ``ManagedIdentityCredential``
speaks, so tokens come from a real endpoint and not a fake credential.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

IDENTITY_HEADER = "test-identity-header"
"""The secret azure-identity must present to the token endpoint."""
TOKEN = "mi-token-for-the-test"


@dataclass(frozen=True)
class Reply:
    """One scripted response."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str = b""
    delay: float = 0.0
    """Seconds to wait before answering (a slow server)."""


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedServer:
    """The scripts, the record of requests, and the base URL once serving."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self.requests: list[Seen] = []
        self.token_requests: list[dict[str, str]] = []
        self.url = ""

    def script(self, path: str, *replies: Reply) -> str:
        """Answer ``path`` with ``replies`` in order (the last repeats); returns its full URL."""
        with self._lock:
            self._scripts[path] = list(replies)
        return self.url + path

    def seen(self, path: str) -> list[Seen]:
        """The requests received for ``path``, in order."""
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _next(self, path: str) -> Reply:
        with self._lock:
            replies = self._scripts.get(path)
            if not replies:
                return Reply(404, body=f"no script for {path}")
            return replies.pop(0) if len(replies) > 1 else replies[0]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.method, request.url.path, dict(request.headers), body)
        with self._lock:
            self.requests.append(seen)
        reply = self._next(request.url.path)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)

    async def token(self, request: Request) -> Response:
        """The App Service managed-identity endpoint (api-version 2019-08-01)."""
        with self._lock:
            self.token_requests.append(dict(request.query_params))
        if request.headers.get("x-identity-header") != IDENTITY_HEADER:
            return JSONResponse({"error": "bad identity header"}, status_code=401)
        return JSONResponse(
            {
                "access_token": TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": request.query_params.get("resource", ""),
                "token_type": "Bearer",
            }
        )


@contextmanager
def scripted_server() -> Iterator[ScriptedServer]:
    """Serve a ``ScriptedServer`` on a free loopback port for the block."""
    scripted = ScriptedServer()
    app = Starlette(
        routes=[
            Route("/msi/token", scripted.token, methods=["GET"]),
            Route("/{path:path}", scripted.handle, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    scripted.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield scripted
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
