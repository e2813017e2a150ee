"""The dashboard as one of the app's HTTP functions (``dashboard/{*path}`` by default).

Registered only when ``DURABLE_FX_DASHBOARD_KEY`` is set: the dashboard asks
for that key itself (a browser cannot send a function key with every link
and form), so the function is ANONYMOUS to the host and never open without
it. The same function serves under the Functions host and ``durable-fx
serve``: azure-functions' ``AsgiMiddleware`` hands the request to the
dashboard's ASGI app, mounted where the route says.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import azure.functions as func

from ._runtime import AppRuntime

__all__ = ["DashboardFunction", "dashboard_route"]


def dashboard_route(base: str) -> str:
    """The function's route for a dashboard at ``base`` (it and every page under it)."""
    return f"{base}/{{*path}}"


class DashboardFunction:
    """Serves the dashboard for the app's store; the ASGI app is made on first use."""

    def __init__(self, runtime: AppRuntime, key: str, read_only: bool) -> None:
        self._runtime = runtime
        self._key = key
        self._read_only = read_only
        self._app: Any = None

    async def __call__(self, req: func.HttpRequest) -> func.HttpResponse:
        path = unquote(urlparse(req.url).path)
        rest = req.route_params.get("path") or ""
        mount = path[: len(path) - len(rest)].rstrip("/") if rest else path.rstrip("/")
        if not rest:  # the dashboard's own root: its home page redirects to the list
            path = mount + "/"

        async def mounted(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await self._dashboard()({**scope, "path": path, "root_path": mount}, receive, send)

        answer: func.HttpResponse = await func.AsgiMiddleware(mounted).handle_async(req)
        return answer

    def _dashboard(self) -> Any:
        if self._app is None:
            from ..dashboard import create_dashboard

            self._app = create_dashboard(
                self._runtime.client, key=self._key, read_only=self._read_only
            )
        return self._app
