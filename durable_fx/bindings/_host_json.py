"""host.json: the parts durable_fx reads (HTTP route prefix, queue trigger options).

The Functions host reads host.json from the app's root; the worker learns that
root from ``AzureWebJobsScriptRoot``. ``durable-fx serve`` reads the same file
from the directory it runs in, so both agree on routes and queue behaviour.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..queues import MessageEncoding

__all__ = ["HostConfig", "QueueOptions", "parse_timespan", "script_root"]

_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$")


def script_root() -> Path:
    """The app's root directory: ``AzureWebJobsScriptRoot`` (set by the host), else the cwd."""
    return Path(os.environ.get("AzureWebJobsScriptRoot") or os.getcwd())  # noqa: SIM112


def parse_timespan(value: str, *, name: str) -> timedelta:
    """A .NET TimeSpan (``[d.]hh:mm:ss[.fffffff]``) as host.json writes durations."""
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise ValueError(f"host.json {name}: {value!r} is not a duration like 00:00:30")
    days, hours, minutes, seconds, fraction = match.groups()
    return timedelta(
        days=int(days or 0),
        hours=int(hours),
        minutes=int(minutes),
        seconds=int(seconds),
        microseconds=int((fraction or "0").ljust(7, "0")[:6]),
    )


@dataclass(frozen=True, slots=True)
class QueueOptions:
    """``extensions.queues``: how queue triggers poll, retry and poison (the host's defaults)."""

    batch_size: int = 16
    new_batch_threshold: int | None = None
    max_polling_interval: timedelta = timedelta(minutes=1)
    visibility_timeout: timedelta = timedelta(0)
    max_dequeue_count: int = 5
    message_encoding: MessageEncoding = "base64"

    def batch_threshold(self) -> int:
        """When to fetch the next batch: the setting, else half a batch per processor."""
        if self.new_batch_threshold is not None:
            return self.new_batch_threshold
        return max(1, self.batch_size // 2) * (os.cpu_count() or 1)

    @classmethod
    def from_json(cls, section: dict[str, Any]) -> QueueOptions:
        """Options from host.json's ``extensions.queues`` object (names as the host spells them)."""
        options = cls()
        values: dict[str, Any] = {}
        if "batchSize" in section:
            values["batch_size"] = _int(section["batchSize"], "queues.batchSize", 1, 32)
        if "newBatchThreshold" in section:
            values["new_batch_threshold"] = _int(
                section["newBatchThreshold"], "queues.newBatchThreshold", 0, 10_000
            )
        if "maxDequeueCount" in section:
            values["max_dequeue_count"] = _int(
                section["maxDequeueCount"], "queues.maxDequeueCount", 1, 10_000
            )
        for key, attr in (
            ("maxPollingInterval", "max_polling_interval"),
            ("visibilityTimeout", "visibility_timeout"),
        ):
            if key in section:
                values[attr] = parse_timespan(str(section[key]), name=f"queues.{key}")
        if "messageEncoding" in section:
            encoding = str(section["messageEncoding"]).lower()
            if encoding not in ("base64", "none"):
                raise ValueError("host.json queues.messageEncoding must be base64 or none")
            values["message_encoding"] = encoding
        return replace(options, **values)


@dataclass(frozen=True, slots=True)
class HostConfig:
    """What durable_fx takes from host.json."""

    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)

    @classmethod
    def load(cls, directory: Path | None = None) -> HostConfig:
        """Read ``host.json`` from ``directory`` (default: the script root); defaults if absent."""
        path = (directory or script_root()) / "host.json"
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            return cls()
        except ValueError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.from_json(document)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> HostConfig:
        """The config a parsed host.json gives."""
        extensions = document.get("extensions") or {}
        http = extensions.get("http") or {}
        prefix = http.get("routePrefix", "api")
        return cls(
            route_prefix=str(prefix if prefix is not None else "api").strip("/"),
            queues=QueueOptions.from_json(extensions.get("queues") or {}),
        )


def _int(value: Any, name: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"host.json {name} must be a whole number from {low} to {high}")
    return value
