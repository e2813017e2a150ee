"""The standalone host: ``durable-fx serve`` runs a Functions app's indexed functions.

The same app that runs under Azure Functions (``func start`` or deployed) runs
here outside Azure: uvicorn serves its HTTP triggers (route templates, methods,
host.json's route prefix, function keys), a dispatcher feeds its queue
triggers with the host's queue semantics, its timer triggers run as durable
schedules in the store, and durable work runs through the app's queue
triggers (Azure store) or an in-process worker (SQLite, memory).
Needs the ``functions`` extra.
"""

from __future__ import annotations

from ._asgi import FunctionsAsgi
from ._dispatcher import Dispatcher
from ._index import IndexedFunction, index_app
from ._invoke import Invoker, http_request, queue_message
from ._keys import FunctionKeys
from ._routes import RouteTable, RouteTemplate
from ._serve import ServeError, ServeOptions, load_app, load_local_settings, serve
from ._timer_binding import TimerBinding, TimerScheduleError, read_timer_binding
from ._timers import TimerTriggers, timer_request

__all__ = [
    "Dispatcher",
    "FunctionKeys",
    "FunctionsAsgi",
    "IndexedFunction",
    "Invoker",
    "RouteTable",
    "RouteTemplate",
    "ServeError",
    "ServeOptions",
    "TimerBinding",
    "TimerScheduleError",
    "TimerTriggers",
    "http_request",
    "index_app",
    "load_app",
    "load_local_settings",
    "queue_message",
    "read_timer_binding",
    "serve",
    "timer_request",
]
