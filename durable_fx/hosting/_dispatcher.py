"""Feeds queue-triggered functions from a ``QueueBackend`` with the Functions host's rules.

Per function (host.json ``extensions.queues``):

- poll with randomized exponential back-off up to ``maxPollingInterval`` while
  the queue is empty; fetch ``batchSize`` messages, and the next batch once no
  more than ``newBatchThreshold`` are still running;
- hide each received message for 10 minutes, renewed while its function runs;
- on success delete it; on an exception release it after ``visibilityTimeout``,
  or once it was delivered ``maxDequeueCount`` times copy it to
  ``<queue>-poison`` and delete it;
- a message already delivered more than ``maxDequeueCount`` times, or whose
  Base64 body does not decode, is poisoned without an invocation.

``kick()`` makes every listener poll at once: ``serve`` calls it after each
invocation, since one function's work (an HTTP start, an episode) is what
usually puts messages on the queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from datetime import timedelta

from opentelemetry.trace import SpanKind

from .._clock import SystemClock
from .._tracing import span_in
from ..bindings import QueueOptions, is_durable_trigger
from ..queues import QueueBackend, QueuedMessage, decode_body, poison_queue_of
from ..worker._backoff import Backoff
from ._index import IndexedFunction
from ._invoke import Invoker, queue_message
from ._logging import invocation

__all__ = ["Dispatcher"]

log = logging.getLogger("durable_fx.serve")

_HOLD = timedelta(minutes=10)
_RENEW_EVERY = 120.0
_MIN_POLL = 0.1


class _Listener:
    """Polls one function's queue and runs its messages."""

    def __init__(
        self,
        function: IndexedFunction,
        queues: QueueBackend,
        options: QueueOptions,
        invoker: Invoker,
        kick_all: asyncio.Event,
    ) -> None:
        self.function = function
        self.queue = str(function.trigger["queueName"])
        self._queues = queues
        self._options = options
        self._invoker = invoker
        self._kick = kick_all
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Poll until ``stopping``; back off while the queue is empty."""
        options = self._options
        ceiling = max(options.max_polling_interval.total_seconds(), _MIN_POLL)
        backoff = Backoff(SystemClock(), ceiling, floor=_MIN_POLL)
        capacity = options.batch_size + options.batch_threshold()
        while not stopping.is_set():
            received: list[QueuedMessage] = []
            if len(self._running) <= options.batch_threshold():
                room = min(options.batch_size, capacity - len(self._running))
                try:
                    received = await self._queues.receive(self.queue, limit=room, visibility=_HOLD)
                except Exception:
                    log.exception("receiving from %s failed; retrying", self.queue)
            for message in received:
                task = asyncio.ensure_future(self._process(message))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if received:
                backoff.found_work()
                await asyncio.sleep(0)
                continue
            # Randomized exponential back-off, as the host's queue listener does.
            await _wait(stopping, self._kick, backoff.wait_for(None) * random.uniform(0.8, 1.2))
            backoff.idled()
            if self._kick.is_set():
                backoff.found_work()

    async def drain(self, grace: float) -> None:
        """Let running invocations finish for ``grace`` seconds, then release their messages."""
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, message: QueuedMessage) -> None:
        options = self._options
        if message.dequeue_count > options.max_dequeue_count:
            await self._poison(message, f"dequeue count {message.dequeue_count} exceeds the limit")
            return
        try:
            body = decode_body(message.text, options.message_encoding)
        except ValueError as error:
            await self._poison(message, str(error))
            return
        renewal = asyncio.ensure_future(self._renew(message))
        try:
            await self._invoke(message, body)
        except asyncio.CancelledError:
            # Stopping: hand the message back at once rather than after its 10 minutes.
            with contextlib.suppress(Exception):
                await self._queues.update_visibility(await _stop(renewal, message), timedelta(0))
            raise
        except Exception as error:
            await self._failed(await _stop(renewal, message), error)
            return
        with contextlib.suppress(Exception):
            await self._queues.delete(await _stop(renewal, message))

    async def _invoke(self, message: QueuedMessage, body: bytes) -> None:
        function = self.function
        annotation = function.annotations.get(function.trigger["name"])
        value: object
        if annotation is str:
            value = body.decode()
        elif annotation is bytes:
            value = body
        else:
            value = queue_message(message, body)
        invocation_id = str(uuid.uuid4())
        fields = {
            "queue": self.queue,
            "message_id": message.id,
            "dequeue_count": message.dequeue_count,
        }
        try:
            with self._span(message), invocation(function.name, "queue", invocation_id, **fields):
                await self._invoker.invoke(function, value, invocation_id)
        finally:
            self._kick.set()

    def _span(self, message: QueuedMessage) -> contextlib.AbstractContextManager[object]:
        """A CONSUMER span for the message, which an event it raises links to.

        Not for episodes and activities: their spans are the run's.
        """
        if is_durable_trigger(self.function.name):
            return contextlib.nullcontext()
        attributes = {
            "messaging.operation.type": "process",
            "messaging.destination.name": self.queue,
            "messaging.message.id": message.id,
            "durable_fx.dequeue_count": message.dequeue_count,
        }
        return span_in(f"process {self.queue}", None, kind=SpanKind.CONSUMER, attributes=attributes)

    async def _renew(self, message: QueuedMessage) -> QueuedMessage:
        """Keep the message hidden while its function runs; returns its latest receipt."""
        latest = message
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(_RENEW_EVERY)
                renewed = await self._queues.update_visibility(latest, _HOLD)
                if renewed is None:
                    break
                latest = renewed
        return latest

    async def _failed(self, message: QueuedMessage, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}"
        if message.dequeue_count >= self._options.max_dequeue_count:
            await self._poison(message, reason)
            return
        with contextlib.suppress(Exception):
            await self._queues.update_visibility(message, self._options.visibility_timeout)

    async def _poison(self, message: QueuedMessage, reason: str) -> None:
        if poison_queue_of(message.queue) is None:
            log.error("message %s of %s failed (%s); it has no poison queue", message.id,
                      message.queue, reason)  # fmt: skip
            return
        try:
            await self._queues.poison(message, reason)
        except Exception:
            log.exception("poisoning message %s of %s failed", message.id, message.queue)
            return
        log.warning(
            "poisoned a message",
            extra={"fields": {"queue": message.queue, "message_id": message.id, "reason": reason}},
        )


async def _stop(renewal: asyncio.Task[QueuedMessage], message: QueuedMessage) -> QueuedMessage:
    """Stop renewing; the message with its latest pop receipt."""
    renewal.cancel()
    try:
        return await renewal
    except asyncio.CancelledError:
        return message  # cancelled before it ever ran: the receipt never changed


async def _wait(stopping: asyncio.Event, kicked: asyncio.Event, timeout: float) -> None:
    waits = [asyncio.ensure_future(stopping.wait()), asyncio.ensure_future(kicked.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


class Dispatcher:
    """One listener per queue-triggered function, sharing a kick."""

    def __init__(
        self,
        functions: list[IndexedFunction],
        queues: QueueBackend,
        options: QueueOptions,
        invoker: Invoker,
    ) -> None:
        self._kicked = asyncio.Event()
        self._listeners = [
            _Listener(f, queues, options, invoker, self._kicked)
            for f in functions
            if f.trigger_type == "queueTrigger"
        ]
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def queue_names(self) -> list[str]:
        """The queues listened to."""
        return [listener.queue for listener in self._listeners]

    def start(self) -> None:
        """Start the listeners on the running loop."""
        self._tasks = [
            asyncio.ensure_future(listener.run(self._stopping)) for listener in self._listeners
        ]
        self._tasks.append(asyncio.ensure_future(self._clear_kicks()))

    async def _clear_kicks(self) -> None:
        # A kick wakes every listener once; clearing it shortly after lets each see it.
        while not self._stopping.is_set():
            await self._kicked.wait()
            await asyncio.sleep(0.01)
            self._kicked.clear()

    def kick(self) -> None:
        """Make every listener poll now."""
        self._kicked.set()

    async def stop(self, grace: float) -> None:
        """Stop polling; let running invocations finish for ``grace`` s, release the rest."""
        self._stopping.set()
        self._kicked.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(listener.drain(grace) for listener in self._listeners))
