"""What one span costs: the OpenTelemetry SDK alone, and each span durable_fx emits.

    python bench/span_cost.py [--n 20000] [--out FILE]

Each figure is CPU microseconds per call (``time.process_time``, the best of
three rounds of ``--n`` calls), with the SDK as ``configure_telemetry`` sets it
up for OTLP (a ``BatchSpanProcessor``) feeding an in-memory exporter that is
emptied between rounds. ``sdk_*`` is a bare ``start_span(...).end()`` with as
many attributes as durable_fx's span of that kind; the durable_fx figures are
the calls the worker and the client make, so their difference is durable_fx's
own share (contexts, attributes, making the span current). A W1 orchestration
emits one client span, one execution span, four episode spans and three
activity spans (``bench/run.py --tracing memory`` measures the whole).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from bench._report import dump, header  # noqa: E402
from durable_fx import _tracing  # noqa: E402
from durable_fx._history import ExecutionStarted, TraceContext  # noqa: E402

_PARENT = TraceContext(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")


def per_call(call: Callable[[], Any], n: int, exporter: InMemorySpanExporter) -> float:
    """CPU microseconds per call: the best of three rounds."""
    best = float("inf")
    for _ in range(3):
        exporter.clear()
        began = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - began) / n * 1e6)
    return round(best, 1)


def calls() -> dict[str, Callable[[], Any]]:
    now = datetime.now(UTC)
    started = ExecutionStarted(
        timestamp=now,
        name="three_steps",
        instance_id="bench-instance",
        execution_id="e" * 32,
        input="1",
        trace_context=_PARENT,
    )
    sdk = trace.get_tracer("bench")
    parent = _tracing.parent_of(_PARENT)

    def sdk_span(attributes: int) -> Callable[[], None]:
        values = {f"attribute.{i}": i for i in range(attributes)}
        return lambda: sdk.start_span("span", context=parent, attributes=values).end()

    def episode() -> None:
        _tracing.emit_span(
            "orchestration:three_steps episode",
            _tracing.execution_parent(started),
            start=now,
            end=now,
            attributes={
                "durabletask.type": "orchestration",
                "durabletask.task.instance_id": started.instance_id,
                "durable_fx.episode.messages": 1,
            },
        )

    def activity() -> None:
        attributes = {
            "durabletask.type": "activity",
            "durabletask.task.name": "step",
            "durabletask.task.instance_id": started.instance_id,
            "durabletask.task.task_id": 1,
            "durable_fx.activity.attempt": 1,
            "durable_fx.activity.delivery": 1,
        }
        span_kind = trace.SpanKind.SERVER
        with _tracing.span_in("activity:step", parent, kind=span_kind, attributes=attributes) as s:
            s.set_attribute("durabletask.task.result", "Succeeded")

    def start() -> None:
        attributes = {
            "durabletask.type": "orchestration",
            "durabletask.task.name": "three_steps",
            "durabletask.task.instance_id": started.instance_id,
        }
        kind = trace.SpanKind.PRODUCER
        with _tracing.span_in(
            "create_orchestration:three_steps", None, kind=kind, attributes=attributes
        ):
            _tracing.current_trace_context()

    return {
        "sdk_span_3_attributes": sdk_span(3),
        "sdk_span_7_attributes": sdk_span(7),
        "episode_span": episode,
        "activity_span": activity,
        "client_start_span": start,
        "execution_span": lambda: _tracing.emit_execution_span(
            started, status="COMPLETED", ended_at=now
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per round")
    parser.add_argument("--out")
    args = parser.parse_args()
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    figures = {name: per_call(call, args.n, exporter) for name, call in calls().items()}
    spans = (
        figures["client_start_span"]
        + figures["execution_span"]
        + 4 * figures["episode_span"]
        + 3 * figures["activity_span"]
    )
    figures["w1_orchestration_spans_us"] = round(spans, 1)
    document = {**header("durable_fx span cost (CPU us per call)"), "figures": figures}
    print(dump(document, args.out))


if __name__ == "__main__":
    main()
