"""Instance id rules, the same on every store.

They are Azure Table key rules (the strictest store) so an app can move from
SQLite to Azure without renaming anything.
"""

from __future__ import annotations

import re

from ._errors import InvalidInstanceIdError

__all__ = ["MAX_INSTANCE_ID_LENGTH", "validate_instance_id"]

MAX_INSTANCE_ID_LENGTH = 256
_FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


def validate_instance_id(instance_id: object) -> str:
    """Return ``instance_id`` if every store accepts it, else raise ``InvalidInstanceIdError``."""
    if not isinstance(instance_id, str):
        raise InvalidInstanceIdError(repr(instance_id), "it must be a string")
    if not instance_id:
        raise InvalidInstanceIdError(instance_id, "it is empty")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInstanceIdError(
            instance_id, f"it has {len(instance_id)} characters, at most {MAX_INSTANCE_ID_LENGTH}"
        )
    if instance_id.strip() != instance_id:
        raise InvalidInstanceIdError(instance_id, "it starts or ends with whitespace")
    bad = _FORBIDDEN.search(instance_id)
    if bad:
        char = bad.group()
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        raise InvalidInstanceIdError(
            instance_id,
            f"it contains {shown}; '/', '\\\\', '#', '?' and control characters are not allowed",
        )
    return instance_id
