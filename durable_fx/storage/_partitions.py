"""The control-queue partition count of an Azure task hub: where it comes from, its bounds.

Here, not in the Azure package, so that ``bindings`` can name an app's queues
at indexing without loading the Azure SDK, and read the count exactly as the
store does.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "DEFAULT_PARTITIONS",
    "MAX_PARTITIONS",
    "PARTITIONS_ENV",
    "partition_count",
    "valid_partitions",
]

PARTITIONS_ENV = "DURABLE_FX_PARTITIONS"
DEFAULT_PARTITIONS = 4
"""As Durable Functions: enough for four instances to share the control work."""
MAX_PARTITIONS = 16


def partition_count(chosen: int | None, in_url: str | None, environ: Mapping[str, str]) -> int:
    """The count: ``chosen``, else the store URL's, else ``DURABLE_FX_PARTITIONS``, else 4."""
    if chosen is not None:
        return valid_partitions(chosen, source="partitions")
    if in_url is not None:
        return valid_partitions(in_url, source="the store URL's partitions option")
    setting = environ.get(PARTITIONS_ENV, "").strip()
    if setting:
        return valid_partitions(setting, source=PARTITIONS_ENV)
    return DEFAULT_PARTITIONS


def valid_partitions(value: int | str, *, source: str) -> int:
    """A partition count from ``source`` (a setting's name), checked to be 1 to 16."""
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(
            f"{source} must be a whole number from 1 to {MAX_PARTITIONS} (the number of "
            f"control queue partitions), not {value!r}"
        )
    return count
