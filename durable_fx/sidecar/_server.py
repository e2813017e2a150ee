"""``SidecarServer``: the Durable Task gRPC sidecar on a durable_fx store, embeddable.

Run it like a ``Worker``: ``await server.run()`` on a loop of yours,
``async with server:``, or ``with server:`` / ``start()``/``stop()`` on a
background thread. Stopping ends every worker's stream, lets in-flight
completions finish for ``shutdown_grace`` seconds, and releases whatever
workers still hold so it is delivered again at once after a restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Self

from .._clock import Clock, SystemClock
from ..storage import open_store
from ..storage._protocol import Store
from ..worker._background import BackgroundThread, StartStopContext, StopSignal
from ._client_service import ClientService
from ._entities import ENTITY_SHAPES, EntityShape
from ._entity_client import EntityClientService
from ._episodes import EpisodeBridge
from ._message_limit import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RequestLimitInterceptor,
    check_max_message_bytes,
    receive_cap,
)
from ._proto import grpc, pb_grpc
from ._security import BearerTokenInterceptor, TlsFiles, exposure_warning
from ._service import SidecarServicer
from ._threaded import ThreadedServicer
from ._watch import InstanceWatch
from ._work_items import WorkItemDispatcher

__all__ = ["SidecarServer"]

log = logging.getLogger("durable_fx.sidecar")


class SidecarServer(StartStopContext):
    """Serves ``TaskHubSidecarService`` so the official Durable Task SDKs run on ``store``.

    Args:
        store: A ``Store`` or a store URL (default: ``default_store_url()``).
        host: The interface to listen on.
        port: The port to listen on; 0 picks a free one (see ``port`` once started).
        clock: Source of timestamps (tests inject a manual one).
        lease: How long work handed to a worker stays locked; held activities
            are renewed, and a crashed sidecar's work is taken over after it.
        max_poll_interval: Longest sleep between store polls of an idle stream.
        ping_interval: Seconds of silence after which a stream gets a health
            ping (the SDKs reconnect after 120 s without a message).
        cache_size: Instances whose history is kept between episodes.
        shutdown_grace: Seconds stopping waits for in-flight RPCs.
        threads: Calls served at once: each worker's stream and each waiting
            client (``WaitForInstance*``) holds one while it lasts.
        auth_token: If set, every call must carry the metadata
            ``authorization: Bearer <auth_token>``; others are UNAUTHENTICATED.
        tls_cert: A PEM certificate chain; with ``tls_key``, the port speaks TLS only.
        tls_key: The certificate's PEM private key (unencrypted).
        max_message_bytes: The largest message taken from a client or worker,
            and the largest work item sent to a worker (default 4 MiB,
            gRPC's and so the SDKs' default receive limit). A work item that
            would be larger, or a worker's answer that is, fails its
            instance (or its activity) with the reason instead of breaking
            the worker's stream; other requests over it are refused
            (RESOURCE_EXHAUSTED), and gRPC itself refuses any message over
            ``max(4 * limit, limit + 16 MiB)``. Raise it together with the
            workers' ``max_receive_message_length``.
        activity_timeout: If set, an activity a worker has held this long
            fails with ``ActivityTimeoutError`` (its orchestration moves on,
            a retry policy may try again) and its late result is refused:
            the Durable Task protocol has no heartbeats, so this is what
            keeps a hung SDK activity from holding its orchestration.
        entity_work_items: How an entity's operations go to a worker:
            ``"batch"`` (an ``EntityBatchRequest``, which every SDK with
            entities reads) or ``"operations"`` (an ``EntityRequest`` of
            request events, the newer shape; the Python SDK reads both).

    Raises:
        ValueError: Only one of ``tls_cert``/``tls_key``, an unreadable or
            mismatched pair, an empty ``auth_token``, or a limit gRPC cannot take.
    """

    def __init__(
        self,
        store: Store | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 4001,
        clock: Clock | None = None,
        lease: timedelta = timedelta(minutes=2),
        max_poll_interval: float = 1.0,
        ping_interval: float = 30.0,
        cache_size: int = 1_000,
        shutdown_grace: float = 5.0,
        threads: int = 200,
        auth_token: str | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        activity_timeout: timedelta | None = None,
        entity_work_items: EntityShape = "batch",
    ) -> None:
        if entity_work_items not in ENTITY_SHAPES:
            raise ValueError(
                f"entity_work_items is one of {', '.join(ENTITY_SHAPES)}, not {entity_work_items!r}"
            )
        self._entity_shape: EntityShape = entity_work_items
        if activity_timeout is not None and activity_timeout <= timedelta(0):
            raise ValueError(f"activity_timeout must be positive, not {activity_timeout}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and its key (tls_cert and tls_key)")
        # Checked before the store opens: a bad setting must not leave a store open.
        self._tls = (
            None if tls_cert is None or tls_key is None else TlsFiles.load(tls_cert, tls_key)
        )
        self._auth = None if auth_token is None else BearerTokenInterceptor(auth_token)
        self._max_message = check_max_message_bytes(max_message_bytes)
        self._clock = clock or SystemClock()
        self._owns_store = not isinstance(store, Store)
        self._store = store if isinstance(store, Store) else open_store(store, clock=self._clock)
        self._host = host
        self._port = port
        self._lease = lease
        self._activity_timeout = activity_timeout
        self._max_poll = max_poll_interval
        self._ping_interval = ping_interval
        self._cache_size = cache_size
        self._grace = shutdown_grace
        self._threads = threads
        self._owner = f"{socket.gethostname()}:{os.getpid()}:sidecar:{uuid.uuid4().hex[:8]}"
        self._server: grpc.Server | None = None
        self._dispatcher: WorkItemDispatcher | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_signal = StopSignal("sidecar")
        self._run_task: asyncio.Task[None] | None = None
        self._background = BackgroundThread(
            self._stop_signal, name="durable-fx-sidecar", what="sidecar", log=log
        )

    @property
    def store(self) -> Store:
        """The store the sidecar serves."""
        return self._store

    @property
    def port(self) -> int:
        """The port it listens on (the one picked, once started with port 0)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port``, as an SDK's ``host_address`` takes it."""
        return f"{self._host}:{self._port}"

    # -- async lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``request_stop()`` (or cancellation), then stop gracefully."""
        self._stopping = self._stop_signal.arm()  # before the try: a second run stops nothing
        try:
            await self._start()
            assert self._stopping is not None
            self._background.ready()
            await self._stopping.wait()
        finally:
            await self._stop()

    def request_stop(self) -> None:
        """Ask the server to stop (now, or as soon as it starts); safe from any thread."""
        self._stop_signal.request()

    async def __aenter__(self) -> Self:
        self._stopping = self._stop_signal.arm()
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        assert self._stopping is not None
        stopping = self._stopping

        async def wait_then_stop() -> None:
            try:
                await stopping.wait()
            finally:
                await self._stop()

        self._run_task = asyncio.create_task(wait_then_stop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.request_stop()
        if self._run_task is not None:
            await self._run_task

    async def _start(self) -> None:
        watch = InstanceWatch(self._store, max_poll=self._max_poll)
        bridge = EpisodeBridge(self._store, self._clock, cache_size=self._cache_size)
        self._dispatcher = WorkItemDispatcher(
            self._store,
            self._clock,
            bridge,
            watch,
            owner=self._owner,
            lease=self._lease,
            activity_timeout=self._activity_timeout,
            ping_interval=self._ping_interval,
            max_poll_interval=self._max_poll,
            max_message_bytes=self._max_message,
            entity_shape=self._entity_shape,
        )
        arrived = self._dispatcher.work_arrived
        clients = ClientService(self._store, self._clock, watch, arrived)
        entities = EntityClientService(self._store, clients.client, arrived)
        servicer = SidecarServicer(clients, entities, self._dispatcher)
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(
                self._threads, thread_name_prefix="durable-fx-sidecar-call"
            ),
            # gRPC refuses a request over the hard cap before reading it. Up to the
            # cap, the sidecar checks the limit itself: an answer too large fails
            # its own work item, any other request is refused (``_message_limit``).
            options=[("grpc.max_receive_message_length", receive_cap(self._max_message))],
            # The token first: a caller without it gets nothing parsed.
            interceptors=[*filter(None, [self._auth]), RequestLimitInterceptor(self._max_message)],
        )
        threaded = ThreadedServicer(servicer, asyncio.get_running_loop())
        pb_grpc.add_TaskHubSidecarServiceServicer_to_server(threaded, server)
        self._port = self._bind(server)
        server.start()
        self._server = server
        self._dispatcher.start()
        log.info(
            "durable_fx sidecar listening on %s (%s, %s, messages up to %d bytes)",
            self.address,
            "TLS" if self._tls else "no TLS",
            "token required" if self._auth else "no token",
            self._max_message,
        )
        warning = exposure_warning(
            self._host, tls=self._tls is not None, token=self._auth is not None
        )
        if warning:
            log.warning("%s", warning)

    def _bind(self, server: grpc.Server) -> int:
        address = f"{self._host}:{self._port}"
        try:
            if self._tls is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, self._tls.credentials())
        except RuntimeError as error:  # grpcio's way of saying the bind failed
            raise OSError(f"{error}") from None
        if bound == 0:
            raise OSError("the address could not be bound")
        return bound

    async def _stop(self) -> None:
        server, dispatcher = self._server, self._dispatcher
        self._server = None
        if dispatcher is not None:
            dispatcher.begin_close()
        if server is not None:
            # Calls in flight may still need the loop: wait for them off it.
            stopped = server.stop(self._grace)
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        if dispatcher is not None:
            await dispatcher.close()
        if self._owns_store:
            await self._store.close()
        log.info("durable_fx sidecar on %s stopped", self.address)

    # -- sync lifecycle (background thread) ------------------------------------------------------

    def start(self) -> None:
        """Serve on a background thread until ``stop()``; raises if it cannot listen."""
        self._background.start(self.run)

    def stop(self) -> None:
        """Stop the background thread's server gracefully and wait for it."""
        self._background.stop()
