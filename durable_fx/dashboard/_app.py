"""The dashboard's ASGI application: pages for instances and poisoned messages.

Server-rendered (Jinja2 templates) with htmx for the parts that refresh, both
shipped in the package: nothing is fetched from elsewhere at run time. Every
page needs the dashboard key (a header, or the cookie the login form sets);
every action goes through the durable client and writes an audit line.
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._history import ExecutionStarted, HistoryEvent, SubOrchestrationInstanceCreated
from .._state import OrchestrationState, OrchestrationStatus
from ..client._async import AsyncDurableClient
from ..client._schedules import description_json
from ..client._status_json import CONTINUATION_HEADER, entity_json, status_json
from ._gantt import gantt_of

__all__ = ["KEY_COOKIE", "KEY_HEADER", "create_dashboard"]

log = logging.getLogger("durable_fx.dashboard")
audit = logging.getLogger("durable_fx.dashboard.audit")

KEY_HEADER = "x-dashboard-key"
KEY_COOKIE = "dfx_dashboard_key"
PAGE_SIZE = 50
SEARCH_PAGE = 200
SEARCH_LIMIT = 5000
"""A custom status search reads at most this many instances before it offers "More…"."""
MAX_FORM_BYTES = 1024 * 1024
"""An event's data and every other form: larger is refused (413) before it is read whole."""
BARS_PER_PAGE = 500
"""A 5,000-event history is paged, so the timeline stays quick to draw."""
_STATIC = Path(__file__).parent / "static"
_ACTIONS = ("terminate", "suspend", "resume", "restart", "purge", "raise-event")


def create_dashboard(
    client: AsyncDurableClient,
    *,
    key: str | None,
    read_only: bool = False,
    anonymous: bool = False,
) -> Starlette:
    """The dashboard for ``client``'s store, as an ASGI app (mount it anywhere).

    ``key`` is required unless ``anonymous`` is said explicitly. ``read_only``
    hides and refuses every action.
    """
    if not key and not anonymous:
        raise ValueError("the dashboard needs a key (or anonymous=True, for a trusted network)")
    pages = _Pages(client, read_only)
    routes = [
        Route("/", pages.home),
        Route("/login", pages.login, methods=["GET", "POST"]),
        Route("/instances", pages.instances),
        Route("/counts", pages.counts),
        Route("/instances/{instance_id}", pages.instance),
        Route("/instances/{instance_id}/events", pages.events),
        Route("/instances/{instance_id}/{action}", pages.act, methods=["POST"]),
        Route("/entities", pages.entities),
        Route("/schedules", pages.schedules),
        Route("/poison", pages.poison),
        Route("/poison/{action}", pages.act_on_poison, methods=["POST"]),
        Mount("/static", StaticFiles(directory=_STATIC), name="static"),
    ]
    middleware = [Middleware(_KeyCheck, key=key)] if key else []
    return Starlette(routes=routes, middleware=middleware)


class _KeyCheck(BaseHTTPMiddleware):
    """The key in a header or the login cookie; pages send a browser to the login form."""

    def __init__(self, app: Any, key: str) -> None:
        super().__init__(app)
        self._key = key.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        path = request.url.path.removeprefix(_root(request))
        if path == "/login" or path.startswith("/static/"):
            return await call_next(request)
        given = request.headers.get(KEY_HEADER) or request.cookies.get(KEY_COOKIE) or ""
        if hmac.compare_digest(given.encode(), self._key):
            return await call_next(request)
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"{_root(request)}/login", 303)
        return JSONResponse({"error": "the dashboard key is required"}, 401)


class _Pages:
    def __init__(self, client: AsyncDurableClient, read_only: bool) -> None:
        self._client = client
        self._read_only = read_only
        self._templates = Environment(
            loader=PackageLoader("durable_fx.dashboard", "templates"),
            autoescape=select_autoescape(["html"]),
        )
        self._templates.filters["pretty"] = _pretty

    def _render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        template = self._templates.get_template(name)
        root = _root(request)
        html = template.render(root=root, read_only=self._read_only, **values)
        return HTMLResponse(html, status_code=status)

    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{_root(request)}/instances", 303)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._render(request, "login.html")
        form = await _form(request)
        if form is None:
            return _too_large()
        root = _root(request)
        answer = RedirectResponse(f"{root}/instances", 303)
        answer.set_cookie(
            KEY_COOKIE,
            form.get("key", ""),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=root or "/",
        )
        return answer

    async def instances(self, request: Request) -> Response:
        query = request.query_params
        try:
            filters = _filters(query)
        except ValueError as error:
            return JSONResponse({"error": str(error), "field": error.args[-1]}, 400)
        text = query.get("custom_status", "").strip().lower()
        items, continuation = await self._list(filters, text)
        if _wants_json(request):  # the management API's list, with its paging header
            headers = {CONTINUATION_HEADER: continuation} if continuation else {}
            return JSONResponse([status_json(i, show_input=False) for i in items], 200, headers)
        next_query = {k: v for k, v in query.items() if k != "continuation"}
        more = (
            "?" + urlencode({**next_query, "continuation": continuation}) if continuation else None
        )
        if request.headers.get("hx-request") == "true":
            return self._render(request, "_instance_rows.html", instances=items, more=more)
        return self._render(
            request,
            "instances.html",
            instances=items,
            query=dict(query),
            statuses=[s.name for s in OrchestrationStatus],
            more=more,
            counts=await self._counts(),
        )

    async def _list(
        self, filters: dict[str, Any], text: str
    ) -> tuple[list[OrchestrationState], str | None]:
        """A page of the list and where the next begins.

        No store indexes custom status, so with ``text`` the pages are read on
        until a page's worth match or ``SEARCH_LIMIT`` instances were read; the
        continuation then resumes the search where it stopped.
        """
        if not text:
            page = await self._client.query(**filters, page_size=PAGE_SIZE)
            return page.items, page.continuation
        found: list[OrchestrationState] = []
        read = 0
        while True:
            page = await self._client.query(**filters, page_size=SEARCH_PAGE)
            read += len(page.items)
            found += [i for i in page.items if text in _pretty(i.custom_status).lower()]
            if len(found) >= PAGE_SIZE or page.continuation is None or read >= SEARCH_LIMIT:
                return found, page.continuation
            filters = {**filters, "continuation": page.continuation}

    async def counts(self, request: Request) -> Response:
        return self._render(request, "_counts.html", counts=await self._counts())

    async def _counts(self) -> dict[str, int] | None:
        """Instances per status name, in the statuses' order (``None``: the store cannot)."""
        counts = await self._client.count_by_status()
        if counts is None:
            return None
        return {s.name: counts[s] for s in OrchestrationStatus if s in counts}

    async def instance(self, request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        state = await self._client.get(instance_id, history=True)
        if state is None:
            if _wants_json(request):
                return JSONResponse({"error": f"no instance {instance_id!r}"}, 404)
            return self._render(request, "missing.html", 404, instance_id=instance_id)
        if _wants_json(request):  # what the management API answers with showHistory=true
            return JSONResponse(status_json(state, show_history=True))
        gantt = gantt_of(state.history or [])
        now = datetime.now(UTC)
        every = gantt.bars if gantt else []
        pages = max(1, -(-len(every) // BARS_PER_PAGE))
        try:
            page = min(max(int(request.query_params.get("page", "1")), 1), pages)
        except ValueError:
            return JSONResponse({"error": "page is not a number", "field": "page"}, 400)
        shown = every[(page - 1) * BARS_PER_PAGE : page * BARS_PER_PAGE]
        bars = [(bar, *gantt.position(bar, now)) for bar in shown] if gantt else []
        return self._render(
            request,
            "instance.html",
            state=state,
            gantt=gantt,
            bars=bars,
            now=now,
            page=page,
            pages=pages,
            total_bars=len(every),
            parent=_parent_of(state.history or []),
            children=_children_of(state.history or []),
        )

    async def events(self, request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        state = await self._client.get(instance_id, history=True)
        if state is None:
            return JSONResponse({"error": f"no instance {instance_id!r}"}, 404)
        return JSONResponse([e.model_dump(mode="json") for e in state.history or []])

    async def entities(self, request: Request) -> Response:
        """Entities with state, newest first, by name and key prefix (one page at a time)."""
        query = request.query_params
        name = query.get("name", "").strip() or None
        key_prefix = query.get("key_prefix", "").strip()
        try:
            page = await self._client.query_entities(
                name=name,
                key_prefix=key_prefix,
                page_size=PAGE_SIZE,
                continuation=query.get("continuation") or None,
            )
        except ValueError as error:
            field = "key_prefix" if "key_prefix" in str(error) else "continuation"
            return JSONResponse({"error": str(error), "field": field}, 400)
        if _wants_json(request):  # the management API's entity list
            headers = {CONTINUATION_HEADER: page.continuation} if page.continuation else {}
            return JSONResponse([entity_json(m) for m in page.items], 200, headers)
        kept = {k: v for k, v in query.items() if k != "continuation"}
        more = (
            "?" + urlencode({**kept, "continuation": page.continuation})
            if page.continuation
            else None
        )
        return self._render(
            request, "entities.html", entities=page.items, query=dict(query), more=more
        )

    async def schedules(self, request: Request) -> Response:
        """Every schedule: its rule, next runs, and recent runs linked to their instances."""
        found = await self._client.list_schedules()
        if _wants_json(request):  # the management API's schedule list
            return JSONResponse([description_json(d) for d in found])
        return self._render(request, "schedules.html", schedules=found)

    async def poison(self, request: Request) -> Response:
        messages = await self._client.poisoned()
        return self._render(request, "poison.html", messages=messages)

    async def act_on_poison(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("requeue", "delete"):
            return JSONResponse({"error": f"no action {action!r}", "field": "action"}, 404)
        if self._read_only:
            return JSONResponse({"error": "the dashboard is read-only"}, 403)
        form = await _form(request)
        if form is None:
            return _too_large()
        poison_id = form.get("id", "").strip()
        if not poison_id:
            return self._render(request, "_outcome.html", 400, ok=False, message="no id given")
        if action == "requeue":
            done = await self._client.requeue_poisoned([poison_id])
        else:
            done = await self._client.delete_poisoned([poison_id])
        if not done:
            message = f"no poisoned message {poison_id!r}"
            return self._render(request, "_outcome.html", 404, ok=False, message=message)
        who = request.client.host if request.client else "?"
        audit.info("%s poisoned %s by %s (%s)", action, poison_id, who, _now())
        return self._render(request, "_outcome.html", ok=True, message=f"{action}d {poison_id}")

    async def act(self, request: Request) -> Response:
        instance_id = request.path_params["instance_id"]
        action = request.path_params["action"]
        if action not in _ACTIONS:
            return JSONResponse({"error": f"no action {action!r}", "field": "action"}, 404)
        if self._read_only:
            return JSONResponse({"error": "the dashboard is read-only"}, 403)
        form = await _form(request)
        if form is None:
            return _too_large()
        try:
            outcome = await self._carry_out(instance_id, action, form)
        except ValueError as error:
            return self._render(request, "_outcome.html", 400, ok=False, message=str(error))
        except LookupError as error:
            return self._render(request, "_outcome.html", 404, ok=False, message=str(error))
        who = request.client.host if request.client else "?"
        audit.info("%s %s on %s by %s (%s)", action, instance_id, who, outcome, _now())
        return self._render(request, "_outcome.html", ok=True, message=outcome)

    async def _carry_out(self, instance_id: str, action: str, form: dict[str, str]) -> str:
        client = self._client
        if await client.get(instance_id) is None:
            raise LookupError(f"no instance {instance_id!r}")
        reason = form.get("reason") or None
        if action == "terminate":
            await client.terminate(instance_id, reason)
            return "terminated"
        if action == "suspend":
            await client.suspend(instance_id, reason)
            return "suspended"
        if action == "resume":
            await client.resume(instance_id, reason)
            return "resumed"
        if action == "restart":
            return f"restarted as {await client.restart(instance_id)}"
        if action == "purge":
            await client.purge(instance_id)
            return "purged"
        name = form.get("name", "").strip()
        if not name:
            raise ValueError("name the event to raise")
        try:
            data = json.loads(form.get("data") or "null")
        except json.JSONDecodeError as error:
            raise ValueError(f"the event's data is not JSON: {error}") from None
        await client.raise_event(instance_id, name, data)
        return f"raised {name}"


def _root(request: Request) -> str:
    """Where the dashboard is mounted ("" when it is served on its own)."""
    return str(request.scope.get("root_path", ""))


async def _form(request: Request) -> dict[str, str] | None:
    """The URL-encoded form, or ``None`` when it is over ``MAX_FORM_BYTES``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    return dict(parse_qsl(body.decode(errors="replace")))


def _too_large() -> Response:
    limit = f"{MAX_FORM_BYTES // 1024} KiB"
    return JSONResponse({"error": f"the form is over {limit}", "field": "body"}, 413)


def _parent_of(history: list[HistoryEvent]) -> str | None:
    """The instance that started this one as a sub-orchestration, if any."""
    started = next((e for e in history if isinstance(e, ExecutionStarted)), None)
    return started.parent.instance_id if started and started.parent else None


def _children_of(history: list[HistoryEvent]) -> list[tuple[str, str]]:
    """The sub-orchestrations this instance started: (instance id, name), oldest first."""
    return [
        (e.instance_id, e.name) for e in history if isinstance(e, SubOrchestrationInstanceCreated)
    ]


def _filters(query: Any) -> dict[str, Any]:
    """The client.query arguments a list request asks for (ValueError naming a bad field)."""
    found: dict[str, Any] = {}
    status = query.get("status")
    if status:
        try:
            found["status"] = OrchestrationStatus[status.upper()]
        except KeyError:
            raise ValueError(f"no status {status!r}", "status") from None
    if query.get("name"):
        found["name"] = query["name"]
    if query.get("prefix"):
        found["instance_id_prefix"] = query["prefix"]
    for field, argument in (("from", "created_from"), ("to", "created_to")):
        if query.get(field):
            try:
                moment = datetime.fromisoformat(query[field])
            except ValueError:
                raise ValueError(f"{field} is not an ISO date or time", field) from None
            found[argument] = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if query.get("continuation"):
        found["continuation"] = query["continuation"]
    return found


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _wants_json(request: Request) -> bool:
    """A script's request (``Accept: application/json``), not a browser's or htmx's."""
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept
