"""Durable timers kept out of the triggered queues: an index by due time, one alarm per partition.

The Functions scale controller sizes an app by each trigger queue's
ApproximateMessagesCount, which counts hidden messages too. A wake-up hidden
until its timer is due would make every parked orchestration (an email waiting
24 hours for its receipt) count as work the moment anything else arrives. So a
timer further away than ``NEAR`` is a row of the hub's timers table instead:

- partition key: the instance's control partition (``"00"`` ... ``"15"``);
- row key: the due time, then the instance id, so a partition's earliest
  timers are its first rows.

Each control partition has at most one delayed message for them, its *alarm*
(``{"p": <partition>}``), hidden until the earliest timer falls due (or for
the queue's longest delay, after which it is armed again). The ``~alarm`` row
of the partition says when the alarm rings and names its message, so that a
sooner timer can replace it and delete the one it replaces. When the alarm
rings, the due rows become visible wake-ups (``{"h": <instance id>, "d": 1}``)
and are deleted, and the alarm is armed for the next row. A queue thus holds at
most one hidden message per partition for timers, however many are pending;
timers due within ``NEAR`` stay ordinary delayed wake-ups (few: they are due).

Adders and ringing alarms race safely because the table is linearizable: an
adder writes its row before it reads the alarm, and whoever re-arms looks at
the earliest row again after writing the alarm, so one of the two always sees
the other's write. An alarm whose message never rang (``LOST_AFTER`` past its
time) is armed again by the next add or ring of its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from ._codec import odata, parse_ts, ts
from ._hub import Hub
from ._ops import Op, key_of_row
from ._queues import Handle
from ._transient import retrying

__all__ = ["LOST_AFTER", "NEAR", "UNDECODABLE_ALARM", "Timers", "alarm_partition"]

log = logging.getLogger("durable_fx.storage.azure")

NEAR = timedelta(seconds=10)
"""Timers due sooner than this are delayed wake-ups; later ones go to the index."""
LOST_AFTER = timedelta(minutes=1)
"""An alarm this far past its time never rang (its message is gone): arm it again."""

UNDECODABLE_ALARM = 'undecodable timer alarm: expected {"p": <partition number>}'

_ALARM = "~alarm"
"""The alarm row's key: after every timer row (they start with a digit)."""
_AFTER_TIMERS = "}"
"""Sorts after ``|`` (the separator in timer keys) and before ``~``."""
_SWEEP_PAGE = 500
_SENDS_AT_ONCE = 32
_SETTLE_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class _Alarm:
    """The ``~alarm`` row of a partition: when its message rings, and which message it is."""

    rings_at: datetime
    message: Handle
    etag: str


class Timers:
    """The timer index and the alarms of every control partition of one hub."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.dues: list[datetime] = []
        """Due times of indexed timers seen since a worker last asked (for ``next_due``)."""

    def is_far(self, due: datetime | None) -> bool:
        """Whether a wake-up for ``due`` belongs in the index rather than in the queue."""
        return due is not None and due - self._hub.now() > NEAR

    async def add_if_far(self, instance_id: str, due: datetime | None) -> bool:
        """Index the timer if it is far (``add``); whether it was (else it needs a message)."""
        if due is None or not self.is_far(due):
            return False
        await self.add(instance_id, due)
        return True

    async def add(self, instance_id: str, due: datetime) -> None:
        """Index a timer of ``instance_id`` and make sure its partition's alarm rings by ``due``.

        Idempotent: the same instance and time make the same row.
        """
        hub = self._hub
        index = hub.names.partition_index(instance_id)
        row = {"PartitionKey": _partition_key(index), "RowKey": f"{ts(due)}|{instance_id}"}
        table = hub.resources.timers
        await retrying(lambda: table.upsert_entity(row), what=f"index a timer of {instance_id}")
        self.dues.append(due)
        alarm = await self._read_alarm(index)
        if self._rings_by(alarm, due, ringing=None):
            return
        await self._settle(index, ringing=None)

    async def remove(self, instance_id: str, due: datetime) -> None:
        """Drop the index row of ``instance_id``'s timer at ``due`` (gone already: fine).

        For a timer its instance cancelled: the alarm, if it rings for it, finds
        nothing and re-arms for the next row.
        """
        index = self._hub.names.partition_index(instance_id)
        table = self._hub.resources.timers

        async def delete() -> None:
            with contextlib.suppress(ResourceNotFoundError):
                await table.delete_entity(_partition_key(index), f"{ts(due)}|{instance_id}")

        await retrying(delete, what=f"remove a timer of {instance_id}")

    async def ring(self, index: int, message_id: str) -> int:
        """The alarm of partition ``index`` rang: wake every due timer, arm the next; how many woke.

        ``message_id`` is the message that rang (maybe superseded: then it
        only sweeps). Safe to repeat: a second ring finds the rows gone.
        """
        woken = 0
        while True:
            rows = await self._due_rows(index)
            await self._wake(rows)
            woken += len(rows)
            if len(rows) < _SWEEP_PAGE:
                break
        await self._settle(index, ringing=message_id)
        return woken

    # -- sweeping ---------------------------------------------------------------------

    async def _due_rows(self, index: int) -> list[dict[str, Any]]:
        """Up to a page of the partition's timers that are due now."""
        hub = self._hub
        now = ts(hub.now())
        query = (
            f"PartitionKey eq {odata(_partition_key(index))} "
            f"and RowKey lt {odata(now + _AFTER_TIMERS)}"
        )
        table = hub.resources.timers

        async def run() -> list[dict[str, Any]]:
            pager = table.query_entities(
                query, select=["PartitionKey", "RowKey"], results_per_page=_SWEEP_PAGE
            )
            rows: list[dict[str, Any]] = []
            async for entity in pager:
                rows.append(dict(entity))
                if len(rows) >= _SWEEP_PAGE:
                    break
            return rows

        return await retrying(run, what="list the due timers")

    async def _wake(self, rows: list[dict[str, Any]]) -> None:
        """A visible wake-up per instance with a due timer, then the rows go.

        Sent first: a crash between the two wakes an instance twice, never
        forgets one (a wake-up that finds nothing due costs one read).
        """
        hub = self._hub
        gate = asyncio.Semaphore(_SENDS_AT_ONCE)

        async def send(iid: str) -> None:
            async with gate:
                body = {"h": iid, "d": 1}
                await hub.queues.put(hub.control_queue_of(iid), body, delay=timedelta(0))
                hub.expect_control(iid, timedelta(0))

        instances = {_instance_of(r) for r in rows}
        await asyncio.gather(*(send(iid) for iid in instances))
        deletes: list[Op] = [("delete", key_of_row(r)) for r in rows]
        await hub.submit_batches(deletes, what="delete fired timers", table=hub.resources.timers)

    # -- the alarm --------------------------------------------------------------------

    async def _settle(self, index: int, *, ringing: str | None) -> None:
        """Make the alarm match the earliest timer of the partition (none: no alarm).

        Looks again after every write of the alarm row, so a timer added
        meanwhile is never left behind (see the module docstring).
        """
        for _ in range(_SETTLE_ATTEMPTS):
            earliest = await self._earliest(index)
            alarm = await self._read_alarm(index)
            if earliest is not None:
                self.dues.append(earliest)
            if earliest is None:
                if alarm is None or not self._spent(alarm, ringing):
                    return
                await self._remove_alarm(index, alarm)
            elif self._rings_by(alarm, earliest, ringing=ringing):
                return
            else:
                await self._arm(index, earliest, alarm, ringing=ringing)
        log.warning("the timer alarm of partition %02d kept changing; the next add or ring sets it",
                    index)  # fmt: skip

    def _rings_by(self, alarm: _Alarm | None, due: datetime, *, ringing: str | None) -> bool:
        """Whether ``alarm`` is live and rings no later than ``due``."""
        return alarm is not None and not self._spent(alarm, ringing) and alarm.rings_at <= due

    def _spent(self, alarm: _Alarm, ringing: str | None) -> bool:
        """Whether the alarm's message has rung (or been lost): it wakes nothing more.

        While an alarm rings, one whose time has come counts as rung even if
        it is not the message ringing: that may be a copy (a host invocation
        hands a message on while storage fails) or a stale alarm, and the
        row's own message may be gone with the original.
        """
        now = self._hub.now()
        if ringing is not None and (alarm.message.id == ringing or alarm.rings_at <= now):
            return True
        return alarm.rings_at < now - LOST_AFTER

    async def _arm(
        self, index: int, due: datetime, alarm: _Alarm | None, *, ringing: str | None
    ) -> None:
        """Send a new alarm message for ``due`` and point the alarm row at it (If-Match)."""
        hub = self._hub
        queue = hub.names.control_partition(index)
        now = hub.now()
        delay = max(due - now, timedelta(0))
        message = await hub.queues.put(queue, {"p": index}, delay=delay)
        rings_at = min(due, now + hub.queues.max_delay)  # longer waits ring early and re-arm
        entity = {
            "PartitionKey": _partition_key(index),
            "RowKey": _ALARM,
            "RingsAt": ts(rings_at),
            "MessageId": message.id,
            "PopReceipt": message.pop_receipt,
        }
        table = hub.resources.timers
        try:
            if alarm is None:
                await retrying(lambda: table.create_entity(entity), what="arm a timer alarm")
            else:
                await retrying(
                    lambda: table.update_entity(
                        entity, etag=alarm.etag, match_condition=MatchConditions.IfNotModified
                    ),
                    what="re-arm a timer alarm",
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            # Someone else armed it meanwhile; ours is not needed (``_settle`` looks again).
            await hub.queues.discard(message)
            return
        hub.expect_queue(queue, delay)
        if alarm is not None and alarm.message.id != ringing:
            await hub.queues.discard(alarm.message)  # superseded: it would ring for nothing

    async def _remove_alarm(self, index: int, alarm: _Alarm) -> None:
        """No timers left: drop the alarm row (if nobody re-armed it meanwhile)."""
        table = self._hub.resources.timers
        with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
            await retrying(
                lambda: table.delete_entity(
                    _partition_key(index),
                    _ALARM,
                    etag=alarm.etag,
                    match_condition=MatchConditions.IfNotModified,
                ),
                what="remove a timer alarm",
            )

    async def _earliest(self, index: int) -> datetime | None:
        """When the partition's first timer is due, if it has any."""
        query = f"PartitionKey eq {odata(_partition_key(index))} and RowKey lt {odata(_ALARM)}"
        table = self._hub.resources.timers

        async def run() -> str | None:
            pager = table.query_entities(query, select=["RowKey"], results_per_page=1)
            async for entity in pager:
                return str(entity["RowKey"])
            return None

        key = await retrying(run, what="find the earliest timer")
        return None if key is None else parse_ts(key.partition("|")[0])

    async def _read_alarm(self, index: int) -> _Alarm | None:
        hub = self._hub
        table = hub.resources.timers
        try:
            entity = await retrying(
                lambda: table.get_entity(_partition_key(index), _ALARM), what="read a timer alarm"
            )
        except ResourceNotFoundError:
            return None
        queue = hub.names.control_partition(index)
        message = Handle(queue, str(entity["MessageId"]), str(entity["PopReceipt"]))
        return _Alarm(parse_ts(str(entity["RingsAt"])), message, str(entity.metadata["etag"]))


def alarm_partition(body: dict[str, Any] | None, partitions: int) -> int | None:
    """The partition an alarm message names, or ``None`` if ``body`` is not a valid alarm."""
    if body is None:
        return None
    index = body.get("p")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < partitions:
        return None
    return index


def _partition_key(index: int) -> str:
    return f"{index:02d}"


def _instance_of(row: dict[str, Any]) -> str:
    """The instance a timer row wakes (its key is ``<due>|<instance id>``)."""
    return str(row["RowKey"]).partition("|")[2]
