"""Timer triggers under ``serve``: each one a durable schedule that calls its function.

A timer-triggered function ``tick`` becomes the schedule ``dfx-timer.tick``
(created, updated or resumed at every start, from the binding), of kind
``timer_trigger``: at each occurrence it calls the built-in activity
``durable_fx.timer_trigger``, which calls ``tick`` in this process with a
``func.TimerRequest``. The schedule lives in the store, so any number of
``serve`` processes sharing it run each occurrence once, without a lease; its
next occurrence is a durable timer, so nothing polls for it. A timer schedule
whose function is no longer in the app is paused (a later app that has it
again resumes it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import azure.functions as func
from azure.functions import meta
from azure.functions.timer import TimerRequestConverter

from .._clock import Clock, SystemClock
from .._entity import EntityMetadata
from .._registry import Registry
from .._schedules import TIMER_ACTIVITY, ScheduleState, TimerCall, schedule_entity
from ..client import AsyncDurableClient
from ._index import IndexedFunction
from ._invoke import Invoker
from ._logging import invocation
from ._timer_binding import TIMER_SCHEDULE_PREFIX, TimerBinding, read_timer_binding

__all__ = ["TimerTriggers", "timer_request"]

log = logging.getLogger("durable_fx.serve")
T = TypeVar("T")

_NEVER = "0001-01-01T00:00:00"
"""``Last`` before the first run: .NET's ``DateTime.MinValue``, as the host writes it."""


def timer_request(call: TimerCall) -> func.TimerRequest:
    """The ``func.TimerRequest`` the worker builds from the host's ``TimerInfo`` JSON."""
    binding = json.loads(call.binding or "{}")
    status = None
    if binding.get("use_monitor", True):
        status = {
            "Last": _NEVER if call.last is None else _iso(call.last),
            "Next": _iso(call.scheduled_at),
            "LastUpdated": _iso(call.last_updated),
        }
    info = {"IsPastDue": call.past_due, "ScheduleStatus": status, "Schedule": binding["schedule"]}
    request: func.TimerRequest = TimerRequestConverter.decode(
        meta.Datum(json.dumps(info), "json"), trigger_metadata=None
    )
    return request


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


class TimerTriggers:
    """An app's timer-triggered functions, run as durable schedules.

    ``TimerScheduleError`` (from the constructor) names a function whose
    schedule cannot be read, so ``serve`` refuses to start rather than fail
    later. ``late_after``: how late an occurrence may run before it counts
    as past due (missed through downtime rather than delivered late); keep
    it above the store's polling latency.
    """

    def __init__(
        self,
        functions: list[IndexedFunction],
        invoker: Invoker,
        *,
        late_after: timedelta = timedelta(minutes=1),
        clock: Clock | None = None,
        host_loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        timers = [f for f in functions if f.trigger_type == "timerTrigger"]
        self._functions = {f.name: f for f in timers}
        self._bindings = [read_timer_binding(f.name, f.trigger) for f in timers]
        self._invoker = invoker
        self._late_after = late_after
        self._clock = clock or SystemClock()
        self._host_loop = host_loop

    @property
    def bindings(self) -> list[TimerBinding]:
        """The timer triggers, in the app's order."""
        return list(self._bindings)

    def register(self, registry: Registry) -> None:
        """Register the activity that calls the functions (before a worker runs)."""

        # A function of its own: the registry marks what it registers (a method cannot be).
        async def timer_trigger(call: TimerCall) -> None:
            await self._run(call)

        registry.activity(name=TIMER_ACTIVITY)(timer_trigger)

    async def start(self, client: AsyncDurableClient) -> None:
        """Bring the store's timer schedules in line with the app; run the ``run_on_startup`` ones.

        Every ``serve`` does this at start; the schedule entity applies the
        same create twice as once, so replicas starting together agree.
        """
        names = {binding.function for binding in self._bindings}
        for binding in self._bindings:
            await self._sync(client, binding)
        for orphan in await client.list_schedules(id_prefix=TIMER_SCHEDULE_PREFIX):
            gone = orphan.kind == "timer_trigger" and orphan.orchestration not in names
            if gone and not orphan.paused:
                log.warning(
                    "pausing schedule %s: the app has no timer trigger %s any more",
                    orphan.schedule_id,
                    orphan.orchestration,
                )
                await client.get_schedule_handle(orphan.schedule_id).pause()

    async def _sync(self, client: AsyncDurableClient, binding: TimerBinding) -> None:
        definition = binding.definition(self._late_after)
        entity = schedule_entity(binding.schedule_id)
        handle = client.get_schedule_handle(binding.schedule_id)
        found: EntityMetadata[ScheduleState] | None
        found = await client.get_entity(entity, ScheduleState)
        current: ScheduleState | None = None if found is None else found.state
        if current is None:
            await client.signal_entity(entity, "create", definition)
        elif current.definition != definition:
            # A changed schedule starts from now without firing, as the host's monitor does.
            await client.signal_entity(entity, "update", definition)
        if current is not None and current.paused:
            await handle.resume()
        if binding.run_on_startup and not self._past_due(current, binding):
            await handle.trigger_now()

    def _past_due(self, current: ScheduleState | None, binding: TimerBinding) -> bool:
        """Whether a past-due run is coming, which the host runs instead of the startup one."""
        if current is None or current.next_at is None or not binding.use_monitor:
            return False
        return self._clock.now() - current.next_at > self._late_after

    async def _run(self, call: TimerCall) -> None:
        """The activity: call the timer function ``call.function`` in this process."""
        function = self._functions.get(call.function)
        if function is None:
            raise LookupError(
                f"this app has no timer-triggered function {call.function!r} "
                f"(its schedule {TIMER_SCHEDULE_PREFIX}{call.function} outlived it)"
            )
        invocation_id = str(uuid.uuid4())
        fields = {"scheduled_at": _iso(call.scheduled_at), "past_due": call.past_due}
        with invocation(function.name, "timer", invocation_id, **fields):
            request = timer_request(call)
            await self._on_host_loop(self._invoker.invoke(function, request, invocation_id))

    async def _on_host_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on serve's loop, whose queue clients its outputs use."""
        loop = self._host_loop
        if loop is None or loop is asyncio.get_running_loop():
            return await work
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, loop))
