"""A stand-in for the Functions host over the hub's queues, for the bindings tests.

It receives from the hub's control queues (every partition's and the legacy
one) and its work-item queue, decodes Base64, builds each ``func.QueueMessage``
with azure-functions' converter from the trigger metadata, calls the indexed
function by keyword, and deletes the message on success (or releases it on
failure). Nothing else polls: between invocations the app must make no requests.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import azure.functions as func

import durable_fx
from durable_fx import DurableApp
from durable_fx.hosting import http_request, queue_message
from durable_fx.queues import QueueBackend, QueuedMessage, decode_body


class FakeHost:
    """Receives the hub's queue messages and invokes the app's queue functions with them."""

    def __init__(self, app: DurableApp, queues: QueueBackend) -> None:
        self.app = app
        functions: dict[str, Any] = {str(f.get_function_name()): f for f in app.get_functions()}
        durable = [n for n in functions if n.startswith("dfx_control") or n == "dfx_work_items"]
        self.handlers: dict[str, Callable[..., Any]] = {
            functions[name].get_trigger().queue_name: functions[name].get_user_function()
            for name in durable
        }
        self.http = {n: f.get_user_function() for n, f in functions.items()}
        self.queues = queues
        self.invocations = 0
        self.ran: Counter[str] = Counter()
        """Invocations by queue."""
        self.gone: list[str] = []
        """Messages that were gone when the host deleted them after a successful invocation."""

    async def pump(self) -> int:
        """One receive per queue; invoke each message; returns how many ran."""
        ran = 0
        for queue in self.handlers:
            received = await self.queues.receive(queue, limit=16, visibility=timedelta(minutes=5))
            for message in received:
                await self.invoke(message)
                ran += 1
        self.invocations += ran
        return ran

    async def invoke(self, message: QueuedMessage) -> None:
        """Invoke the message's function; delete the message on success, else release it."""
        handler = self.handlers[message.queue]
        try:
            await handler(msg=queue_message(message, decode_body(message.text)))
        except Exception:
            await self.queues.update_visibility(message, timedelta(0))
            raise
        if not await self.queues.delete(message):
            self.gone.append(message.id)  # the real host logs a 404 and carries on
        self.ran[message.queue] += 1

    async def run_until(self, done: Callable[[], Any], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await done():
            assert time.monotonic() < deadline, "the host never got there"
            if not await self.pump():
                await asyncio.sleep(0.05)

    async def run_until_finished(self, instance_id: str) -> durable_fx.OrchestrationState:
        """Pump until ``instance_id`` has finished; returns its final state."""
        client = self.app.runtime.client

        async def finished() -> bool:
            state = await client.get(instance_id)
            return state is not None and state.status.is_terminal

        await self.run_until(finished)
        state = await client.get(instance_id)
        assert state is not None
        return state

    async def start(self, name: str, instance_id: str, body: bytes = b"") -> func.HttpResponse:
        url = f"http://localhost:7071/api/orchestrators/{name}/{instance_id}"
        req = http_request("POST", url, {}, {}, {"name": name, "instanceId": instance_id}, body)
        response: func.HttpResponse = await self.http["dfx_start"](req=req)
        return response
