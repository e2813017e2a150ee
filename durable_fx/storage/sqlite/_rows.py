"""The SQLite store's row codecs: records to statement parameters and rows back.

They run on the caller's thread: an episode commit becomes a ``CommitPlan``
there, and batches become one JSON array (``dumps``), so the store thread
spends its time in SQLite.

Times are INTEGER microseconds since the Unix epoch (``to_micros``): they
compare as fast as REAL seconds and give back exactly the datetime stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..._history import ExecutionStarted, FailureDetails
from ..._ids import validate_instance_id
from ..._state import OrchestrationStatus
from .._records import (
    ActivityInvocation,
    ActivityResult,
    ActivityWorkItem,
    EpisodeCommit,
    InstanceRecord,
    OrchestrationMessage,
    OrchestrationWorkItem,
    creation_start,
)
from .._trace_codec import trace_text

__all__ = [
    "CommitPlan",
    "commit_values",
    "delay_of",
    "dumps",
    "from_micros",
    "held_key",
    "instance_from_row",
    "invocation_item",
    "message_extra",
    "message_item",
    "micros",
    "optional_time",
    "requeued_items",
    "result_item",
    "start_row",
    "to_micros",
    "work_item_poison",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PENDING = OrchestrationStatus.PENDING.value


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The tz-aware UTC datetime ``to_micros`` encoded."""
    return _EPOCH + timedelta(microseconds=micros)


def optional_time(micros: int | None) -> datetime | None:
    """``from_micros`` that passes ``None`` (SQL NULL) through."""
    return None if micros is None else _EPOCH + timedelta(microseconds=micros)


def micros(duration: timedelta) -> int:
    """A duration in whole microseconds (negative durations count as zero)."""
    return max(0, duration // _MICROSECOND)


def instance_from_row(row: Sequence[Any]) -> InstanceRecord:
    """Build an ``InstanceRecord`` from a row selected with ``INSTANCE_COLUMNS``."""
    (iid, name, execution_id, status, input_, output, custom, failure, created, updated, parent,
     version, orchestration_version) = row  # fmt: skip
    return InstanceRecord(
        instance_id=iid,
        name=name,
        execution_id=execution_id,
        status=OrchestrationStatus(status),
        created_at=from_micros(created),
        updated_at=from_micros(updated),
        input=input_,
        output=output,
        custom_status=custom,
        failure=FailureDetails.model_validate_json(failure) if failure else None,
        parent_instance_id=parent,
        version=str(version),
        orchestration_version=orchestration_version,
    )


def commit_values(record: InstanceRecord) -> tuple[Any, ...]:
    """The new-values part of a ``COMMIT_INSTANCE`` row."""
    return (
        record.name,
        record.execution_id,
        record.status.value,
        record.input,
        record.output,
        record.custom_status,
        record.failure.model_dump_json() if record.failure else None,
        to_micros(record.created_at),
        to_micros(record.updated_at),
        record.parent_instance_id,
        record.orchestration_version,
    )


def start_row(message: OrchestrationMessage, started: ExecutionStarted) -> tuple[Any, ...]:
    """An ``INSERT_INSTANCE`` row for the instance an ``ExecutionStarted`` message creates.

    Its ``due_at`` is NULL when the message is not delayed: bind "now" after it.
    """
    created = to_micros(started.timestamp)
    parent = started.parent.instance_id if started.parent else None
    return (message.instance_id, started.name, started.execution_id, _PENDING, started.input,
            created, created, parent, started.version, delay_of(message))  # fmt: skip


def delay_of(message: OrchestrationMessage) -> int | None:
    """``visible_at`` in microseconds, ``None`` for "now"."""
    return None if message.visible_at is None else to_micros(message.visible_at)


def message_item(message: OrchestrationMessage) -> list[Any]:
    """One ``INSERT_MESSAGES`` array item (its visibility ``None`` means "now")."""
    return [
        message.instance_id,
        message.execution_id,
        message.key,
        message.event.model_dump_json(),
        delay_of(message),
    ]


def result_item(result: ActivityResult) -> list[Any]:
    """One ``DELIVER_RESULTS`` / ``DELETE_COMPLETED`` array item."""
    return message_item(result.message) + list(held_key(result.item))


def held_key(item: ActivityWorkItem) -> tuple[str, str, int, str]:
    """Parameters of ``HELD_WORK_ITEM``: the item, as long as ``item`` still holds it."""
    invocation = item.invocation
    return (invocation.instance_id, invocation.execution_id, invocation.task_id, item.lock_token)


def invocation_item(invocation: ActivityInvocation) -> list[Any]:
    """One ``INSERT_WORK_ITEMS`` array item."""
    i = invocation
    return [
        *(i.instance_id, i.execution_id, i.task_id, i.name, i.input, i.attempt),
        *(i.heartbeat_timeout, i.heartbeat_details, trace_text(i.trace_context)),
    ]


def work_item_poison(row: Sequence[Any]) -> tuple[str, str]:
    """Poison ``(body, extra)`` of a row selected with ``WORK_ITEM_COLUMNS``."""
    _, iid, eid, task, name, input_, attempt, _, hb_timeout, hb_details, traced = row
    body = json.dumps(
        {"instance_id": iid, "execution_id": eid, "task_id": task, "name": name,
         "input": input_, "attempt": attempt, "heartbeat_timeout": hb_timeout,
         "heartbeat_details": hb_details, "trace_context": traced}
    )  # fmt: skip
    return body, json.dumps({"execution_id": eid, "task_id": str(task), "name": name})


def requeued_items(rows: Sequence[Sequence[Any]]) -> tuple[list[int], list[Any], list[Any]]:
    """Put ``SELECT_POISON_BY_ID`` rows back: (their ids, inbox items, work items).

    The poison row kept everything the original row held: an inbox message's
    event, key and execution in ``body`` and ``extra``; a work item's
    invocation in ``body`` (``work_item_poison``). A row that does not say
    enough (written by hand, say) is left where it is.
    """
    ids: list[int] = []
    inbox: list[Any] = []
    work: list[Any] = []
    for poison_id, queue, iid, body, extra_json in rows:
        extra = json.loads(extra_json or "{}")
        if queue == "activities":
            try:
                invocation = json.loads(body)
                fields = ("execution_id", "task_id", "name", "input", "attempt")
                # kept since schema 5
                optional = ("heartbeat_timeout", "heartbeat_details", "trace_context")
                work.append(
                    [iid, *(invocation[name] for name in fields)]
                    + [invocation.get(name) for name in optional]
                )
            except (ValueError, KeyError, TypeError):
                continue
        elif extra.get("key"):
            inbox.append([iid, extra.get("execution_id"), extra["key"], body, None])
        else:
            continue
        ids.append(poison_id)
    return ids, inbox, work


def message_extra(message_id: int, key: str, execution_id: str | None) -> str:
    """The poison ``extra`` of an inbox message, as JSON."""
    extra = {"message_id": str(message_id), "key": key}
    if execution_id is not None:
        extra["execution_id"] = execution_id
    return json.dumps(extra)


def dumps(value: object) -> str:
    """Compact JSON, the form batches travel in to ``json_each``."""
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class CommitPlan:
    """An episode commit turned into statement parameters (on the caller's thread)."""

    instance_id: str
    update: tuple[Any, ...]
    reset: bool
    history: str
    history_count: int
    consumed: str | None
    cancelled: str | None
    activities: str | None
    starts: list[tuple[Any, ...]]
    messages: str | None
    targets: str | None
    delays: list[int | None]

    @classmethod
    def build(cls, item: OrchestrationWorkItem, commit: EpisodeCommit) -> CommitPlan:
        iid = item.instance.instance_id
        if commit.instance.instance_id != iid:
            raise ValueError(
                f"commit for instance {commit.instance.instance_id!r} "
                f"does not match the locked instance {iid!r}"
            )
        for message in commit.messages:
            validate_instance_id(message.instance_id)
        starts = [start_row(m, started) for m in commit.messages if (started := creation_start(m))]
        history = [event.model_dump_json() for event in commit.new_history]
        version = int(item.instance.version or 0)
        update = (*commit_values(commit.instance), commit.reset_history, len(history),
                  iid, version, item.lock_token)  # fmt: skip
        targets = {m.instance_id for m in commit.messages} - {iid}
        return cls(
            instance_id=iid,
            update=update,
            reset=commit.reset_history,
            history=dumps(history),
            history_count=len(history),
            consumed=dumps([int(i) for i in commit.consumed]) if commit.consumed else None,
            cancelled=dumps(list(commit.cancelled)) if commit.cancelled else None,
            activities=_batch(invocation_item(a) for a in commit.activities),
            starts=starts,
            messages=_batch(message_item(m) for m in commit.messages),
            targets=dumps(sorted(targets)) if targets else None,
            delays=[delay_of(m) for m in commit.messages],
        )


def _batch(items: Iterator[list[Any]]) -> str | None:
    """A JSON array parameter for ``json_each``, or ``None`` when there is nothing."""
    rows = list(items)
    return dumps(rows) if rows else None
