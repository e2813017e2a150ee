"""The session data model: what a store object keeps of an instance it owns.

A *session* is an instance this store object owns: the instance row names it
(``Owner``, ``OwnedUntil``) and a hidden control message (the *guard*) will
wake another worker if this process dies. While it owns an instance the store
keeps the row, its ETag and the pending inbox messages in memory, so episodes
and activity results need no reads and no queue round trips; everything is
still written to the table before it counts. ``_sessions`` keeps the sessions
and runs their lifecycle; this module only holds their data, and that of the
activity work items this process holds (``HeldWork``, used by ``_activities``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..._history import HistoryEvent
from .._records import ActivityInvocation, InboxMessage, InstanceRecord
from ._codec import json_list
from ._ops import Op
from ._queues import Handle

__all__ = [
    "GUARD_SLACK",
    "MAX_MESSAGES_PER_EPISODE",
    "HeldWork",
    "Lease",
    "Partition",
    "Pending",
    "Session",
    "consumed_rows",
    "live",
]

MAX_MESSAGES_PER_EPISODE = 90
"""Inbox messages handed out per episode: their deletions always fit its final transaction."""
GUARD_SLACK = timedelta(seconds=2)
"""A host invocation's guard comes this long after its lease: a dead owner's has run out."""


@dataclass(slots=True)
class Lease:
    """A lock this store object handed out: whose, and until when (by the store's clock)."""

    token: str
    owner: str
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return self.expires_at <= now


@dataclass(slots=True)
class Pending:
    """An inbox row of an owned instance."""

    row_key: str
    event: HistoryEvent
    event_json: str
    execution_id: str | None
    key: str
    visible_at: datetime
    arrival: str
    dequeue_count: int = 0
    stored: bool = True
    """Whether it has an inbox row; an activity result held in memory has none yet."""
    work_row: str | None = None
    """The work row a result held in memory replaces: consuming it deletes that row."""

    def order(self) -> tuple[datetime, str, str]:
        return (self.visible_at, self.arrival, self.row_key)

    def message(self) -> InboxMessage:
        return InboxMessage(self.row_key, self.event, self.execution_id, self.dequeue_count)


@dataclass(slots=True)
class Session:
    """An instance this store object owns, as last written."""

    record: InstanceRecord
    etag: str
    version: int
    generation: int
    count: int
    owned_until: datetime
    aborted: list[str] = field(default_factory=list)
    pending: dict[str, Pending] = field(default_factory=dict)
    outstanding: dict[str, ActivityInvocation] = field(default_factory=dict)
    lock: Lease | None = None
    guard: Handle | None = None
    stale: bool = False
    """Other processes may have added messages: re-read the inbox before the next lock."""
    hosted: bool = False
    """Taken for one host invocation: no guard, the host's message is the only wake-up."""
    ending: bool = False
    """Being given up (``Sessions.end`` awaits storage): no longer to be locked."""

    @property
    def instance_id(self) -> str:
        return self.record.instance_id

    def visible(self, now: datetime) -> list[Pending]:
        return sorted((p for p in self.pending.values() if p.visible_at <= now), key=Pending.order)

    def has_backlog(self, now: datetime) -> bool:
        """A full episode's worth of visible messages or more is still to be handed out.

        Such a session (a hot entity) defers re-reading its partition after a
        wake-up until it is down to its last batch: the messages it knows of
        arrived before the ones it does not, and reading thousands of rows
        before every batch would make a backlog cost its square.
        """
        visible = sum(1 for p in self.pending.values() if p.visible_at <= now)
        return visible >= MAX_MESSAGES_PER_EPISODE

    def next_due(self, now: datetime) -> datetime | None:
        return min(
            (p.visible_at for p in self.pending.values() if p.visible_at > now), default=None
        )

    def lockable(self, now: datetime) -> bool:
        return not self.ending and (self.lock is None or self.lock.expired(now))


@dataclass(slots=True)
class Partition:
    """The non-history rows of one instance partition, as read."""

    instance: dict[str, Any] | None
    inbox: list[dict[str, Any]]
    work: list[dict[str, Any]]
    outbox: list[dict[str, Any]]

    def hidden_tags(self) -> set[str]:
        """Tags of rows not (or never to be) committed: the staging and aborted ones."""
        if self.instance is None:
            return set()
        tags = set(json_list(self.instance.get("Aborted")))
        staging = self.instance.get("Staging")
        if staging:
            tags.add(str(staging))
        return tags


def consumed_rows(instance_id: str, pending: Pending) -> list[Op]:
    """The deletions that consume a pending message: its inbox row, the work row it ends."""
    rows = [pending.row_key] if pending.stored else []
    if pending.work_row is not None:
        rows.append(pending.work_row)
    return [("delete", {"PartitionKey": instance_id, "RowKey": row}) for row in rows]


def live(row: dict[str, Any], hidden: set[str]) -> bool:
    """Whether a row is committed (not staged by an unfinished or aborted episode)."""
    tag = row.get("Tag")
    return not tag or tag not in hidden


@dataclass(slots=True)
class HeldWork:
    """A work-item message this process received and has not finished with."""

    handle: Handle | None
    """Its queue message; ``None`` for an item held here only (its work row is the copy)."""
    invocation: ActivityInvocation
    row_key: str
    text: str
    dequeue_count: int
    lease: Lease | None = None
    visible_at: datetime | None = None
    since: float = field(default_factory=time.monotonic)
    """When the queue last hid it for us (monotonic seconds)."""
    local_id: str = ""
    guard: Handle | None = None
    """Under the host: the delayed wake-up that has the item sent again if the run dies."""

    @property
    def key(self) -> str:
        return self.handle.id if self.handle is not None else self.local_id

    def age(self) -> timedelta:
        return timedelta(seconds=time.monotonic() - self.since)
