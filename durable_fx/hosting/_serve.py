"""``serve``: run a Functions app's indexed functions outside Azure, like ``func start``.

1. ``local.settings.json``'s ``Values`` become environment variables (the
   real environment wins), then the app module is imported and indexed.
2. The store is ``--store``, else the app's settings, else the embedded SQLite
   file; its queues (``open_queues``) carry the queue triggers.
3. uvicorn serves the HTTP triggers (``FunctionsAsgi``); a ``Dispatcher``
   feeds the queue triggers with host.json's queue rules.
4. Durable work: on the Azure store the dispatcher feeds ``dfx_control`` and
   ``dfx_work_items`` exactly as the host would; on SQLite and memory stores,
   which have no such queues, an in-process ``Worker`` runs it instead.
   Timer triggers are durable schedules in the store (``TimerTriggers``); a
   plain ``func.FunctionApp`` that has them gets a store and a worker too.
5. SIGTERM or SIGINT stops it gracefully: no new requests or messages, work in
   flight finishes (up to the grace period), then everything closes. A second
   signal exits at once.

Keys never reach the logs: with no key configured, the key made up for the run
is printed once to the terminal (stderr, plain text, not a log record) in the
text format and not at all in the JSON format, whose lines go to collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import azure.functions as func
import uvicorn

from .._registry import Registry
from ..bindings import DurableApp, FunctionsSettings, HostConfig
from ..bindings._settings import SERVE_URL_SETTING
from ..client import AsyncDurableClient
from ..queues import QueueBackend, open_queues
from ..storage import Store, default_store_url, open_store
from ..storage._delivered import DeliveredWork
from ..telemetry import configure_telemetry
from ..worker._worker import Worker
from ._asgi import FunctionsAsgi
from ._dispatcher import Dispatcher
from ._index import IndexedFunction, index_app
from ._invoke import Invoker
from ._keys import FunctionKeys
from ._logging import LogFormat, configure_logging
from ._timer_binding import TimerScheduleError
from ._timers import TimerTriggers

__all__ = [
    "ServeError",
    "ServeOptions",
    "listen_url",
    "load_app",
    "load_local_settings",
    "serve",
]

log = logging.getLogger("durable_fx.serve")


class ServeError(Exception):
    """``serve`` cannot start: a bad target, settings or address. ``exit_code`` 2 is usage."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``durable-fx serve`` was asked to do."""

    target: str
    store: str | None = None
    host: str = "127.0.0.1"
    port: int = 7071
    log_format: LogFormat = "text"
    log_level: int = logging.INFO
    shutdown_grace: float = 10.0
    directory: Path | None = None
    """The app's root (host.json, local.settings.json); default: the current directory."""


def load_local_settings(directory: Path) -> list[str]:
    """Put ``local.settings.json``'s ``Values`` in the environment; returns the names set."""
    path = directory / "local.settings.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        return []
    except ValueError as error:
        raise ServeError(f"{path} is not valid JSON: {error}") from None
    values = document.get("Values") or {}
    loaded = []
    for name, value in values.items():
        if name not in os.environ and value is not None:
            os.environ[name] = str(value)
            loaded.append(name)
    return loaded


def listen_url(host: str, port: int) -> str:
    """``http://host:port`` for a listening address (a wildcard address as ``localhost``)."""
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def load_app(target: str, directory: Path) -> func.FunctionRegister:
    """Import ``module:attr`` (from ``directory``) and return the Functions app it names."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ServeError(f"{target!r} is not MODULE:ATTR, e.g. function_app:app", exit_code=2)
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    try:
        found: object = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except ModuleNotFoundError as error:
        raise ServeError(f"cannot import {module_name!r}: {error}", exit_code=2) from None
    except AttributeError:
        raise ServeError(f"module {module_name!r} has no attribute {attr!r}", exit_code=2) from None
    except (TypeError, ValueError) as error:
        # A malformed app setting (DurableApp reads them when the module builds it),
        # or a decorator refusing its arguments (an unsigned instance id, say).
        raise ServeError(f"cannot load {target}: {error}") from None
    if not isinstance(found, func.FunctionRegister):
        raise ServeError(
            f"{target} is a {type(found).__name__}, not a func.FunctionApp (or DurableApp)",
            exit_code=2,
        )
    return found


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling: ``serve`` stops it (and the rest) itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(options: ServeOptions) -> str | None:
    """Run until SIGTERM/SIGINT; returns the signal's name (``ServeError`` if it cannot start)."""
    directory = (options.directory or Path.cwd()).resolve()
    configure_logging(options.log_format, options.log_level)
    loaded = load_local_settings(directory)
    os.environ.setdefault("AzureWebJobsScriptRoot", str(directory))
    if options.store:
        # Before the app is imported: its queue triggers take their hub from the store URL.
        os.environ["DURABLE_FX_STORE"] = options.store
    # The origin of generated URLs when neither DURABLE_FX_PUBLIC_URL nor WEBSITE_HOSTNAME is set.
    os.environ[SERVE_URL_SETTING] = listen_url(options.host, options.port)
    if loaded:
        log.info("loaded %d settings from local.settings.json", len(loaded))
    try:
        config = HostConfig.load(directory)
    except ValueError as error:
        raise ServeError(str(error)) from None
    try:
        # Before the app is imported: a DurableApp then finds it configured.
        configure_telemetry(service_name=f"durable-fx serve {options.target}")
    except ImportError as error:
        raise ServeError(str(error)) from None
    app = load_app(options.target, directory)
    return asyncio.run(_Host(app, options, config).run())


class _Host:
    """One running ``serve``: store, queues, server, dispatcher and maybe a worker."""

    def __init__(self, app: func.FunctionRegister, options: ServeOptions, config: HostConfig):
        self._app = app
        self._options = options
        self._config = config
        self._durable = app if isinstance(app, DurableApp) else None
        # A plain FunctionApp's timer triggers still need a store and a worker: its own registry.
        self._registry = self._durable.registry if self._durable is not None else Registry()
        self._stop = asyncio.Event()
        self._signals: list[str] = []

    def _open(self, with_timers: bool) -> tuple[Store | None, QueueBackend]:
        durable = self._durable
        if durable is None:
            url = self._options.store or default_store_url()
            return (open_store(url) if with_timers else None), open_queues(url)
        url = self._options.store or durable.settings.resolved_store_url()
        store = open_store(url, hub=durable.settings.hub, partitions=durable.settings.partitions)
        queues = open_queues(store)
        durable.use_store(store)
        durable.runtime.use_queues(queues)
        durable.runtime.use_host_config(self._config)
        return store, queues

    def _runnable(self, functions: list[IndexedFunction], delivered: bool) -> list[IndexedFunction]:
        """The functions to serve: the durable queue ones only where the store has those queues."""
        if self._durable is None or delivered:
            return functions
        settings = self._durable.settings
        durable_queues = {
            *settings.control_queues,
            settings.legacy_control_queue,
            settings.work_queue,
        }
        return [f for f in functions if f.trigger.get("queueName") not in durable_queues]

    def _timers(self, functions: list[IndexedFunction], invoker: Invoker) -> TimerTriggers | None:
        """The timer triggers, their activity registered; ``ServeError`` for a bad schedule."""
        if not any(f.trigger_type == "timerTrigger" for f in functions):
            return None
        # Past due means later than a delivery can be: the queue listeners back off
        # up to maxPollingInterval on the Azure store (SQLite's worker polls every second).
        late_after = max(timedelta(minutes=1), 2 * self._config.queues.max_polling_interval)
        try:
            timers = TimerTriggers(
                functions, invoker, late_after=late_after, host_loop=asyncio.get_running_loop()
            )
        except TimerScheduleError as error:
            raise ServeError(str(error)) from None
        timers.register(self._registry)
        return timers

    def _settings(self) -> FunctionsSettings:
        """The app's settings (limits apply to every route, a plain FunctionApp's too)."""
        if self._durable is not None:
            return self._durable.settings
        try:
            return FunctionsSettings.from_environment()
        except ValueError as error:
            raise ServeError(str(error)) from None

    async def run(self) -> str | None:
        # Off the loop: opening a store waits for its file's lock, and outside a loop
        # the SQLite store opens at once, so a bad file fails here, at startup.
        # Indexed once: a plain FunctionApp refuses a second get_functions().
        functions, problems = index_app(self._app)
        with_timers = any(f.trigger_type == "timerTrigger" for f in functions)
        store, queues = await asyncio.to_thread(self._open, with_timers)
        delivered = isinstance(store, DeliveredWork)
        for problem in problems:
            log.warning("not served: %s", problem)
        functions = self._runnable(functions, delivered)
        threads = ThreadPoolExecutor(32, thread_name_prefix="durable-fx-function")
        invoker = Invoker(threads, queues, self._config.queues.message_encoding)
        timers = self._timers(functions, invoker)
        dispatcher = Dispatcher(functions, queues, self._config.queues, invoker)
        keys = FunctionKeys.from_environment()
        settings = self._settings()
        asgi = FunctionsAsgi(
            functions,
            route_prefix=self._config.route_prefix,
            keys=keys,
            invoker=invoker,
            after_invocation=dispatcher.kick,
            max_request_bytes=settings.max_request_bytes,
            body_timeout=settings.body_timeout_seconds,
        )
        worker = None
        # A plain app's worker runs only its timer schedules: it has no durable queue triggers.
        if store is not None and (not delivered or self._durable is None):
            worker = Worker(self._registry, store, shutdown_grace=self._options.shutdown_grace)
        server = _Server(
            uvicorn.Config(
                asgi,
                host=self._options.host,
                port=self._options.port,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=max(1, int(self._options.shutdown_grace)),
            )
        )
        self._install_signals()
        try:
            if worker is not None:
                await asyncio.to_thread(worker.start)
            dispatcher.start()
            if timers is not None and store is not None:
                await timers.start(AsyncDurableClient(store))
            await self._serve(server, functions, keys, store, worker is not None)
        finally:
            server.should_exit = True
            await dispatcher.stop(self._options.shutdown_grace)
            if worker is not None:
                await asyncio.to_thread(worker.stop)
            if self._durable is not None:
                await self._durable.runtime.aclose()
            await queues.close()
            if store is not None:
                await store.close()
            threads.shutdown(wait=False, cancel_futures=True)
            log.info("stopped (%s)", self._signals[0] if self._signals else "no signal")
        return self._signals[0] if self._signals else None

    async def _serve(
        self,
        server: _Server,
        functions: list[IndexedFunction],
        keys: FunctionKeys,
        store: Store | None,
        with_worker: bool,
    ) -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.01)
        if task.done():
            with contextlib.suppress(BaseException):
                task.result()
            raise ServeError(f"could not listen on {self._options.host}:{self._options.port}")
        self._announce(functions, keys, store, with_worker)
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        stopped.cancel()

    def _announce(
        self,
        functions: list[IndexedFunction],
        keys: FunctionKeys,
        store: Store | None,
        with_worker: bool,
    ) -> None:
        base = listen_url(self._options.host, self._options.port)
        prefix = f"/{self._config.route_prefix}" if self._config.route_prefix else ""
        for function in functions:
            trigger = function.trigger
            if function.trigger_type == "httpTrigger":
                methods = ",".join(trigger.get("methods") or ["ANY"])
                where = f"[{methods}] {base}{prefix}/{trigger.get('route') or function.name}"
            elif function.trigger_type == "timerTrigger":
                where = f"timer {trigger.get('schedule')}"
            else:
                where = f"queue {trigger.get('queueName')}"
            log.info("function %s: %s", function.name, where)
        if keys.generated:
            self._announce_generated_key(keys.function_keys[0])
        durable = "an in-process worker" if with_worker else "the queue triggers"
        where = repr(store) if store is not None else "no store"
        log.info("listening on %s; durable work by %s on %s", base, durable, where)

    def _announce_generated_key(self, key: str) -> None:
        """Show the run's key once on the terminal, never in a log record."""
        if self._options.log_format == "json":
            log.warning(
                "no DURABLE_FX_FUNCTION_KEYS or DURABLE_FX_MASTER_KEY set: FUNCTION-level routes "
                "take a key made up for this run, which JSON logs do not show; set "
                "DURABLE_FX_FUNCTION_KEYS (or run with --log-format text to see it)"
            )
            return
        # print, not logging: log handlers may ship records to collectors.
        print(
            "durable-fx serve: no DURABLE_FX_FUNCTION_KEYS set; FUNCTION-level routes take this "
            f"run's key {key} (x-functions-key header or ?code=)",
            file=sys.stderr,
            flush=True,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: signal.Signals) -> None:
            if self._signals:
                log.warning("%s again: quitting without waiting", signum.name)
                os._exit(128 + signum)
            self._signals.append(signum.name)
            log.info("%s: stopping after the work in flight (again to quit at once)", signum.name)
            self._stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows loops lack signal handlers
                loop.add_signal_handler(signum, on_signal, signum)
