"""Which provider the settings choose."""

from __future__ import annotations

import os
from collections.abc import Mapping

from .acs import AcsProvider
from .base import EmailProvider
from .smtp import SmtpProvider

__all__ = ["open_provider"]


def open_provider(env: Mapping[str, str] | None = None) -> EmailProvider:
    """The provider ``EMAIL_PROVIDER`` names (see ``email_pipeline.settings``)."""
    environ = os.environ if env is None else env
    kind = environ.get("EMAIL_PROVIDER", "smtp").strip().lower()
    if kind == "smtp":
        security = environ.get("SMTP_SECURITY", "none").strip().lower()
        if security not in ("none", "starttls", "ssl"):
            raise ValueError(f"SMTP_SECURITY must be none, starttls or ssl, not {security!r}")
        return SmtpProvider(
            host=environ.get("SMTP_HOST", "localhost"),
            port=int(environ.get("SMTP_PORT", "25")),
            security=security,  # type: ignore[arg-type]
            username=environ.get("SMTP_USERNAME") or None,
            password=environ.get("SMTP_PASSWORD") or None,
            ca_file=environ.get("SMTP_CA_FILE") or None,
            domain=environ.get("EMAIL_MESSAGE_ID_DOMAIN", "durable-fx.local"),
        )
    if kind == "acs":
        connection = environ.get("ACS_EMAIL_CONNECTION_STRING", "")
        if not connection:
            raise ValueError("EMAIL_PROVIDER=acs needs ACS_EMAIL_CONNECTION_STRING")
        return AcsProvider(connection)
    raise ValueError(f"EMAIL_PROVIDER must be smtp or acs, not {kind!r}")
