"""Adopting what the Functions host poisoned: its ``<queue>-poison`` messages become poison rows.

Under the Functions host a control (any partition's, or the legacy queue's) or
work-item message whose invocations keep
failing (the worker crashed, the function timed out) is moved by the host,
not the store, to ``<queue>-poison`` after ``maxDequeueCount`` deliveries: the
original text, Base64, and no row in the hub table. Reading the poison list
adopts those messages first, so that they are listed, requeued and deleted
like the store's own (``_poison``). Each becomes a poison row holding what puts
it back (a work item's invocation; a wake-up's instance id), then its queue
message is deleted.

Crash safety: the row key derives from the queue message (its insertion time
and id), and the row is inserted, not upserted. An adoption cut short between
the row and the delete meets that row the next time (409) and only deletes
the message, so nothing is listed twice.

The store's own copies (``Queues.poison``) stay where they are. A peek first
tells whether there is anything else: a poison queue holding only copies costs
one request per listing, and its copies keep the pop receipts their rows
recorded (``_poison`` deletes a copy with it). Otherwise the queue is received
in batches, each message hidden briefly, until only copies are left; the rows
of the copies received get their new receipts, and a copy whose row is gone
(its delete failed on a stale receipt) is deleted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError

from .._base64 import decode_body
from ._activities import Activities
from ._codec import json_object, ts
from ._hub import Hub
from ._queues import Received, is_poison_copy
from ._transient import status_of

__all__ = ["WAKE_UP", "Adoption"]

log = logging.getLogger("durable_fx.storage.azure")

WAKE_UP = "wake-up"
"""``Kind`` of an adopted control-queue wake-up: requeueing it wakes its instance."""

_PAGE = 32
"""The most messages one peek or receive returns."""
_LOOK = timedelta(seconds=10)
"""How long a receive hides a poison message: enough to adopt it or pass it by, and
short enough that tools watching the queue soon see the store's copies again."""
_ORPHAN_AGE = timedelta(minutes=1)
"""``record_poison`` writes the copy before its row: a younger copy may still get one."""
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9-]")


@dataclass(frozen=True, slots=True)
class _Source:
    """A hub queue the host reads, and its poison twin."""

    queue: str
    logical: str
    """``orchestrations`` or ``activities``, as poison rows name their queue."""
    poison: str


@dataclass(slots=True)
class _Adopted:
    """What a poison row says about a host-poisoned message, besides where it came from."""

    instance_id: str | None
    body: str
    extra: dict[str, str]
    kind: str | None = None


class Adoption:
    """Turns host-poisoned messages of the hub's queues into poison rows."""

    def __init__(self, hub: Hub, activities: Activities) -> None:
        self._hub = hub
        self._activities = activities

    async def adopt(self) -> None:
        """Adopt every host-poisoned message the hub's poison queues hold now.

        That is every control partition's, the legacy control queue's and the
        work-item queue's.
        """
        names = self._hub.names
        sources = [
            *(_Source(q, "orchestrations", names.poison(q)) for q in names.control_queues),
            _Source(names.work_queue, "activities", names.poison(names.work_queue)),
        ]
        await asyncio.gather(*(self._adopt_from(source) for source in sources))

    async def _adopt_from(self, source: _Source) -> None:
        peeked = await self._hub.queues.peek(source.poison, limit=_PAGE)
        if len(peeked) < _PAGE and all(_is_copy(m) for m in peeked):
            return  # only the store's copies (or nothing): leave their receipts alone
        copies = await self._receive_all(source)
        await self._refresh_copies(copies)

    async def _receive_all(self, source: _Source) -> list[Received]:
        """Receive until only copies are left; adopt the rest; return the copies seen."""
        queues = self._hub.queues
        seen: set[str] = set()
        copies: list[Received] = []
        while True:
            batch = await queues.receive(source.poison, limit=_PAGE, lease=_LOOK)
            fresh = [m for m in batch if m.handle.id not in seen]
            seen.update(m.handle.id for m in batch)
            for message in fresh:
                if _is_copy(message):
                    copies.append(message)
                    continue
                try:
                    await self._adopt_one(source, message)
                except Exception:
                    # One message must not hide the others: it is visible again shortly.
                    log.exception("could not adopt %s of %s", message.handle.id, source.poison)
            # A short batch emptied the queue; one of only seen messages means the
            # first ones came back (a long pass): what is left was looked at.
            if len(batch) < _PAGE or not fresh:
                return copies

    async def _adopt_one(self, source: _Source, message: Received) -> None:
        """Write the message's poison row, then delete it from the poison queue."""
        hub = self._hub
        entity = await self._row(source, message)
        try:
            await hub.submit([("create", entity)], what="adopt a host-poisoned message")
        except TableTransactionError as error:
            if status_of(error) != 409:
                raise
            # Adopted before, and the delete below never happened (or our own
            # first try went in unseen): the row is there, only the message goes.
        await hub.queues.delete(message.handle)

    async def _row(self, source: _Source, message: Received) -> dict[str, Any]:
        hub = self._hub
        text = _text_of(message.text)
        if text is None:
            adopted = _Adopted(None, message.text, {})
            reason = f"the Functions host moved it to {source.poison}: its body is not Base64"
            deliveries = 0  # the host poisons such a body without invoking anything
        else:
            adopted = await self._describe(source, text)
            # The copy does not carry its count (it starts afresh); a DurableApp opens
            # its store with host.json's maxDequeueCount, so the store's is the host's.
            deliveries = hub.max_dequeue_count
            reason = f"the Functions host moved it to {source.poison} after {deliveries} deliveries"
        entity: dict[str, Any] = {
            "PartitionKey": "",
            "RowKey": adopted_key(message),
            "Queue": source.logical,
            "SourceQueue": source.queue,
            "Reason": reason,
            "PoisonedAt": ts(message.inserted_on),  # when the host moved it
            "DequeueCount": deliveries,
            "Extra": json.dumps({**adopted.extra, "message_id": message.handle.id}),
        }
        if adopted.instance_id is not None:
            entity["InstanceId"] = adopted.instance_id
        if adopted.kind is not None:
            entity["Kind"] = adopted.kind
        owner = adopted.instance_id or "_poison"
        await hub.codec.put_text(entity, "Body", adopted.body, owner)
        return entity

    async def _describe(self, source: _Source, text: str) -> _Adopted:
        """What puts a decoded message back: an invocation, an instance to wake, or its text."""
        body = json_object(text)
        if body is None:
            return _Adopted(None, text, {})
        if source.logical == "orchestrations":
            iid = body.get("h")
            if isinstance(iid, str) and iid:
                return _Adopted(iid, text, {"kind": WAKE_UP}, WAKE_UP)
            return _Adopted(None, text, {})
        try:
            invocation = await self._activities.invocation_of(body)
        except (KeyError, TypeError, ValueError, ResourceNotFoundError):
            return _Adopted(None, text, {})  # its input blob may be gone with its instance
        extra = {
            "execution_id": invocation.execution_id,
            "task_id": str(invocation.task_id),
            "name": invocation.name,
        }
        # The same body the store's own poisoning writes, so requeueing is the same too.
        as_json = invocation.to_json()
        return _Adopted(invocation.instance_id, as_json, extra)

    async def _refresh_copies(self, copies: list[Received]) -> None:
        """Give the rows of copies received here their new pop receipts.

        Receiving a copy replaced the receipt its row recorded, with which
        requeueing or deleting the row deletes the copy. A copy whose row is
        gone lost that delete to an earlier pass like this one: it goes now.
        """
        hub = self._hub
        now = datetime.now(UTC)  # queue times are the service's, not the store's clock
        for copy in copies:
            body = json_object(_text_of(copy.text) or "")
            poison_id = body.get("id") if body is not None else None
            if not isinstance(poison_id, str):
                continue  # written before copies named their rows
            receipt = {
                "PartitionKey": "",
                "RowKey": poison_id,
                "CopyReceipt": copy.handle.pop_receipt,
            }
            try:
                await hub.submit([("update", receipt, {"mode": "merge"})], what="refresh a copy")
            except TableTransactionError as error:
                if status_of(error) != 404:
                    raise
                # record_poison writes the copy before its row: a young copy may get one yet.
                if now - copy.inserted_on > _ORPHAN_AGE:
                    await hub.queues.delete(copy.handle)


def adopted_key(message: Received) -> str:
    """The poison id of a host-poisoned message: the same every time it is received.

    It orders with the store's own ids (``p`` and a time) by when the host moved it.
    """
    return f"p{ts(message.inserted_on)}-{_UNSAFE_KEY.sub('', message.handle.id)}"


def _text_of(raw: str) -> str | None:
    """A poison message's text, decoded from Base64 as the host wrote it (None if not)."""
    try:
        return decode_body(raw).decode("utf-8")
    except ValueError:  # not Base64, or not UTF-8 underneath
        return None


def _is_copy(message: Received) -> bool:
    text = _text_of(message.text)
    return text is not None and is_poison_copy(json_object(text))
