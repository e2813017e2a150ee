"""Function keys for ``durable-fx serve``: who may call FUNCTION- and ADMIN-level routes.

As on Azure, a key comes in the ``x-functions-key`` header or the ``code``
query parameter. FUNCTION routes take any function key or the master key,
ADMIN routes only the master key, ANONYMOUS routes none.

``DURABLE_FX_FUNCTION_KEYS`` holds the function keys (comma-separated) and
``DURABLE_FX_MASTER_KEY`` the master key. With neither set, serve makes up a
function key for the run and logs it once, so a fresh machine works without
leaving the routes open.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FunctionKeys"]


@dataclass(frozen=True, slots=True)
class FunctionKeys:
    """The keys this host accepts."""

    function_keys: tuple[str, ...]
    master_key: str | None = None
    generated: bool = False
    """True when the function key was made up for this run (none was configured)."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> FunctionKeys:
        """Keys from ``DURABLE_FX_FUNCTION_KEYS`` and ``DURABLE_FX_MASTER_KEY``."""
        environ = os.environ if env is None else env
        keys = tuple(k.strip() for k in environ.get("DURABLE_FX_FUNCTION_KEYS", "").split(","))
        keys = tuple(k for k in keys if k)
        master = environ.get("DURABLE_FX_MASTER_KEY", "").strip() or None
        if keys or master:
            return cls(keys, master)
        return cls((secrets.token_urlsafe(24),), None, generated=True)

    def allows(self, auth_level: str, offered: str | None) -> bool:
        """Whether a request offering ``offered`` may call a route of ``auth_level``."""
        level = auth_level.upper()
        if level == "ANONYMOUS":
            return True
        if not offered:
            return False
        candidates = (
            [self.master_key] if level == "ADMIN" else [*self.function_keys, self.master_key]
        )
        # Compare every key in constant time so timing reveals nothing about which is close.
        matched = False
        for key in candidates:
            if key is not None and hmac.compare_digest(key.encode(), offered.encode()):
                matched = True
        return matched
