"""Instance queries on the SQLite store: the WHERE clause and the keyset continuation."""

from __future__ import annotations

from typing import Any

from .._keyset import decode_keyset, encode_keyset
from .._records import InstanceQuery, InstanceRecord
from ._rows import to_micros

__all__ = ["continuation", "query_filter"]


def query_filter(query: InstanceQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of an instance query, continuation included."""
    clauses = ["1"]
    params: list[Any] = []
    if len(query.statuses) == 1:
        clauses.append("status = ?")  # instances_status holds its rows newest first
        params.extend(status.value for status in query.statuses)
    elif query.statuses:
        # "+status": by instances_created, not instances_status, from which SQLite
        # would read every row of each status and sort them all for one page.
        clauses.append(f"+status IN ({', '.join('?' * len(query.statuses))})")
        params.extend(sorted(status.value for status in query.statuses))
    if query.name is not None:
        clauses.append("name = ?")
        params.append(query.name)
    if query.created_from is not None:
        clauses.append("created_at >= ?")
        params.append(to_micros(query.created_from))
    if query.created_to is not None:
        clauses.append("created_at <= ?")
        params.append(to_micros(query.created_to))
    if query.instance_id_prefix:
        clauses.append("substr(instance_id, 1, ?) = ?")
        params.extend((len(query.instance_id_prefix), query.instance_id_prefix))
    # Entity ids are exactly those from '@' up to (not including) 'A'.
    if query.entities:
        clauses.append("instance_id >= '@' AND instance_id < 'A'")
    else:
        clauses.append("(instance_id < '@' OR instance_id >= 'A')")
    if query.continuation is not None:
        created, after = decode_keyset(query.continuation)
        clauses.append("(created_at < ? OR (created_at = ? AND instance_id > ?))")
        params.extend((created, created, after))
    return " AND ".join(clauses), params


def continuation(last: InstanceRecord) -> str:
    """An opaque keyset token: where the next page starts in (created_at DESC, id) order."""
    return encode_keyset(to_micros(last.created_at), last.instance_id)
