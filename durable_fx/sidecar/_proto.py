"""The Durable Task protobuf, as the ``durabletask`` package ships it, and small helpers.

The generated modules come from the official Python SDK (``durabletask``), so
the sidecar speaks exactly the protocol its workers and clients were built
against. Importing this module without the ``sidecar`` extra fails with the
install hint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

try:
    import grpc
    from durabletask.internal import orchestrator_service_pb2 as pb
    from durabletask.internal import orchestrator_service_pb2_grpc as pb_grpc
    from google.protobuf import empty_pb2, timestamp_pb2, wrappers_pb2
    from google.protobuf.message import Message
except ImportError as missing:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"the durable_fx gRPC sidecar needs grpcio, protobuf and durabletask ({missing}); "
        "install them with: pip install 'durable-fx[sidecar]'"
    ) from missing

__all__ = [
    "Message",
    "empty_pb2",
    "from_timestamp",
    "grpc",
    "optional_moment",
    "optional_text",
    "page_size",
    "pb",
    "pb_grpc",
    "text_value",
    "timestamp",
    "wrappers_pb2",
]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DEFAULT_PAGE = 100
_MAX_PAGE = 1000


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for an aware (or naive UTC) datetime."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Integer arithmetic on the timedelta: exact, and far cheaper than FromDatetime,
    # which runs for every event of every request.
    since = moment - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def from_timestamp(value: timestamp_pb2.Timestamp) -> datetime:
    """An aware UTC datetime from a protobuf Timestamp (to the microsecond)."""
    return _EPOCH + timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def text_value(text: str | None) -> wrappers_pb2.StringValue | None:
    """A StringValue for ``text``; ``None`` leaves the field unset (JSON payloads are never "")."""
    return None if text is None else wrappers_pb2.StringValue(value=text)


def optional_text(message: Message, field: str) -> str | None:
    """The value of a StringValue field of ``message``; ``None`` when unset or empty.

    Payloads are JSON, and ``""`` is no JSON value: the SDKs send it for "nothing".
    """
    if not message.HasField(field):
        return None
    value: str = getattr(message, field).value
    return value or None


def optional_moment(message: Message, field: str) -> datetime | None:
    """The value of a Timestamp field of ``message``; ``None`` when unset."""
    return from_timestamp(getattr(message, field)) if message.HasField(field) else None


def page_size(requested: int) -> int:
    """The page size of a query: as asked, up to 1,000; 100 when not asked."""
    return min(requested, _MAX_PAGE) if requested > 0 else _DEFAULT_PAGE
