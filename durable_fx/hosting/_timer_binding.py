"""A ``timerTrigger`` binding read as the Functions host reads it, as a durable schedule.

The host (``TimerSchedule.Create``) resolves ``%Setting%`` placeholders, tries
NCRONTAB first (6 fields with seconds, or the classic 5) and then a TimeSpan
(``"00:05:00"``, ``"1.00:00:00"``). ``useMonitor`` defaults to true, except for
schedules that fire more often than once a minute; ``runOnStartup`` to false.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .._schedule_spec import ScheduleSpec, parse_cron, parse_timespan
from .._schedules import ScheduleDefinition

__all__ = ["TIMER_SCHEDULE_PREFIX", "TimerBinding", "TimerScheduleError", "read_timer_binding"]

TIMER_SCHEDULE_PREFIX = "dfx-timer."
"""A timer trigger's schedule id is this and the function's name (one per hub)."""
_SETTING = re.compile(r"%([^%]+)%")
_FAST = timedelta(minutes=1)
"""Schedules faster than this have no schedule monitor unless asked (the host's rule)."""


class TimerScheduleError(ValueError):
    """A timer trigger whose schedule cannot be read; names the function and the schedule."""


@dataclass(frozen=True, slots=True)
class TimerBinding:
    """One timer-triggered function's schedule and options."""

    function: str
    expression: str
    """The schedule as written (placeholders resolved)."""
    spec: ScheduleSpec
    use_monitor: bool
    run_on_startup: bool

    @property
    def schedule_id(self) -> str:
        return TIMER_SCHEDULE_PREFIX + self.function

    def definition(self, late_after: timedelta) -> ScheduleDefinition:
        """The durable schedule that runs it; ``late_after``: when an occurrence is past due.

        Runs never overlap: one due while the previous runs waits for it
        (``buffer_one``), as the host holds one invocation at a time per timer.
        Without a monitor a late occurrence is dropped, with one it runs once.
        """
        binding = {
            "use_monitor": self.use_monitor,
            # The host's CronSchedule adjusts for DST; a TimeSpan is a constant interval.
            "schedule": {"AdjustForDST": self.spec.cron is not None},
        }
        return ScheduleDefinition(
            schedule_id=self.schedule_id,
            orchestration=self.function,
            input=json.dumps(binding, sort_keys=True),
            spec=self.spec,
            overlap="buffer_one",
            catch_up_window=late_after,
            catch_up="once" if self.use_monitor else "none",
            kind="timer_trigger",
        )


def read_timer_binding(function: str, trigger: dict[str, Any]) -> TimerBinding:
    """``function``'s timer binding; ``TimerScheduleError`` naming it and its schedule."""
    written = trigger.get("schedule")
    if not isinstance(written, str) or not written.strip():
        raise TimerScheduleError(f"timer trigger {function}: no schedule (got {written!r})")
    expression = _resolve(function, written)
    try:
        spec = _spec(expression)
    except ValueError as error:
        raise TimerScheduleError(
            f"timer trigger {function}: the schedule {expression!r} was not recognized as a "
            "valid cron expression (6 fields, seconds first: '0 */5 * * * *') or TimeSpan "
            f"('00:05:00'): {error}"
        ) from None
    use_monitor = trigger.get("useMonitor")
    return TimerBinding(
        function=function,
        expression=expression,
        spec=spec,
        use_monitor=not _fast(spec) if use_monitor is None else bool(use_monitor),
        run_on_startup=bool(trigger.get("runOnStartup") or False),
    )


def _resolve(function: str, written: str) -> str:
    """``%Name%`` replaced by the app setting ``Name``, as the host's name resolver does."""

    def setting(match: re.Match[str]) -> str:
        value = os.environ.get(match[1])
        if value is None:
            raise TimerScheduleError(
                f"timer trigger {function}: the schedule {written!r} names the app setting "
                f"{match[1]!r}, which is not set"
            )
        return value

    return _SETTING.sub(setting, written).strip()


def _spec(expression: str) -> ScheduleSpec:
    """NCRONTAB first, then TimeSpan, as ``TimerSchedule.Create`` tries them."""
    try:
        parse_cron(expression)
    except ValueError as cron_error:
        try:
            interval = parse_timespan(expression)
        except ValueError:
            raise cron_error from None
        return ScheduleSpec(every=interval)
    return ScheduleSpec(cron=expression)


def _fast(spec: ScheduleSpec) -> bool:
    """More than one occurrence a minute (``ShouldDisableScheduleMonitor``)."""
    if spec.every is not None:
        return spec.every < _FAST
    assert spec.cron is not None
    fields = spec.cron.split()
    if len(fields) != 6 or any(field != "*" for field in fields[1:]):
        return False
    start = datetime(2000, 1, 1, tzinfo=UTC)
    second = spec.next_after(spec.next_after(start, anchor=start) or start, anchor=start)
    return second is not None and second - start < _FAST
