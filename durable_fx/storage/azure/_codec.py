"""Rows of the hub table: keys, timestamps, and records to entities and back.

One partition per instance (``PartitionKey`` = instance id) holds:

=====================================  =========================================
RowKey                                 row
=====================================  =========================================
``i``                                  the instance row (status, payloads, version,
                                       history generation and length, owner)
``h<gen:6 hex><seq:8 hex>``            one history event of generation ``gen``
``m<dedupe key>``                      a pending inbox message (its key is its id)
``w<execution id>:<task id:10>``       an activity work item not yet completed
``x<version:10><index:6>``             an outgoing message not yet delivered
=====================================  =========================================

Timestamps are fixed-width ISO strings (``2024-01-01T00:00:00.000000Z``):
exact to the microsecond and ordered as text, so filters compare them.
Strings longer than a table property allows go to a payload blob and the row
keeps ``<Prop>_blob`` instead of ``<Prop>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..._history import FailureDetails
from ..._state import OrchestrationStatus
from .._records import InstanceRecord
from ._resources import Resources

__all__ = [
    "INSTANCE_ROW",
    "USED_KEYS",
    "Codec",
    "history_key",
    "inbox_key",
    "json_object",
    "odata",
    "outbox_key",
    "parse_ts",
    "ts",
    "used_key",
    "work_key",
]

INSTANCE_ROW = "i"
_UNSAFE = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_KEY = 512
# A table property holds 64 KiB of UTF-16; stay below it with room to spare.
_MAX_INLINE_UTF16_BYTES = 60_000


def ts(moment: datetime) -> str:
    """A timezone-aware time as a fixed-width, sortable UTC string."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """The inverse of ``ts``."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def odata(value: str) -> str:
    """A string literal for a table query filter."""
    return "'" + value.replace("'", "''") + "'"


def _safe(text: str) -> str:
    """``text`` if it is a valid key fragment, else a stable hash of it."""
    if len(text) <= _MAX_KEY and not _UNSAFE.search(text) and not text.startswith("~"):
        return text
    return "~" + hashlib.sha256(text.encode()).hexdigest()


def history_key(generation: int, seq: int) -> str:
    """RowKey of history event ``seq`` of generation ``generation``."""
    return f"h{generation:06x}{seq:08x}"


USED_KEYS = ("d", "e")
"""The RowKey range (from, before) of the used-key rows of a partition."""


def used_key(key: str) -> str:
    """RowKey remembering that a message with dedupe key ``key`` was enqueued.

    It sorts before the history rows and the instance row, so partition reads
    (``RowKey ge 'i'``) skip it. A replacement or a purge of the instance
    deletes these rows; a new history generation (continue-as-new) keeps them.
    """
    return "d" + _safe(key)


def inbox_key(key: str) -> str:
    """RowKey of the pending message with dedupe key ``key``."""
    return "m" + _safe(key)


def work_key(execution_id: str, task_id: int) -> str:
    """RowKey of the work item for one task of one execution."""
    return f"w{_safe(execution_id)}:{task_id:010d}"


def outbox_key(version: int, index: int) -> str:
    """RowKey of outgoing message ``index`` of the commit that made version ``version``."""
    return f"x{version:010d}{index:06d}"


def fits_inline(text: str) -> bool:
    """Whether ``text`` fits in one table property."""
    if len(text) <= _MAX_INLINE_UTF16_BYTES // 4:
        return True
    return len(text.encode("utf-16-le")) <= _MAX_INLINE_UTF16_BYTES


class Codec:
    """Encodes rows, moving large strings to payload blobs and back."""

    def __init__(self, resources: Resources) -> None:
        self._resources = resources

    async def put_text(
        self, entity: dict[str, Any], prop: str, text: str | None, instance_id: str
    ) -> None:
        """Store ``text`` in ``entity[prop]``, or in a blob named by ``entity[prop_blob]``."""
        if text is None:
            return
        if fits_inline(text):
            entity[prop] = text
        else:
            entity[f"{prop}_blob"] = await self._resources.put_payload(instance_id, text)

    async def get_text(self, entity: Mapping[str, Any], prop: str) -> str | None:
        """The string ``put_text`` stored, wherever it went."""
        value = entity.get(prop)
        if value is not None:
            return str(value)
        blob = entity.get(f"{prop}_blob")
        return await self._resources.get_payload(str(blob)) if blob else None

    # -- instance rows -----------------------------------------------------------

    async def instance_entity(self, record: InstanceRecord, **state: Any) -> dict[str, Any]:
        """The full instance row for ``record`` plus store state (version, owner...)."""
        iid = record.instance_id
        entity: dict[str, Any] = {
            "PartitionKey": iid,
            "RowKey": INSTANCE_ROW,
            "Name": record.name,
            "ExecutionId": record.execution_id,
            "Status": record.status.value,
            "CreatedAt": ts(record.created_at),
            "UpdatedAt": ts(record.updated_at),
        }
        if record.parent_instance_id is not None:
            entity["ParentId"] = record.parent_instance_id
        if record.orchestration_version is not None:
            entity["OrchVersion"] = record.orchestration_version
        await self.put_text(entity, "Input", record.input, iid)
        await self.put_text(entity, "Output", record.output, iid)
        await self.put_text(entity, "CustomStatus", record.custom_status, iid)
        failure = record.failure.model_dump_json() if record.failure else None
        await self.put_text(entity, "Failure", failure, iid)
        entity.update({k: v for k, v in state.items() if v is not None})
        return entity

    async def instance_record(self, entity: Mapping[str, Any]) -> InstanceRecord:
        """The record an instance row holds."""
        failure = await self.get_text(entity, "Failure")
        return InstanceRecord(
            instance_id=str(entity["PartitionKey"]),
            name=str(entity["Name"]),
            execution_id=str(entity["ExecutionId"]),
            status=OrchestrationStatus(entity["Status"]),
            created_at=parse_ts(str(entity["CreatedAt"])),
            updated_at=parse_ts(str(entity["UpdatedAt"])),
            input=await self.get_text(entity, "Input"),
            output=await self.get_text(entity, "Output"),
            custom_status=await self.get_text(entity, "CustomStatus"),
            failure=FailureDetails.model_validate_json(failure) if failure else None,
            parent_instance_id=entity.get("ParentId"),
            version=str(entity.get("Version", 1)),
            orchestration_version=entity.get("OrchVersion"),
        )


def json_list(value: object) -> list[str]:
    """A JSON list of strings stored in a property (empty when absent)."""
    if not value:
        return []
    parsed = json.loads(str(value))
    return [str(item) for item in parsed]


def json_object(text: str) -> dict[str, Any] | None:
    """``text`` as a JSON object, or ``None`` if it is not one (queue bodies are untrusted)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
