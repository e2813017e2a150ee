"""The management API's schedules: create, read, list and steer durable schedules.

``POST schedules/{scheduleId}`` creates one from a JSON body (``orchestration``,
``input``, ``cron`` or ``every_seconds``, and the optional rest);
``GET schedules[/{scheduleId}]`` reads them; ``POST
schedules/{scheduleId}/{action}`` pauses, resumes or triggers one and
``DELETE schedules/{scheduleId}`` removes it. Changes are applied by a worker,
in the order sent, so they answer 202. Bad input is 400 naming the field.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import azure.functions as func
from pydantic import BaseModel, ConfigDict, ValidationError

from .._errors import UnknownNameError
from .._schedule_spec import Overlap
from ..client._schedules import AsyncScheduleHandle, ScheduleDescription, description_json
from ._http import FieldProblem, HttpProblem, json_response, parse_json_body
from ._runtime import AppRuntime

__all__ = ["ScheduleApi"]

_ACTIONS = {"pause": "pause", "resume": "resume", "trigger": "trigger_now"}


class ScheduleRequest(BaseModel):
    """The body that creates a schedule."""

    model_config = ConfigDict(extra="forbid")

    orchestration: str
    input: Any = None
    cron: str | None = None
    every_seconds: float | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None
    jitter_seconds: float = 0.0
    overlap: Overlap = "skip"
    catch_up_window_seconds: float = 60.0


class ScheduleApi:
    """The schedule handlers, bound to one app's runtime."""

    def __init__(self, runtime: AppRuntime) -> None:
        self._runtime = runtime

    async def create(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST schedules/{scheduleId}: 202 sent; 409 if it exists; 404 unknown orchestration."""
        runtime = self._runtime
        schedule_id = req.route_params.get("scheduleId", "")
        body = parse_json_body(req, runtime.settings.max_request_bytes)
        try:
            request = ScheduleRequest.model_validate(body if body is not None else {})
        except ValidationError as error:
            raise _problem(error) from None
        if runtime.registry.find_orchestrator(request.orchestration) is None:
            names = runtime.registry.orchestrator_names
            raise UnknownNameError("orchestrator", request.orchestration, names)
        every = None if request.every_seconds is None else timedelta(seconds=request.every_seconds)
        try:
            await runtime.client.create_schedule(
                schedule_id,
                request.orchestration,
                request.input,
                cron=request.cron,
                every=every,
                start_at=request.start_at,
                end_at=request.end_at,
                jitter=timedelta(seconds=request.jitter_seconds),
                overlap=request.overlap,
                catch_up_window=timedelta(seconds=request.catch_up_window_seconds),
            )
        except ValidationError as error:
            raise _problem(error) from None
        except ValueError as error:
            status = 409 if "already exists" in str(error) else 400
            raise HttpProblem(
                status, str(error), [FieldProblem("scheduleId", str(error))]
            ) from None
        return json_response({"id": schedule_id}, 202)

    async def get(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET schedules/{scheduleId}: the schedule, its next and recent runs; 404 if none."""
        return json_response(description_json(await self._existing(req)), 200)

    async def list(self, req: func.HttpRequest) -> func.HttpResponse:
        """GET schedules[?prefix=&orchestration=&paused=true|false]: the schedules, by id."""
        paused_text = req.params.get("paused")
        if paused_text not in (None, "true", "false"):
            problem = f"paused is true or false, not {paused_text[:20]!r}"
            raise HttpProblem(400, problem, [FieldProblem("paused", problem)])
        found = await self._runtime.client.list_schedules(
            id_prefix=req.params.get("prefix", ""),
            orchestration=req.params.get("orchestration") or None,
            paused=None if paused_text is None else paused_text == "true",
        )
        return json_response([description_json(d) for d in found], 200)

    async def act(self, req: func.HttpRequest) -> func.HttpResponse:
        """POST schedules/{scheduleId}/{action}: pause, resume or trigger; 202 sent."""
        action = req.route_params.get("action", "")
        method = _ACTIONS.get(action)
        if method is None:
            problem = f"no schedule action {action[:40]!r}; one of {', '.join(_ACTIONS)}"
            raise HttpProblem(400, problem, [FieldProblem("action", problem)])
        await self._existing(req)
        await getattr(self._handle(req), method)()
        return func.HttpResponse(status_code=202)

    async def delete(self, req: func.HttpRequest) -> func.HttpResponse:
        """DELETE schedules/{scheduleId}: 202 sent; 404 if there is none."""
        await self._existing(req)
        await self._handle(req).delete()
        return func.HttpResponse(status_code=202)

    def _handle(self, req: func.HttpRequest) -> AsyncScheduleHandle:
        schedule_id = req.route_params.get("scheduleId", "")
        try:
            return self._runtime.client.get_schedule_handle(schedule_id)
        except ValueError as error:
            raise HttpProblem(400, str(error), [FieldProblem("scheduleId", str(error))]) from None

    async def _existing(self, req: func.HttpRequest) -> ScheduleDescription:
        handle = self._handle(req)
        description = await handle.describe()
        if description is None:
            raise HttpProblem(404, f"schedule {handle.schedule_id!r} does not exist")
        return description


def _problem(error: ValidationError) -> HttpProblem:
    """400 naming each field pydantic found wrong (``body`` for a rule across fields)."""
    fields = [
        FieldProblem(".".join(str(part) for part in e["loc"]) or "body", e["msg"])
        for e in error.errors()
    ]
    message = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return HttpProblem(400, f"invalid schedule: {message}", fields)
