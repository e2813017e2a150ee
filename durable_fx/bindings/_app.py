"""``DurableApp``: a Functions app (Python v2 model) that runs durable orchestrations.

It is a ``func.FunctionApp``: user routes, timers, queue triggers and
blueprints work as usual. On top, it registers real functions the host
indexes:

==================  ===========================  ==========================================
function            trigger                      does
==================  ===========================  ==========================================
``dfx_control_NN``  queue ``<hub>-control-NN``   runs the episodes of the instance named
``dfx_control``     queue ``<hub>-control``      the same, for a hub made before partitions
``dfx_work_items``  queue ``<hub>-workitems``    runs one activity
``dfx_start``...    HTTP (management API)        start / status / list / raise / terminate...
==================  ===========================  ==========================================

There is one control function per partition (``DURABLE_FX_PARTITIONS``, 4 by
default: ``dfx_control_00`` to ``dfx_control_03``), so a Flex Consumption app
scales each partition on its own. ``dfx_control`` drains the single control
queue of a hub made by an earlier version (nothing sends to it any more; it
costs only the host's idle polling of an empty queue). Orchestrators and
activities are not functions of their own: the queue functions run all of
them, so adding one never changes the app's bindings.
Decorators return the user's function unchanged (typed), and ``app.registry``
is a ``Registry``, so ``Worker(app, store)`` and ``DurableClient`` work as in
any durable_fx program.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

import azure.functions as func

from .._registry import Registry, validate_event_name
from ..queues import poison_queue_of, validate_queue_name
from ..storage import Store
from ..storage._delivered import DeliveredMessage
from ..telemetry import configure_telemetry
from ._client_binding import with_durable_client
from ._dashboard_route import DashboardFunction, dashboard_route
from ._events import EventIdSource, EventSource, InstanceIdSource, QueueEventHandler, WebhookHandler
from ._host_trace import host_trace
from ._management import ManagementApi, guarded
from ._runtime import AppRuntime
from ._schedule_api import ScheduleApi
from ._settings import FunctionsSettings
from ._verify import WebhookVerifier

__all__ = ["DurableApp"]

log = logging.getLogger("durable_fx.functions")

F = TypeVar("F", bound=Callable[..., Any])
E = TypeVar("E", bound=Callable[..., Any])

HttpHandler = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]
QueueHandler = Callable[[func.QueueMessage], Awaitable[None]]


class DurableApp(func.FunctionApp):
    """A ``func.FunctionApp`` with durable orchestrators, activities and event sources.

    Args:
        http_auth_level: Default auth level of HTTP functions (as ``FunctionApp``).
        hub: Task hub; else ``DURABLE_FX_HUB``, else ``durablefx``.
        connection: App setting of the storage connection the durable queue
            triggers use; else ``DURABLE_FX_CONNECTION``, else ``AzureWebJobsStorage``.
        store: A ``Store`` or store URL; else ``DURABLE_FX_STORE``, else the connection's.
        management_api: Register the HTTP management API functions.
        management_auth_level: Their auth level; else ``DURABLE_FX_MANAGEMENT_AUTH``,
            else FUNCTION.
        registry: Share an existing ``Registry`` instead of a new one.
        default_version: The orchestration version the app's starts record when
            they name none; else ``DURABLE_FX_DEFAULT_VERSION``.
    """

    def __init__(
        self,
        http_auth_level: func.AuthLevel | str = func.AuthLevel.FUNCTION,
        *,
        hub: str | None = None,
        connection: str | None = None,
        store: Store | str | None = None,
        management_api: bool = True,
        management_auth_level: func.AuthLevel | str | None = None,
        registry: Registry | None = None,
        default_version: str | None = None,
    ) -> None:
        super().__init__(http_auth_level=http_auth_level)
        _configure_telemetry()
        level = management_auth_level
        self._settings = FunctionsSettings.from_environment(
            hub=hub or _hub_of(store),
            partitions=_partitions_of(store),
            connection=connection,
            store_url=store if isinstance(store, str) else None,
            management_auth_level=level.name if isinstance(level, func.AuthLevel) else level,
            default_version=default_version,
        )
        self._registry = registry if registry is not None else Registry()
        self._runtime = AppRuntime(self._registry, self._settings, store)
        self._management = ManagementApi(self._runtime)
        self._schedules = ScheduleApi(self._runtime)
        self._register_durable_triggers()
        if management_api:
            self._register_management_api()
        self._register_dashboard()

    # -- what the app is -----------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The orchestrators and activities (``Worker(app, store)`` runs them)."""
        return self._registry

    @property
    def settings(self) -> FunctionsSettings:
        """Hub, queue and connection names, limits (read from app settings)."""
        return self._settings

    @property
    def runtime(self) -> AppRuntime:
        """The store, clients and runners the app's functions share."""
        return self._runtime

    def use_store(self, store: Store | str) -> None:
        """Run against ``store`` instead of the settings' store (before first use).

        An Azure store must have the partitions the app's control functions are
        registered on (``settings.partitions``).
        """
        count = _partitions_of(store)
        if count is not None and count != self._settings.partitions:
            raise ValueError(
                f"the store has {count} control partitions but the app's functions are "
                f"registered on {self._settings.partitions} (DURABLE_FX_PARTITIONS); "
                "open the store with the app's count"
            )
        self._runtime.use_store(store)

    # -- orchestrators and activities ----------------------------------------------------

    @overload
    def orchestrator(self, fn: F, /) -> F: ...
    @overload
    def orchestrator(
        self, /, *, name: str | None = None, events: Mapping[str, Any] | None = None
    ) -> Callable[[F], F]: ...

    def orchestrator(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        events: Mapping[str, Any] | None = None,
    ) -> F | Callable[[F], F]:
        """Register a generator function ``f(ctx, input)`` as an orchestrator.

        ``events`` declares the events it waits for and their data's type; the
        management API's ``raiseEvent`` refuses others, and data that would not
        decode, with a 400 naming the fields (``Registry.orchestrator``).
        """
        register: Callable[[F], F] = self._registry.orchestrator(name=name, events=events)
        return register(fn) if fn is not None else register

    @overload
    def activity(self, fn: F, /) -> F: ...
    @overload
    def activity(
        self,
        /,
        *,
        name: str | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> Callable[[F], F]: ...

    def activity(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        timeout: timedelta | None = None,
        heartbeat_timeout: timedelta | None = None,
        total_timeout: timedelta | None = None,
    ) -> F | Callable[[F], F]:
        """Register a function (sync or ``async def``) as an activity (``Registry.activity``)."""
        register: Callable[[F], F] = self._registry.activity(
            name=name,
            timeout=timeout,
            heartbeat_timeout=heartbeat_timeout,
            total_timeout=total_timeout,
        )
        return register(fn) if fn is not None else register

    @overload
    def entity(self, target: E, /) -> E: ...
    @overload
    def entity(self, /, *, name: str | None = None) -> Callable[[E], E]: ...

    def entity(
        self, target: E | None = None, /, *, name: str | None = None
    ) -> E | Callable[[E], E]:
        """Register an entity: a function ``f(ctx, input)`` or a ``DurableEntity`` class.

        Its operations arrive on the control queues like any instance's wake-up:
        no trigger of its own.
        """
        register: Callable[[E], E] = self._registry.entity(name=name)
        return register(target) if target is not None else register

    # -- event sources ----------------------------------------------------------------------

    def event_webhook(
        self,
        *,
        route: str,
        event_name: str,
        instance_id: InstanceIdSource,
        verify: WebhookVerifier | Sequence[WebhookVerifier] = (),
        event_id: EventIdSource | None = None,
        batch: bool = False,
        dead_letter_queue: str | None = None,
        auth_level: func.AuthLevel | str | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Turn verified POSTs to ``route`` into ``raise_event(instance, event_name, data)``.

        The decorated function receives the JSON body validated into its
        parameter's type and returns the event's data (``None``: ignore it).
        ``instance_id`` is a callable on that payload or a route/query parameter
        name; ``event_id`` gives the provider's event id (default: the body's
        digest when a verifier signs it, else its id header, else the body's
        digest), so a replayed delivery raises once.

        With ``batch`` the body is a JSON array of payloads (Event Grid): every
        item is raised whatever the others are; items that never can be go to
        ``<dead_letter_queue>-poison`` with the reason (default: the function's
        name as a queue name, ``delivery_grid`` -> ``delivery-grid-poison``).

        ``auth_level`` defaults to ANONYMOUS when every verifier authenticates
        the sender (signatures), else to the app's level. A signature covers
        the body only, so an ANONYMOUS route must take the instance from it:
        ``instance_id`` naming a route or query parameter is refused there.
        """
        verifiers = (verify,) if callable(verify) else tuple(verify)
        if auth_level is None and verifiers and all(v.authenticates for v in verifiers):
            auth_level = func.AuthLevel.ANONYMOUS
        methods = ["POST", *(m for v in verifiers for m in v.methods if m != "POST")]
        _check_event_name(event_name)

        def register(fn: F) -> F:
            function_name = name or fn.__name__
            signed_only = any(v.authenticates for v in verifiers) and _anonymous(auth_level)
            if isinstance(instance_id, str) and signed_only:
                raise TypeError(
                    f"webhook {function_name!r}: instance_id={instance_id!r} names a route or "
                    "query parameter, which no signature covers: anyone holding one signed "
                    "request could raise it on another instance. Take the instance from the "
                    "signed payload (instance_id=lambda payload: ...), or require a key "
                    "(auth_level=func.AuthLevel.FUNCTION)"
                )
            source = EventSource.of(
                function_name, fn, event_name=event_name, instance_id=instance_id, event_id=event_id
            )
            queue = _dead_letter_queue(function_name, dead_letter_queue)
            handler = WebhookHandler(
                self._runtime, source, verifiers, batch=batch, dead_letter_queue=queue
            )
            self._add_http(function_name, route, list(dict.fromkeys(methods)), auth_level, handler)
            return fn

        return register

    def event_queue(
        self,
        *,
        queue_name: str,
        event_name: str,
        instance_id: Callable[[Any], str | None],
        event_id: EventIdSource | None = None,
        connection: str | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]:
        """Turn each message of ``queue_name`` into ``raise_event(instance, event_name, data)``.

        The decorated function receives the message's JSON validated into its
        parameter's type and returns the event's data (``None``: ignore it).
        ``event_id`` defaults to the message id, so a redelivered message raises
        once. Messages that can never become an event go to ``<queue>-poison``
        with the reason.
        """
        _check_event_name(event_name)

        def register(fn: F) -> F:
            function_name = name or fn.__name__
            source = EventSource.of(
                function_name, fn, event_name=event_name, instance_id=instance_id, event_id=event_id
            )
            chosen = connection or self._settings.connection
            handler = QueueEventHandler(self._runtime, source, queue_name, chosen)
            self._add_queue(function_name, queue_name, chosen, handler)
            return fn

        return register

    # -- the durable client for user functions ---------------------------------------------

    def durable_client_input(
        self,
        client_name: str = "client",
        task_hub: str | None = None,
        connection_name: str | None = None,
    ) -> Callable[[F], F]:
        """Pass the app's durable client to the decorated function as ``client_name``.

        Put it directly above ``def`` (below ``@app.route``): an ``async def``
        receives an ``AsyncDurableClient``, a plain function a ``DurableClient``.
        ``task_hub`` and ``connection_name`` (Durable Functions' arguments) may
        only name the app's own hub and connection.
        """
        settings = self._settings
        if task_hub not in (None, settings.hub) or connection_name not in (
            None,
            settings.connection,
        ):
            raise ValueError(
                f"durable_client_input: this app's client uses hub {settings.hub!r} and "
                f"connection {settings.connection!r}; other hubs need another DurableApp"
            )

        def decorate(fn: F) -> F:
            wrapped: F = with_durable_client(fn, client_name, self._runtime)  # type: ignore[assignment]
            return wrapped

        return decorate

    def create_check_status_response(
        self, req: func.HttpRequest, instance_id: str
    ) -> func.HttpResponse:
        """202 with a Location header and Durable Functions' check-status body."""
        return self._management.check_status_response(req, instance_id)

    # -- registration ---------------------------------------------------------------------

    def _add_http(
        self,
        name: str,
        route: str,
        methods: list[str],
        auth_level: func.AuthLevel | str | None,
        handler: HttpHandler,
    ) -> None:
        # The worker binds by parameter name and annotation: `req: func.HttpRequest`, and
        # passes `context` (its annotation must be the class itself, so None is a default only).
        async def run(
            req: func.HttpRequest,
            context: func.Context = None,  # type: ignore[assignment]
        ) -> func.HttpResponse:
            with host_trace(context):
                return await handler(req)

        run.__name__ = run.__qualname__ = name
        trigger = self.route(route=route, methods=methods, auth_level=auth_level)
        self.function_name(name)(trigger(run))

    def _add_queue(self, name: str, queue: str, connection: str, handler: QueueHandler) -> None:
        # The worker binds by parameter name and annotation: `msg: func.QueueMessage`.
        async def run(
            msg: func.QueueMessage,
            context: func.Context = None,  # type: ignore[assignment]
        ) -> None:
            with host_trace(context):
                await handler(msg)

        run.__name__ = run.__qualname__ = name
        trigger = self.queue_trigger(arg_name="msg", queue_name=queue, connection=connection)
        self.function_name(name)(trigger(run))

    def _register_durable_triggers(self) -> None:
        runtime = self._runtime
        settings = self._settings

        def control(queue: str) -> QueueHandler:
            async def wake_up(msg: func.QueueMessage) -> None:
                await runtime.run_wake_up(delivered(msg, queue))

            return wake_up

        async def work_item(msg: func.QueueMessage) -> None:
            await runtime.run_work_item(delivered(msg, settings.work_queue))

        connection = settings.connection
        for index, queue in enumerate(settings.control_queues):
            self._add_queue(f"dfx_control_{index:02d}", queue, connection, control(queue))
        # Drains the single control queue of a hub made before partitions.
        legacy = settings.legacy_control_queue
        self._add_queue("dfx_control", legacy, connection, control(legacy))
        self._add_queue("dfx_work_items", settings.work_queue, connection, work_item)

    def _register_dashboard(self) -> None:
        """The web dashboard at its route, when ``DURABLE_FX_DASHBOARD_KEY`` is set."""
        key = os.environ.get("DURABLE_FX_DASHBOARD_KEY")
        if not key:
            return
        try:
            import durable_fx.dashboard  # noqa: F401  (its packages, checked at start)
        except ImportError as missing:
            log.error("no dashboard: pip install 'durable-fx[dashboard]' (%s)", missing)
            return
        read_only = _truthy(os.environ.get("DURABLE_FX_DASHBOARD_READ_ONLY"))
        handler = DashboardFunction(self._runtime, key, read_only)
        # ANONYMOUS to the host: the dashboard asks for its own key (see _dashboard_route).
        route = dashboard_route(self._settings.dashboard_route)
        self._add_http("dfx_dashboard", route, ["GET", "POST"], func.AuthLevel.ANONYMOUS, handler)

    def _register_management_api(self) -> None:
        api, schedules = self._management, self._schedules
        level = self._settings.management_auth_level
        if level == "ANONYMOUS":
            # Said here, not by serve, so the Functions host's log shows it too.
            log.warning(
                "the management API is ANONYMOUS (DURABLE_FX_MANAGEMENT_AUTH=ANONYMOUS or "
                "management_auth_level): anyone who can reach the app can start, read, "
                "terminate and purge instances without a key"
            )
        routes: list[tuple[str, str, str, HttpHandler]] = [
            ("dfx_start", "orchestrators/{name}/{instanceId?}", "POST", api.start),
            ("dfx_status", "instances/{instanceId}", "GET", api.status),
            ("dfx_list", "instances", "GET", api.list),
            ("dfx_raise_event", "instances/{instanceId}/raiseEvent/{eventName}", "POST",
             api.raise_event),
            ("dfx_terminate", "instances/{instanceId}/terminate", "POST", api.terminate),
            ("dfx_suspend", "instances/{instanceId}/suspend", "POST", api.suspend),
            ("dfx_resume", "instances/{instanceId}/resume", "POST", api.resume),
            ("dfx_rewind", "instances/{instanceId}/rewind", "POST", api.rewind),
            ("dfx_restart", "instances/{instanceId}/restart", "POST", api.restart),
            ("dfx_purge", "instances/{instanceId}", "DELETE", api.purge),
            ("dfx_signal_entity", "entities/{entityName}/{entityKey}", "POST",
             api.signal_entity),
            ("dfx_get_entity", "entities/{entityName}/{entityKey}", "GET", api.get_entity),
            ("dfx_list_entities", "entities/{entityName?}", "GET", api.list_entities),
            ("dfx_create_schedule", "schedules/{scheduleId}", "POST", schedules.create),
            ("dfx_get_schedule", "schedules/{scheduleId}", "GET", schedules.get),
            ("dfx_delete_schedule", "schedules/{scheduleId}", "DELETE", schedules.delete),
            ("dfx_list_schedules", "schedules", "GET", schedules.list),
            ("dfx_steer_schedule", "schedules/{scheduleId}/{action}", "POST", schedules.act),
        ]  # fmt: skip
        for name, route, method, handler in routes:
            self._add_http(name, route, [method], level, guarded(handler))


_DURABLE_TRIGGERS = ("dfx_control", "dfx_work_items")


def is_durable_trigger(function_name: str) -> bool:
    """Whether the function runs episodes or activities (which have spans of their own)."""
    return function_name.startswith(_DURABLE_TRIGGERS)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _configure_telemetry() -> None:
    """The one switch under the Functions host (``serve`` has thrown it before the import)."""
    try:
        configure_telemetry(service_name=os.environ.get("WEBSITE_SITE_NAME") or "durable-fx")
    except ImportError as missing:
        # Telemetry is not worth failing the app's indexing, which would stop every function.
        log.error("telemetry stays off: %s", missing)


def _anonymous(level: func.AuthLevel | str | None) -> bool:
    found = level.name if isinstance(level, func.AuthLevel) else str(level or "")
    return found.upper() == "ANONYMOUS"


def _check_event_name(name: str) -> None:
    try:
        validate_event_name(name)
    except ValueError as error:
        raise ValueError(f"invalid event_name {name!r}: {error}") from None


def _dead_letter_queue(function_name: str, chosen: str | None) -> str:
    """The queue whose ``-poison`` twin gets a batch's unusable items (a valid name)."""
    default = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]", "-", function_name.lower())).strip("-")
    queue = chosen or default
    try:
        validate_queue_name(queue)
    except ValueError as error:
        raise ValueError(f"webhook {function_name!r}: dead_letter_queue: {error}") from None
    if poison_queue_of(queue) is None:
        raise ValueError(
            f"webhook {function_name!r}: dead_letter_queue {queue!r} has no '-poison' twin "
            "(it is one already, or the name would pass 63 characters)"
        )
    return queue


def _hub_of(store: Store | str | None) -> str | None:
    """The task hub of an opened Azure store (its queues are the ones to bind to)."""
    hub = getattr(getattr(store, "settings", None), "hub", None)
    return hub if isinstance(hub, str) else None


def _partitions_of(store: Store | str | None) -> int | None:
    """The control partition count of an opened Azure store."""
    count = getattr(getattr(store, "settings", None), "partitions", None)
    return count if isinstance(count, int) else None


def delivered(msg: func.QueueMessage, queue: str = "") -> DeliveredMessage:
    """What the store needs of a queue trigger's message (``queue``: where it came from)."""
    return DeliveredMessage(
        id=msg.id or "",
        pop_receipt=msg.pop_receipt or "",
        text=(msg.get_body() or b"").decode("utf-8", "replace"),
        dequeue_count=msg.dequeue_count or 1,
        inserted_at=msg.insertion_time or datetime.now(UTC),
        queue=queue,
    )
