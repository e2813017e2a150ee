"""gRPC's threaded server in front of the sidecar's asyncio handlers.

The handlers are coroutines on the sidecar's event loop (the store is
async). They are served by grpcio's threaded server rather than grpc.aio:
its C core does the socket work on its own threads without the GIL, where
grpc.aio writes to sockets from the event loop, holding the GIL, which about
doubled the sidecar's CPU per work item when measured (and slowed an SDK
worker in the same process). Each call's thread hands the coroutine to the
loop and waits; a streaming call's thread forwards what the coroutine writes;
a handler that is a plain function runs on the call's thread itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import queue
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, NoReturn

from ._proto import grpc

__all__ = ["CallContext", "ThreadedServicer"]

STREAMING = frozenset({"GetWorkItems", "StreamInstanceHistory"})
"""The RPCs whose responses are streams."""

_END = object()


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class CallContext:
    """What a handler may do with its call: abort it, read its deadline, write to its stream."""

    def __init__(
        self, context: grpc.ServicerContext, stream: queue.SimpleQueue[Any] | None
    ) -> None:
        self._context = context
        self._stream = stream

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        """End the call with ``code`` and ``details``."""
        raise _Aborted(code, details)

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline (``None``: no deadline)."""
        return self._context.time_remaining()

    async def write(self, message: Any) -> None:
        """Send one message on a streaming call."""
        if self._stream is None:
            raise TypeError("write() on a unary call")
        self._stream.put(message)


Handler = Callable[[Any, CallContext], Coroutine[Any, Any, Any]]


class ThreadedServicer:
    """Exposes ``servicer``'s coroutine handlers as the threaded server's callables."""

    def __init__(self, servicer: object, loop: asyncio.AbstractEventLoop) -> None:
        self._servicer = servicer
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[[Any, grpc.ServicerContext], Any]:
        handler = getattr(self._servicer, name)
        if not inspect.iscoroutinefunction(handler):
            plain: Callable[[Any, grpc.ServicerContext], Any] = handler
            return plain  # a plain function: it runs on the call's thread
        if name in STREAMING:
            return lambda request, context: self._stream(handler, request, context)
        return lambda request, context: self._unary(handler, request, context)

    def _unary(self, handler: Handler, request: Any, context: grpc.ServicerContext) -> Any:
        call = CallContext(context, None)
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            handler(request, call), self._loop
        )
        context.add_callback(lambda: _cancel(future))  # the caller went away: stop working
        try:
            return future.result()
        except _Aborted as aborted:
            context.abort(aborted.code, aborted.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")

    def _stream(
        self, handler: Handler, request: Any, context: grpc.ServicerContext
    ) -> Iterator[Any]:
        messages: queue.SimpleQueue[Any] = queue.SimpleQueue()
        call = CallContext(context, messages)
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            handler(request, call), self._loop
        )
        future.add_done_callback(lambda _: messages.put(_END))
        context.add_callback(lambda: _cancel(future))
        while (message := messages.get()) is not _END:
            yield message
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, _Aborted):
            context.abort(error.code, error.details)
        elif error is not None:
            raise error


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    future.cancel()
