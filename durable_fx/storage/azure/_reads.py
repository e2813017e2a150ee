"""Reading and housekeeping: instance rows, histories, queries, purges."""

from __future__ import annotations

from typing import Any

from azure.data.tables import TableTransactionError
from pydantic import TypeAdapter

from ..._history import HistoryEvent
from .._records import InstanceQuery, InstanceRecord, Page
from ..memory import _decode_continuation, _encode_continuation, _matches, _newest_first
from ._activities import Activities
from ._codec import INSTANCE_ROW, history_key, odata
from ._hub import Hub
from ._ops import Op, if_match, key_of_row
from ._sessions import Sessions
from ._transient import status_of

__all__ = ["Reads"]

_HISTORY = TypeAdapter(list[HistoryEvent])


class Reads:
    """Queries and housekeeping on one hub's table and blobs."""

    def __init__(self, hub: Hub, sessions: Sessions, activities: Activities) -> None:
        self._hub = hub
        self._sessions = sessions
        self._activities = activities

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""
        row = await self._hub.read_instance(instance_id)
        return await self._hub.codec.instance_record(row) if row else None

    async def load_history(self, instance_id: str) -> list[HistoryEvent]:
        """The current generation's history: its first ``Count`` rows, oldest first."""
        hub = self._hub
        session = self._sessions.get(instance_id)
        if session is not None:
            generation, count = session.generation, session.count
        else:
            row = await hub.read_instance(instance_id)
            if row is None:
                return []
            generation, count = int(row.get("Gen", 0)), int(row.get("Count", 0))
        if count <= 0:
            return []
        query = (
            f"PartitionKey eq {odata(instance_id)}"
            f" and RowKey ge '{history_key(generation, 0)}'"
            f" and RowKey lt '{history_key(generation, count)}'"
        )
        rows = await hub.query(query, what=f"read the history of {instance_id}")
        rows.sort(key=lambda r: str(r["RowKey"]))
        texts = [await hub.codec.get_text(r, "Event") or "{}" for r in rows]
        return _HISTORY.validate_json(f"[{','.join(texts)}]")

    async def query_instances(self, query: InstanceQuery) -> Page[InstanceRecord]:
        """Matching instances, newest first, ``query.page_size`` at a time.

        The table is ordered by instance id, not by creation time, so each page
        reads every matching instance row (the filter runs on the server).
        """
        if query.page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {query.page_size}")
        after = _decode_continuation(query.continuation)
        rows = await self._hub.query(_filter(query), what="query instances")
        records = [await self._hub.codec.instance_record(r) for r in rows]
        records = [r for r in records if _matches(r, query)]
        records.sort(key=_newest_first)
        if after is not None:
            records = [r for r in records if _newest_first(r) > after]
        page = records[: query.page_size]
        more = len(records) > query.page_size
        return Page(page, _encode_continuation(_newest_first(page[-1])) if more else None)

    async def purge_instance(self, instance_id: str) -> bool:
        """Delete an instance's rows (the instance row first) and its payload blobs."""
        rows = await self._partition(instance_id)
        keys = [str(r["RowKey"]) for r in rows]
        found = INSTANCE_ROW in keys
        # The instance row goes first: from then on readers see no instance at all.
        ordered = sorted(keys, key=lambda k: k != INSTANCE_ROW)
        deletes: list[Op] = [
            ("delete", {"PartitionKey": instance_id, "RowKey": k}) for k in ordered
        ]
        await self._forget_session(instance_id)
        if found:
            await self._hub.submit_batches(deletes[:1], what=f"purge {instance_id}")
        await self._delete_rest(instance_id, ordered[1:] if found else ordered)
        return found

    async def purge_idle_instance(self, instance_id: str, version: str) -> bool:
        """``purge_instance``, only while the row is at ``version`` and nothing is pending.

        Every delivery to an instance touches its row (``bump``), so deleting
        the row If-Match the ETag read with the partition fails if a message
        (an inbox row) or a commit came meanwhile.
        """
        rows = await self._partition(instance_id)
        instance = next((r for r in rows if r["RowKey"] == INSTANCE_ROW), None)
        if instance is None or str(instance.get("Version", 1)) != version:
            return False
        keys = [str(r["RowKey"]) for r in rows if r["RowKey"] != INSTANCE_ROW]
        if any(k[:1] in _PENDING_ROWS for k in keys):
            return False
        delete = ("delete", key_of_row(instance), if_match(str(instance["etag"])))
        try:
            await self._hub.submit([delete], what=f"purge idle {instance_id}")
        except TableTransactionError as error:
            if status_of(error) in (404, 412):
                return False  # changed or gone meanwhile: not ours to remove
            raise
        await self._forget_session(instance_id)
        await self._delete_rest(instance_id, keys)
        return True

    async def _partition(self, instance_id: str) -> list[dict[str, Any]]:
        return await self._hub.query(
            f"PartitionKey eq {odata(instance_id)}",
            what=f"list the rows of {instance_id}",
            select=["PartitionKey", "RowKey", "Version"],
        )

    async def _forget_session(self, instance_id: str) -> None:
        session = self._sessions.get(instance_id)
        self._sessions.drop(instance_id)
        if session is not None and session.guard is not None:
            await self._hub.queues.delete(session.guard)

    async def _delete_rest(self, instance_id: str, keys: list[str]) -> None:
        """Delete the rows left once the instance row is gone, and the payload blobs."""
        deletes: list[Op] = [("delete", {"PartitionKey": instance_id, "RowKey": k}) for k in keys]
        if deletes:
            await self._hub.submit_batches(deletes, what=f"purge {instance_id}")
        self._activities.forget_work(instance_id, [k for k in keys if k.startswith("w")])
        await self._hub.resources.delete_payloads(instance_id)


_PENDING_ROWS = ("m", "w", "x")
"""Row key prefixes of what keeps an instance busy: inbox messages, work items, outbox."""


def _filter(query: InstanceQuery) -> str:
    """The server-side part of an instance query (the rest is checked after reading)."""
    from ._codec import ts

    clauses = ["RowKey eq 'i'", "PartitionKey ne ''"]
    if query.statuses:
        either = " or ".join(f"Status eq {odata(s.value)}" for s in sorted(query.statuses))
        clauses.append(f"({either})")
    if query.name is not None:
        clauses.append(f"Name eq {odata(query.name)}")
    if query.created_from is not None:
        clauses.append(f"CreatedAt ge {odata(ts(query.created_from))}")
    if query.created_to is not None:
        clauses.append(f"CreatedAt le {odata(ts(query.created_to))}")
    # Entity ids are exactly those from '@' up to (not including) 'A'.
    if query.entities:
        clauses.append("PartitionKey ge '@' and PartitionKey lt 'A'")
    else:
        clauses.append("(PartitionKey lt '@' or PartitionKey ge 'A')")
    prefix = query.instance_id_prefix
    if prefix:
        clauses.append(f"PartitionKey ge {odata(prefix)}")
        upper = _prefix_upper_bound(prefix)
        if upper is not None:
            clauses.append(f"PartitionKey lt {odata(upper)}")
    return " and ".join(clauses)


def _prefix_upper_bound(prefix: str) -> str | None:
    """A string above every id starting with ``prefix`` (``None``: no such bound is needed).

    The bound only narrows the server's scan (``_matches`` checks the prefix
    exactly), so it may be loose. The table compares UTF-16 code units, where
    characters past U+FFFF (surrogate pairs) sort below U+E000..U+FFFF, so the
    last character is raised only below the surrogates (U+D7FF); otherwise it
    is dropped and the one before it is raised instead.
    """
    while prefix and ord(prefix[-1]) >= 0xD7FF:
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
