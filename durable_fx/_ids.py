r"""Instance id rules, the same on every store.

They are Azure Table and Blob key rules (the strictest store) so an app can
move from SQLite to Azure without renaming anything, plus what keeps an id
honest when a person reads it: no character that reorders or hides text
(a right-to-left override makes ``abc\u202efdp.exe`` display as ``abcexe.pdf``).
"""

from __future__ import annotations

import re

from ._errors import InvalidInstanceIdError

__all__ = ["MAX_INSTANCE_ID_LENGTH", "validate_instance_id"]

MAX_INSTANCE_ID_LENGTH = 256
_KEY_CHARACTERS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_RULES = "'/', '\\\\', '#', '?', control, bidirectional and invisible characters are not allowed"
# Bidirectional controls reorder what a reader sees; the invisible ones make two
# different ids look the same; line and paragraph separators break log lines.
# Zero-width (non-)joiners U+200C/U+200D stay allowed: scripts and emoji need them.
_DECEPTIVE = {
    **dict.fromkeys([0x061C, 0x200E, 0x200F], "a bidirectional control character"),
    **dict.fromkeys(range(0x202A, 0x202F), "a bidirectional control character"),
    **dict.fromkeys(range(0x2066, 0x206A), "a bidirectional control character"),
    **dict.fromkeys([0x200B, 0xFEFF, *range(0x2060, 0x2065)], "an invisible character"),
    **dict.fromkeys([0x2028, 0x2029], "a line or paragraph separator"),
}
_DECEPTIVE_CHARACTERS = re.compile(
    "[" + "".join(re.escape(chr(code)) for code in _DECEPTIVE) + "\ud800-\udfff]"
)


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
    if instance_id in (".", ".."):
        # Azure blob names are URL paths: "." and ".." would name the container itself.
        raise InvalidInstanceIdError(instance_id, f"{instance_id!r} is a path step, not a name")
    reason = _bad_character(instance_id)
    if reason:
        raise InvalidInstanceIdError(instance_id, f"it contains {reason}; {_RULES}")
    return instance_id


def _bad_character(instance_id: str) -> str | None:
    """What is wrong with the first refused character, or ``None``."""
    bad = _KEY_CHARACTERS.search(instance_id)
    if bad:
        char = bad.group()
        return repr(char) if char.isprintable() else f"U+{ord(char):04X}"
    bad = _DECEPTIVE_CHARACTERS.search(instance_id)
    if bad is None:
        return None
    code = ord(bad.group())
    what = _DECEPTIVE.get(code, "a lone surrogate, which is not text")
    return f"U+{code:04X} ({what})"
