"""The SQLite store's statements, one module constant each.

Constants because sqlite3 caches prepared statements per connection by their
text. The layout they rely on is in ``_schema`` (why ``due_at`` and
``visible_at`` do double duty: docs/design/sqlite-store.md). Batches travel
as one JSON array parameter (``json_each``), so each statement is a single
SQLite step.
"""

from __future__ import annotations

__all__ = [
    "CANCEL_MESSAGES",
    "COMMIT_INSTANCE",
    "CONSUME_MESSAGES",
    "COUNT_BY_STATUS",
    "COUNT_DELIVERIES",
    "DELAY_MESSAGES",
    "DELETE_COMPLETED",
    "DELETE_HISTORY",
    "DELETE_MESSAGES",
    "DELETE_POISON",
    "DELETE_WORK_ITEMS",
    "DELIVER_RESULTS",
    "HAS_READY_WORK",
    "HELD_WORK_ITEM",
    "INSERT_HISTORY",
    "INSERT_INSTANCE",
    "INSERT_MESSAGES",
    "INSERT_POISON",
    "INSERT_USED_KEY",
    "INSERT_WORK_ITEMS",
    "INSTANCE_COLUMNS",
    "LOCK_INSTANCES",
    "LOCK_WORK_ITEMS",
    "LOWER_DUE",
    "NEXT_MESSAGE_DUE",
    "NEXT_WORK_ITEM_DUE",
    "RECOMPUTE_DUE",
    "RECOMPUTE_OWN_DUE",
    "RELEASE_INSTANCE",
    "RELEASE_WORK_ITEM",
    "RENEW_INSTANCE",
    "RENEW_WORK_ITEM",
    "RESTART_INSTANCE",
    "SELECT_DUE_ACCEPTED",
    "SELECT_DUE_INSTANCES",
    "SELECT_HELD_MESSAGES",
    "SELECT_HELD_WORK_ITEM",
    "SELECT_HISTORY",
    "SELECT_INSTANCE",
    "SELECT_INSTANCE_POISON",
    "SELECT_LOCK_STATE",
    "SELECT_POISON",
    "SELECT_POISON_BY_ID",
    "SELECT_READY_WORK_ITEMS",
    "SELECT_STATUS",
    "SELECT_STATUS_AND_KEY",
    "SELECT_VISIBLE_MESSAGES",
    "WORK_ITEM_COLUMNS",
]


def _fields(*names: str) -> str:
    """Name the items of each array that ``json_each`` yields, in order."""
    return ", ".join(f"json_extract(value, '$[{i}]') AS {name}" for i, name in enumerate(names))


# -- statements: instances -----------------------------------------------------

INSTANCE_COLUMNS = (
    "instance_id, name, execution_id, status, input, output, custom_status, failure,"
    " created_at, updated_at, parent_instance_id, version, orch_version"
)
SELECT_INSTANCE = f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?"
SELECT_STATUS = "SELECT status FROM instances WHERE instance_id = ?"
DELETE_IDLE_INSTANCE = (
    "DELETE FROM instances WHERE instance_id = ?1 AND version = ?2"
    " AND NOT EXISTS (SELECT 1 FROM inbox WHERE instance_id = ?1)"
    " AND NOT EXISTS (SELECT 1 FROM work_items WHERE instance_id = ?1)"
)
# Orchestrations only: entity ids run from '@' up to 'A' (instances_status covers it).
COUNT_BY_STATUS = (
    "SELECT status, COUNT(*) FROM instances"
    " WHERE instance_id < '@' OR instance_id >= 'A' GROUP BY status"
)
SELECT_STATUS_AND_KEY = (
    "SELECT status, EXISTS (SELECT 1 FROM used_keys WHERE instance_id = ?1 AND msg_key = ?2)"
    " FROM instances WHERE instance_id = ?1"
)
INSERT_USED_KEY = "INSERT OR IGNORE INTO used_keys (instance_id, msg_key) VALUES (?, ?)"
INSERT_INSTANCE = (
    "INSERT OR IGNORE INTO instances (instance_id, name, execution_id, status, input,"
    " created_at, updated_at, parent_instance_id, orch_version, due_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, COALESCE(?10, ?11))"
)
# The version keeps counting across incarnations, so a version cached for the
# old instance can never be mistaken for one of the new.
RESTART_INSTANCE = (
    "UPDATE instances SET name = ?2, execution_id = ?3, status = ?4, input = ?5, output = NULL,"
    " custom_status = NULL, failure = NULL, created_at = ?6, updated_at = ?7,"
    " parent_instance_id = ?8, orch_version = ?9, due_at = COALESCE(?10, ?11),"
    " version = version + 1, history_len = 0,"
    " locked_by = NULL, locked_until = NULL WHERE instance_id = ?1"
)
COMMIT_INSTANCE = (
    "UPDATE instances SET name = ?, execution_id = ?, status = ?, input = ?, output = ?,"
    " custom_status = ?, failure = ?, created_at = ?, updated_at = ?, parent_instance_id = ?,"
    " orch_version = ?,"
    " history_len = CASE WHEN ? THEN 0 ELSE history_len END + ?, version = version + 1,"
    " locked_by = NULL, locked_until = NULL"
    " WHERE instance_id = ? AND version = ? AND locked_by = ? RETURNING version, history_len"
)
SELECT_LOCK_STATE = "SELECT version, locked_by FROM instances WHERE instance_id = ?"
RELEASE_INSTANCE = (
    "UPDATE instances SET locked_by = NULL, locked_until = NULL"
    " WHERE instance_id = ? AND locked_by = ?"
)
# due_at moves with the lease: a locked instance is due when its lease runs out.
RENEW_INSTANCE = (
    "UPDATE instances SET locked_until = ?3, due_at = ?3 WHERE instance_id = ?1 AND locked_by = ?2"
)
# Only unlocked instances: a locked one is due at its lease expiry until its
# commit (or abandon) recomputes this.
RECOMPUTE_DUE = (
    "UPDATE instances SET due_at = (SELECT MIN(visible_at) FROM inbox"
    " WHERE inbox.instance_id = instances.instance_id)"
    " WHERE instance_id IN (SELECT value FROM json_each(?)) AND locked_by IS NULL"
)
# A rewind is accepted in the step that queues it: clients see it RUNNING at once, and
# the version moves so an episode that read the FAILED row cannot write it back.
ACCEPT_REWIND = (
    "UPDATE instances SET status = 'RUNNING', output = NULL, failure = NULL, updated_at = ?2,"
    " version = version + 1 WHERE instance_id = ?1"
)
LOWER_DUE = (
    "UPDATE instances SET due_at = MIN(COALESCE(due_at, ?2), ?2)"
    " WHERE instance_id = ?1 AND locked_by IS NULL"
)
RECOMPUTE_OWN_DUE = (
    "UPDATE instances SET due_at = (SELECT MIN(visible_at) FROM inbox WHERE instance_id = ?1)"
    " WHERE instance_id = ?1 RETURNING due_at"
)
SELECT_DUE_INSTANCES = (
    "SELECT json_group_array(json_array("
    f"{INSTANCE_COLUMNS})) FROM (SELECT {INSTANCE_COLUMNS} FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1) ORDER BY due_at LIMIT ?2)"
)
# The same, for a caller that runs only some (dfx_accept: its filter, registered per call).
SELECT_DUE_ACCEPTED = SELECT_DUE_INSTANCES.replace(
    " ORDER BY due_at", " AND dfx_accept(name, orch_version) ORDER BY due_at"
)
LOCK_INSTANCES = (
    "UPDATE instances SET locked_by = ?2, locked_until = ?3, due_at = ?3"
    " WHERE instance_id IN (SELECT value FROM json_each(?1))"
)
HAS_READY_WORK = (
    "SELECT EXISTS (SELECT 1 FROM instances WHERE due_at <= ?1"
    " AND (locked_by IS NULL OR locked_until <= ?1))"
    " OR EXISTS (SELECT 1 FROM work_items WHERE visible_at <= ?1)"
)

# -- statements: history and inbox ---------------------------------------------

SELECT_HISTORY = (
    "SELECT '[' || COALESCE(group_concat(event_json, ','), '') || ']'"
    " FROM (SELECT event_json FROM history WHERE instance_id = ? ORDER BY seq)"
)
INSERT_HISTORY = (
    "INSERT INTO history (instance_id, seq, event_json) SELECT ?1, ?2 + key, value"
    " FROM json_each(?3)"
)
DELETE_HISTORY = "DELETE FROM history WHERE instance_id = ?"
# Messages to a missing instance are dropped by the WHERE, in the same statement.
INSERT_MESSAGES = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    " SELECT iid, eid, mkey, event, COALESCE(visible, ?2)"
    f" FROM (SELECT {_fields('iid', 'eid', 'mkey', 'event', 'visible')} FROM json_each(?1))"
    " WHERE EXISTS (SELECT 1 FROM instances WHERE instance_id = iid)"
)
SELECT_VISIBLE_MESSAGES = (
    "SELECT json_group_array(json_array(id, instance_id, execution_id, msg_key, event_json,"
    " dequeue_count, visible_at)) FROM inbox"
    " WHERE instance_id IN (SELECT value FROM json_each(?1)) AND visible_at <= ?2"
)
COUNT_DELIVERIES = (
    "UPDATE inbox SET dequeue_count = dequeue_count + 1"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
# "+instance_id" keeps SQLite from scanning the instance's whole inbox through
# inbox_instance (thousands of rows during a fan-out): look up the ids instead.
CONSUME_MESSAGES = (
    "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?2)) AND +instance_id = ?1"
)
# Pending messages deleted by key: timers an episode cancelled (UNIQUE (instance_id, msg_key)).
CANCEL_MESSAGES = (
    "DELETE FROM inbox WHERE instance_id = ?1 AND msg_key IN (SELECT value FROM json_each(?2))"
)
SELECT_HELD_MESSAGES = (
    "SELECT id, msg_key, event_json, dequeue_count, execution_id FROM inbox"
    " WHERE id IN (SELECT value FROM json_each(?2)) AND +instance_id = ?1"
)
DELAY_MESSAGES = "UPDATE inbox SET visible_at = ?1 WHERE id IN (SELECT value FROM json_each(?2))"
DELETE_MESSAGES = "DELETE FROM inbox WHERE id IN (SELECT value FROM json_each(?))"
NEXT_MESSAGE_DUE = "SELECT MIN(visible_at) FROM inbox WHERE visible_at > ?"
DUE_MESSAGES = "SELECT COUNT(*), MIN(visible_at) FROM inbox WHERE visible_at <= ?"

# -- statements: work items ----------------------------------------------------

WORK_ITEM_COLUMNS = (
    "id, instance_id, execution_id, task_id, name, input, attempt, dequeue_count,"
    " heartbeat_timeout, heartbeat_details, trace_context"
)
INSERT_WORK_ITEMS = (
    "INSERT OR IGNORE INTO work_items (instance_id, execution_id, task_id, name, input, attempt,"
    " heartbeat_timeout, heartbeat_details, trace_context, visible_at)"
    f" SELECT {_fields('iid', 'eid', 'task', 'name', 'input', 'attempt', 'hbt', 'hbd', 'tc')},"
    " ?2 FROM json_each(?1)"
)
SELECT_READY_WORK_ITEMS = (
    f"SELECT json_group_array(json_array({WORK_ITEM_COLUMNS})) FROM (SELECT {WORK_ITEM_COLUMNS}"
    " FROM work_items WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2)"
)
# While locked, an item's visible_at is its lease expiry (see the module docstring).
LOCK_WORK_ITEMS = (
    "UPDATE work_items SET locked_by = ?1, visible_at = ?2, dequeue_count = dequeue_count + 1"
    " WHERE id IN (SELECT value FROM json_each(?3))"
)
NEXT_WORK_ITEM_DUE = (
    "SELECT MIN(visible_at) FROM work_items WHERE visible_at > ? AND locked_by IS NULL"
)
HELD_WORK_ITEM = "instance_id = ? AND execution_id = ? AND task_id = ? AND locked_by = ?"
SELECT_HELD_WORK_ITEM = f"SELECT {WORK_ITEM_COLUMNS} FROM work_items WHERE {HELD_WORK_ITEM}"
RENEW_WORK_ITEM = (
    "UPDATE work_items SET visible_at = ?, heartbeat_details = coalesce(?, heartbeat_details)"
    f" WHERE {HELD_WORK_ITEM}"
)
RELEASE_WORK_ITEM = "UPDATE work_items SET locked_by = NULL, visible_at = ? WHERE id = ?"
DELETE_WORK_ITEMS = "DELETE FROM work_items WHERE id IN (SELECT value FROM json_each(?))"
# A held item's visible_at is its lease's end: only work nobody holds (or whose lease ran out).
DUE_WORK_ITEMS = "SELECT COUNT(*), MIN(visible_at) FROM work_items WHERE visible_at <= ?"
# A result row: the message (5 items), then the work item it answers and the
# lease token that must still hold it (4 items).
_HELD = (
    "w.instance_id = r.w_iid AND w.execution_id = r.w_eid AND w.task_id = r.w_task"
    " AND w.locked_by = r.token"
)
_RESULTS = (
    "(SELECT "
    + _fields("iid", "eid", "mkey", "event", "visible", "w_iid", "w_eid", "w_task", "token")
    + " FROM json_each(?1)) AS r"
)
# Runs before DELETE_COMPLETED: the EXISTS on the still-held work item is what
# drops the result of a lease that another worker took over.
DELIVER_RESULTS = (
    "INSERT OR IGNORE INTO inbox (instance_id, execution_id, msg_key, event_json, visible_at)"
    f" SELECT iid, eid, mkey, event, COALESCE(visible, ?2) FROM {_RESULTS}"
    f" WHERE EXISTS (SELECT 1 FROM work_items AS w WHERE {_HELD})"
    " AND EXISTS (SELECT 1 FROM instances WHERE instance_id = iid)"
)
DELETE_COMPLETED = (
    f"DELETE FROM work_items WHERE id IN (SELECT w.id FROM {_RESULTS} JOIN work_items AS w"
    f" ON {_HELD})"
)

# -- statements: poison --------------------------------------------------------

INSERT_POISON = (
    "INSERT INTO poison (queue, instance_id, body, reason, poisoned_at, dequeue_count, extra)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_POISON_COLUMNS = "id, queue, instance_id, body, reason, poisoned_at, dequeue_count, extra"
SELECT_POISON = f"SELECT {_POISON_COLUMNS} FROM poison ORDER BY id"
SELECT_INSTANCE_POISON = f"SELECT {_POISON_COLUMNS} FROM poison WHERE instance_id = ? ORDER BY id"
SELECT_POISON_BY_ID = (
    "SELECT id, queue, instance_id, body, extra FROM poison"
    " WHERE id IN (SELECT value FROM json_each(?))"
    " AND EXISTS (SELECT 1 FROM instances AS i WHERE i.instance_id = poison.instance_id)"
)
DELETE_POISON = "DELETE FROM poison WHERE id IN (SELECT value FROM json_each(?))"
