"""Continuation tokens of instance queries: Base64 of the JSON pair ``[integer, instance id]``.

Every store issues and reads them the same way. A token comes back from the
caller (``?continuationToken=``), so its shape is checked strictly here: a
boolean is not an integer, an integer must fit SQLite's 64 bits, and the id
must be text, so that a forged token is a ``ValueError`` naming it (a 400),
never an overflow or an encoding error deep in a store (a 500).
"""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["decode_keyset", "encode_keyset"]

_INT64 = range(-(2**63), 2**63)


def encode_keyset(position: int, instance_id: str) -> str:
    """The token for a position in (integer, instance id) order."""
    return base64.urlsafe_b64encode(json.dumps([position, instance_id]).encode()).decode()


def decode_keyset(token: str) -> tuple[int, str]:
    """The (integer, instance id) a token holds; ``ValueError`` if no store issued it."""
    try:
        position, instance_id = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise _invalid(token) from None
    if type(position) is not int or position not in _INT64 or not _is_text(instance_id):
        raise _invalid(token)
    return position, instance_id


def _is_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800") decoded from JSON
        return False
    return True


def _invalid(token: str) -> ValueError:
    return ValueError(
        f"invalid continuation token {token[:40]!r}: pass back the one a query returned"
    )
