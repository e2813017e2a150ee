"""Poisoned messages on Azure: listing them, putting them back, deleting them.

``Hub.record_poison`` keeps each poisoned message as a row of the hub table's
empty partition (``PartitionKey ''``, ``RowKey`` = its poison id), with a
copy in ``<queue>-poison`` for tools that watch poison queues. The row holds
everything needed to put the message back:

* an instance's inbox message: its event, dedupe key and execution; it goes
  back through ``Orchestrations.route``, like any message from another
  process (a wake-up first, then the inbox row and a touch of the instance
  row), so an owner anywhere notices it;
* an activity work item: its invocation; its work row is written again (with
  a touch of the instance row: it fails, and nothing is written, if the
  instance is gone), then a work-item message that is checked against that
  row before it runs;
* a queue message that never decoded (no instance): its text, sent again as
  it was to the queue it came from;
* a wake-up the Functions host poisoned (``Kind`` ``wake-up``, see
  ``_adoption``): its instance id; the instance's inbox rows get their
  delivery counts reset (the host's failed deliveries counted against them)
  and a wake-up goes to the instance's control partition.

Listing adopts the host's poisoned messages first (``_adoption``).

The message goes back first and the poison row is deleted after: a crash in
between leaves the row, and requeueing it again writes the same inbox row
(its key refuses a second copy) or the same work row (whose first result
deletes it, so a second message finds none and does not run), or wakes the
instance once more (a wake-up that finds nothing to do is dropped).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError
from pydantic import ValidationError

from ..._history import HISTORY_EVENT
from .._records import ActivityInvocation, OrchestrationMessage, PoisonedMessage
from ._activities import Activities
from ._adoption import WAKE_UP, Adoption
from ._codec import odata, parse_ts
from ._hub import Hub
from ._ops import Op, bump, gone_ok, key_of_row
from ._queues import Handle
from ._sessions import Sessions
from ._starts import Starts
from ._transient import retrying, status_of

__all__ = ["Poison"]

log = logging.getLogger("durable_fx.storage.azure")

_PARTITION = ""


class Poison:
    """The poison list of one hub: listing, requeueing and deleting its messages."""

    def __init__(
        self, hub: Hub, sessions: Sessions, activities: Activities, starts: Starts
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities
        self._starts = starts
        self._adoption = Adoption(hub, activities)

    async def list(self, instance_id: str | None) -> list[PoisonedMessage]:
        """Messages taken out of circulation, oldest first (only ``instance_id``'s if given).

        The host's poisoned messages are adopted first, so they are listed too.
        """
        await self._adoption.adopt()
        query = f"PartitionKey eq {odata(_PARTITION)}"
        if instance_id is not None:
            query += f" and InstanceId eq {odata(instance_id)}"
        rows = await self._hub.query(query, what="read poisoned messages")
        rows.sort(key=lambda r: str(r["RowKey"]))
        return [await self._listed(row) for row in rows]

    async def _listed(self, row: dict[str, Any]) -> PoisonedMessage:
        extra: dict[str, Any] = json.loads(str(row.get("Extra") or "{}"))
        return PoisonedMessage(
            poison_id=str(row["RowKey"]),
            queue=str(row["Queue"]),
            instance_id=row.get("InstanceId"),
            body=await self._hub.codec.get_text(row, "Body") or "",
            reason=str(row["Reason"]),
            poisoned_at=parse_ts(str(row["PoisonedAt"])),
            dequeue_count=int(row.get("DequeueCount", 0)),
            extra={str(k): str(v) for k, v in extra.items()},
        )

    async def requeue(self, poison_ids: Sequence[str]) -> int:
        """Put each poisoned message back, then drop its row; returns how many went back."""
        requeued = 0
        for poison_id in dict.fromkeys(poison_ids):
            row = await self._read(poison_id)
            if row is None or not await self._put_back(row):
                continue
            if await self._drop(row):
                requeued += 1
        return requeued

    async def delete(self, poison_ids: Sequence[str]) -> int:
        """Drop poisoned messages (rows and queue copies); returns how many there were."""
        deleted = 0
        for poison_id in dict.fromkeys(poison_ids):
            row = await self._read(poison_id)
            if row is not None and await self._drop(row):
                deleted += 1
        return deleted

    # -- rows ---------------------------------------------------------------------

    async def _read(self, poison_id: str) -> dict[str, Any] | None:
        if not poison_id.startswith("p") or len(poison_id) > 200:
            return None  # not a key this store made (ids of another store, typos)
        table = self._hub.resources.table
        try:
            entity = await retrying(
                lambda: table.get_entity(_PARTITION, poison_id), what="read a poisoned message"
            )
        except ResourceNotFoundError:
            return None
        return dict(entity)

    async def _drop(self, row: dict[str, Any]) -> bool:
        """Delete a poison row and its queue copy; False if someone else deleted it first."""
        hub = self._hub
        key = {"PartitionKey": _PARTITION, "RowKey": row["RowKey"]}
        try:
            await hub.submit([("delete", key)], what="delete a poisoned message")
        except TableTransactionError as error:
            if status_of(error) != 404:
                raise
            return False
        copy = row.get("CopyId")
        if copy:
            handle = Handle(str(row["CopyQueue"]), str(copy), str(row.get("CopyReceipt", "")))
            # Best effort: a copy someone received since has a new receipt and stays.
            if not await hub.queues.delete(handle):
                log.info("the copy of poisoned message %s in %s stays", row["RowKey"], copy)
        return True

    # -- putting back ---------------------------------------------------------------

    async def _put_back(self, row: dict[str, Any]) -> bool:
        """Return one poisoned message to circulation; False if it cannot go back."""
        body = await self._hub.codec.get_text(row, "Body") or ""
        extra: dict[str, Any] = json.loads(str(row.get("Extra") or "{}"))
        instance_id = row.get("InstanceId")
        if instance_id is None:
            return await self._resend(row, body)
        if row.get("Kind") == WAKE_UP:
            return await self._wake(str(instance_id))
        if row["Queue"] == "activities":
            return await self._reschedule(str(instance_id), body)
        try:
            event = HISTORY_EVENT.validate_json(body)
        except ValidationError:
            return False  # never decoded: an inbox row of it could only be poisoned again
        message = OrchestrationMessage(
            instance_id=str(instance_id),
            event=event,
            execution_id=extra.get("execution_id"),
            key=str(extra.get("key") or ""),
        )
        return await self._starts.route(message, create=False)

    async def _resend(self, row: dict[str, Any], text: str) -> bool:
        """A queue message that named no instance goes back to its queue as it was."""
        hub = self._hub
        names = hub.names
        queue = row.get("SourceQueue")
        if queue not in hub.resources.queues:
            # Rows from before SourceQueue, or of a partition this count no longer has.
            logical = row["Queue"]
            queue = names.work_queue if logical == "activities" else names.legacy_control_queue
        await hub.queues.put_text(str(queue), text, delay=timedelta(0))
        return True

    async def _reschedule(self, instance_id: str, body: str) -> bool:
        """Write a poisoned work item's row again, then send it to the work queue."""
        hub = self._hub
        try:
            invocation = ActivityInvocation.from_json(body)
        except (ValueError, TypeError):
            return False
        activities = self._activities
        row = await activities.work_row(invocation, local=False)
        try:
            # The touch fails (404) if the instance is gone: then nothing is written.
            await hub.submit([("upsert", row), bump(instance_id)], what="requeue a work item")
        except TableTransactionError as error:
            if status_of(error) == 404:
                return False
            raise
        # As a redelivery: whoever receives it checks the row first, so a second
        # copy (a requeue repeated after a crash) does not run once the first has.
        await activities.send([invocation], redelivery=True, delay=timedelta(0))
        return True

    async def _wake(self, instance_id: str) -> bool:
        """Wake an instance whose wake-up the host poisoned; False if it is gone.

        Each failed delivery may have counted against its inbox messages (a
        takeover counts one before the episode runs): they start again from
        zero, as a requeued message does, or the next takeover would poison
        them for what the host already gave up on. The touch of the instance
        row makes an owner elsewhere re-read them.
        """
        hub = self._hub
        partition = await hub.read_partition(instance_id)
        counted = [r for r in partition.inbox if int(r.get("DequeueCount", 0)) > 0]
        resets: list[Op] = [
            ("update", {**key_of_row(r), "DequeueCount": 0}, {"mode": "merge"}) for r in counted
        ]
        for start in range(0, max(len(resets), 1), _RESETS_PER_BATCH):
            chunk = [*resets[start : start + _RESETS_PER_BATCH], bump(instance_id)]
            try:
                # A row consumed meanwhile needs no reset (gone_ok); a gone instance fails.
                await hub.submit_tolerant(chunk, tolerate=gone_ok, what="requeue a wake-up")
            except TableTransactionError as error:
                if status_of(error) == 404:
                    return False
                raise
        session = self._sessions.get(instance_id)
        if session is not None:
            session.stale = True  # owned here: re-read the counts before the next episode
        await self._sessions.wake_now(instance_id)
        return True


_RESETS_PER_BATCH = 99
"""Inbox rows reset per transaction, with the touch of the instance row."""
