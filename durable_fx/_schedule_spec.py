"""When a schedule fires: a cron expression or a fixed interval, within a window.

Cron expressions are read as the Functions host reads a timer trigger's
NCRONTAB: six fields with seconds first (``0 */5 * * * *``: every five
minutes), or the classic five (``*/5 * * * *``). Times are UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from croniter import croniter
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["CatchUp", "Overlap", "ScheduleSpec", "parse_cron", "parse_timespan"]

Overlap = Literal["skip", "buffer_one", "allow_all"]
"""What an occurrence does while the previous run still runs: skip it, run it
once that one ends (at most one waits), or run it alongside."""

CatchUp = Literal["window", "once", "none"]
"""What an occurrence found more than ``catch_up_window`` late does: ``"window"``:
it is missed, and later ones still within the window run; ``"once"``: it runs,
marked past due, and the schedule goes on from now (the Functions host's
schedule monitor); ``"none"``: it is missed and the schedule goes on from now."""

_MIN_INTERVAL = timedelta(seconds=1)
# .NET TimeSpan.TryParse's invariant forms: "d", "hh:mm", "hh:mm:ss", "d.hh:mm:ss[.fffffff]".
_TIMESPAN = re.compile(
    r"(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{1,2})"
    r"(?::(?P<seconds>\d{1,2})(?:\.(?P<fraction>\d{1,7}))?)?"
)


def parse_cron(expression: str) -> croniter:
    """A cron iterator for ``expression`` (6 fields, seconds first, or 5); ``ValueError``."""
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ValueError(
            f"cron expression {expression!r} has {len(fields)} fields; expected 6 "
            "(second minute hour day month day-of-week, as the Functions host reads them) or 5"
        )
    with_seconds = len(fields) == 6
    if not croniter.is_valid(expression, second_at_beginning=with_seconds):
        raise ValueError(f"cron expression {expression!r} is not valid")
    return croniter(expression, datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=with_seconds)


def parse_timespan(text: str) -> timedelta:
    """A TimeSpan as the Functions host reads a timer schedule; ``ValueError``.

    ``"00:05:00"``, ``"1.00:00:00"`` (a day), ``"01:30"`` (hh:mm), or whole days ``"2"``.
    """
    stripped = text.strip()
    if stripped.isdigit():
        return timedelta(days=int(stripped))
    match = _TIMESPAN.fullmatch(stripped)
    if match is None:
        raise ValueError(f"{text!r} is not a TimeSpan ([d.]hh:mm[:ss[.fffffff]])")
    hours, minutes = int(match["hours"]), int(match["minutes"])
    seconds = int(match["seconds"] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(
            f"TimeSpan {text!r} is out of range (hours 0-23, minutes and seconds 0-59)"
        )
    fraction = (match["fraction"] or "").ljust(7, "0")
    return timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=int(fraction) // 10,
    )


class ScheduleSpec(BaseModel):
    """When occurrences fall: ``cron`` or ``every``, between ``start_at`` and ``end_at``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str | None = None
    every: timedelta | None = None
    start_at: datetime | None = None
    """No occurrence before this time; ``every`` counts from it (default: when created)."""
    end_at: datetime | None = None
    """No occurrence after this time."""
    jitter: timedelta = timedelta(0)
    """Each run starts up to this much later than its occurrence (spreads load)."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        if cron is not None:
            parse_cron(cron)
        return cron

    @field_validator("every")
    @classmethod
    def _valid_interval(cls, every: timedelta | None) -> timedelta | None:
        if every is not None and every < _MIN_INTERVAL:
            raise ValueError(f"every must be at least {_MIN_INTERVAL}, got {every}")
        return every

    @field_validator("jitter")
    @classmethod
    def _valid_jitter(cls, jitter: timedelta) -> timedelta:
        if jitter < timedelta(0):
            raise ValueError(f"jitter may not be negative, got {jitter}")
        return jitter

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, moment: datetime | None) -> datetime | None:
        if moment is not None and moment.tzinfo is None:
            raise ValueError("start_at and end_at must be timezone-aware (use UTC)")
        return moment

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleSpec:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of cron and every")
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        if self.cron is not None:
            # A schedule that cannot find its next time would stop without a word.
            iterator = parse_cron(self.cron)
            try:
                iterator.get_next(datetime)
            except ValueError:
                raise ValueError(f"cron expression {self.cron!r} never occurs") from None
        return self

    def next_after(self, moment: datetime, *, anchor: datetime) -> datetime | None:
        """The first occurrence strictly after ``moment``; ``None`` once past ``end_at``.

        ``anchor`` is where an ``every`` schedule counts from when it has no
        ``start_at`` (its creation): occurrences are ``anchor + k * every``.
        """
        start = self.start_at or anchor
        after = max(moment, start - timedelta(microseconds=1))
        if self.every is not None:
            steps = (after - start) // self.every + 1
            found = start + steps * self.every
        else:
            assert self.cron is not None
            iterator = parse_cron(self.cron)
            iterator.set_current(after.astimezone(UTC), force=True)
            found = iterator.get_next(datetime)
        if self.end_at is not None and found > self.end_at:
            return None
        return found
