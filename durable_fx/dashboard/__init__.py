"""A web dashboard: find any instance, see its history as a timeline, act on it.

``create_dashboard(client, key=...)`` is an ASGI app (Starlette) to serve on
its own (``durable-fx dashboard``) or mount under another app. Needs the
``dashboard`` extra (starlette, jinja2).
"""

from __future__ import annotations

from ._app import KEY_COOKIE, KEY_HEADER, create_dashboard
from ._gantt import Bar, Gantt, gantt_of

__all__ = ["KEY_COOKIE", "KEY_HEADER", "Bar", "Gantt", "create_dashboard", "gantt_of"]
