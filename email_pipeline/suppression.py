"""The suppression list: one entity per address that must not be mailed again.

A hard bounce of an email with one recipient suppresses that address
(``email_delivery`` signals ``suppress``); a later email to a suppressed
address is not sent and ends ``suppressed``. An operator lifts it over the
management API: ``POST /api/entities/suppression/{key}?op=lift``, where the key
is ``suppression_key(address)`` (the lower-cased address, URL-quoted).
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from pydantic import BaseModel

from durable_fx import DurableEntity, EntityId

__all__ = ["Suppression", "SuppressionList", "suppression_key", "suppression_of"]


class Suppression(BaseModel):
    """Why an address is suppressed, since when, and which email found out."""

    reason: str
    since: datetime
    instance_id: str | None = None


def suppression_key(address: str) -> str:
    """The entity key of ``address``: case-insensitive, and safe as an instance id."""
    # "/" and "?" are legal in a local part but not in a store's instance id.
    return quote(address.strip().lower(), safe="@+")


def suppression_of(address: str) -> EntityId:
    """The suppression entity of ``address``."""
    return EntityId("suppression", suppression_key(address))


class SuppressionList(DurableEntity):
    """One address's entry: ``suppress`` it (why, which email), ``lift`` it, ``get`` it."""

    def suppress(self, record: Suppression) -> Suppression:
        self.set_state(record)
        return record

    def lift(self) -> None:
        self.delete_state()

    def get(self) -> Suppression | None:
        found: Suppression | None = self.get_state(Suppression)
        return found
