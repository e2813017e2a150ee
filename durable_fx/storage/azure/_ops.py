"""Operations of entity-group transactions: builders, tolerances, and splitting into batches.

Pure functions of their arguments: no I/O (``_hub`` submits them).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

from ._codec import INSTANCE_ROW

__all__ = [
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "Op",
    "batches",
    "bump",
    "entity_size",
    "exists_ok",
    "gone_ok",
    "if_match",
    "instance_update",
    "key_of_row",
]

Op = tuple[Any, ...]
"""One operation of an entity-group transaction, as ``TableClient.submit_transaction`` takes it."""

MAX_BATCH = 100
MAX_BATCH_BYTES = 3_500_000


def instance_update(entity: dict[str, Any], etag: str, *, merge: bool = False) -> Op:
    """A conditional write of an instance row (If-Match ``etag``)."""
    mode = UpdateMode.MERGE if merge else UpdateMode.REPLACE
    return ("update", entity, {"mode": mode, **if_match(etag)})


def if_match(etag: str) -> dict[str, Any]:
    """The options of an operation that applies only while the row's ETag is ``etag``."""
    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def key_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The keys of a row read from the table (for a delete)."""
    return {"PartitionKey": row["PartitionKey"], "RowKey": row["RowKey"]}


def gone_ok(op: Op, status: int) -> bool:
    """``submit_tolerant``: a delete or update of a row (not the instance row) already gone."""
    return op[0] in ("delete", "update") and status == 404 and op[1].get("RowKey") != INSTANCE_ROW


def exists_ok(op: Op, status: int) -> bool:
    """``submit_tolerant``: an insert whose row is there already (a duplicate, or our retry)."""
    return op[0] == "create" and status == 409


def bump(instance_id: str) -> Op:
    """An unconditional touch of an instance row: fails (404) if it does not exist.

    It changes the row's ETag, which is how an owner in another process learns
    that new messages arrived (its next conditional write fails and it re-reads).
    """
    entity = {"PartitionKey": instance_id, "RowKey": INSTANCE_ROW, "Mail": uuid.uuid4().hex}
    return ("update", entity, {"mode": UpdateMode.MERGE})


def entity_size(op: Op) -> int:
    """Rough wire size of an operation's entity."""
    entity = op[1]
    return 200 + sum(len(k) + len(str(v)) for k, v in entity.items())


def batches(ops: Sequence[Op]) -> list[list[Op]]:
    """Split operations into transactions of at most 100 operations and ~3.5 MB."""
    out: list[list[Op]] = []
    current: list[Op] = []
    size = 0
    for op in ops:
        op_size = entity_size(op)
        if current and (len(current) >= MAX_BATCH or size + op_size > MAX_BATCH_BYTES):
            out.append(current)
            current, size = [], 0
        current.append(op)
        size += op_size
    if current:
        out.append(current)
    return out
