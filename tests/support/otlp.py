"""An OTLP/HTTP trace receiver on loopback: what a collector would get, decoded.

Serves ``POST /v1/traces`` with protobuf ``ExportTraceServiceRequest`` bodies
(gzip or not), as the SDK's OTLP/HTTP exporter sends them, and keeps every
span it receives. Point a process at it with
``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.loopback import QuietHandler, serving


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the collector saw it (ids as hex, attributes as plain values)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    service: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int
    start_ns: int
    end_ns: int


@dataclass
class OtlpReceiver:
    """The spans received so far; ``endpoint`` is the base URL to export to."""

    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                found += [_received(span, service) for span in scope_spans.spans]
        with self._lock:
            self.requests += 1
            self.spans.extend(found)

    def named(self, name: str) -> list[ReceivedSpan]:
        with self._lock:
            return [s for s in self.spans if s.name == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 20.0) -> list[ReceivedSpan]:
        """The spans called ``name``, once at least ``count`` have arrived."""
        deadline = time.monotonic() + timeout
        while len(found := self.named(name)) < count:
            if time.monotonic() > deadline:
                with self._lock:
                    names = sorted({s.name for s in self.spans})
                raise AssertionError(f"{len(found)} of {count} {name!r} spans; got: {names}")
            time.sleep(0.05)
        return found


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve a receiver on a free loopback port for the block."""
    receiver = OtlpReceiver()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.body()
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            receiver.add(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    with serving(Handler) as receiver.endpoint:
        yield receiver


def _received(span: Span, service: str) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=Span.SpanKind.Name(span.kind),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        service=service,
        attributes=_attributes(span.attributes),
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        status_code=span.status.code,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
    )


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None
