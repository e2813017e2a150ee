"""Small orchestrations the Azure store tests run: three steps, a fan-out, large payloads."""

from __future__ import annotations

from typing import Any

from durable_fx import (
    OrchestrationContext,
    Registry,
    when_all,
)

registry = Registry()


@registry.activity()
def echo_size(text: str) -> str:
    return text + "!" * 3


@registry.orchestrator()
def big_payload(ctx: OrchestrationContext, text: str) -> Any:
    out = yield ctx.call_activity(echo_size, text)
    return out + "?"


@registry.activity()
def one(n: int) -> int:
    return n + 1


@registry.orchestrator()
def fan_out(ctx: OrchestrationContext, n: int) -> Any:
    results = yield when_all([ctx.call_activity(one, i) for i in range(n)])
    return sum(results)


@registry.orchestrator()
def three_steps(ctx: OrchestrationContext, x: int) -> Any:
    for _ in range(3):
        x = yield ctx.call_activity(one, x)
    return x


@registry.orchestrator()
def large_output(ctx: OrchestrationContext, size: int) -> Any:
    yield ctx.call_activity(one, 0)
    return "x" * size
