"""Structured logs for ``durable-fx serve``: one line per invocation, text or JSON.

Each invocation logs one record on ``durable_fx.serve`` whose fields (function,
trigger, invocation id, outcome, duration, status or message id, error...)
travel in ``extra={"fields": ...}``. ``json`` renders each record as one
object on one line (for log collectors); ``text`` as one ``key=value`` line
(easy to read and to grep), with a failed invocation's traceback indented
below its line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from .._log_context import LogContextFilter

__all__ = ["LogFormat", "configure_logging", "invocation"]

LogFormat = Literal["text", "json"]

log = logging.getLogger("durable_fx.serve")


class _Formatter(logging.Formatter):
    def __init__(self, style: LogFormat) -> None:
        super().__init__()
        self._format: LogFormat = style

    def format(self, record: logging.LogRecord) -> str:
        about: dict[str, Any] = getattr(record, "durable_fx", None) or {}
        fields: dict[str, Any] = {**about, **(getattr(record, "fields", {}) or {})}
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = record.getMessage()
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        if self._format == "json":
            document = {"time": moment, "level": record.levelname, "logger": record.name}
            document["message"] = message
            return json.dumps({**document, **fields}, default=str)
        pairs = " ".join(f"{k}={_text(v)}" for k, v in fields.items() if k != "traceback")
        line = f"{moment} {record.levelname} {record.name}: {message}"
        line = f"{line} {pairs}" if pairs else line
        if "traceback" in fields:
            # The one entry of a failed invocation carries its traceback, indented below it.
            line += "\n" + "\n".join("    " + t for t in str(fields["traceback"]).splitlines())
        return line


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=')) else text


def configure_logging(style: LogFormat, level: int) -> None:
    """Send durable_fx's (and uvicorn's errors) to stderr in ``style``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style))
    handler.addFilter(LogContextFilter())  # the run and trace ids of each line
    for name in ("durable_fx", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    logging.getLogger("uvicorn.error").setLevel(max(level, logging.WARNING))


class _Invocation:
    """Fields of one invocation, filled in as it runs."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.failed: BaseException | None = None


@contextmanager
def invocation(
    function: str, trigger: str, invocation_id: str, **fields: Any
) -> Iterator[_Invocation]:
    """Time an invocation and log its one line when it ends (an exception fails it)."""
    record = _Invocation({"function": function, "trigger": trigger, "id": invocation_id, **fields})
    started = time.perf_counter()
    try:
        yield record
    except BaseException as error:
        record.failed = error
        raise
    finally:
        record.fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        outcome = "failed" if record.failed is not None else "succeeded"
        record.fields.setdefault("outcome", outcome)
        if record.failed is not None:
            record.fields["error"] = f"{type(record.failed).__name__}: {record.failed}"
        level = logging.ERROR if record.fields["outcome"] == "failed" else logging.INFO
        failure = record.failed
        exc_info = (type(failure), failure, failure.__traceback__) if failure else None
        log.log(level, "invocation", extra={"fields": record.fields}, exc_info=exc_info)
