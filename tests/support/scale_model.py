"""The scale controllers' model of an app's queues: how many instances they would ask for.

Used by ``tests/test_flex_scale.py`` and ``bench/flex_scale.py``; the rules are
the ones ``../shared/reviews/functions-host.md`` (Q1) cites:

- Flex Consumption (the Storage Queues extension's ``QueueTargetScaler`` and
  ``QueueMetricsProvider``), per queue-trigger function, each scaled on its own:
  length = ``ApproximateMessagesCount`` (visible, delayed and in-flight
  messages alike), forced to 0 when a peek finds no visible message; target =
  ``ceil(length / (batchSize + newBatchThreshold))`` from host.json.
- KEDA's ``azure-queue`` scaler with ``queueLengthStrategy: visibleonly``
  (Container Apps, infra/modules/containerapp.bicep): the visible messages a
  peek of 32 sees, but ``ApproximateMessagesCount`` once 32 are visible;
  replicas per rule = ``ceil(length / queueLength)``, the app's replicas the
  largest rule (the HPA takes the maximum over metrics).

A queue is sampled with one Get Queue Properties and one Peek of up to 32
messages, the same two calls the scalers make.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azure.storage.queue import QueueServiceClient

from durable_fx.bindings import HostConfig

__all__ = [
    "KEDA_PEEK",
    "QueueSample",
    "ScaleRules",
    "model",
    "sample_queues",
    "trigger_queues",
]

KEDA_PEEK = 32
"""KEDA peeks at most this many messages; at this many it uses the approximate count."""

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One queue as a scale controller sees it."""

    queue: str
    approximate: int
    """``ApproximateMessagesCount``: every message, visible or not."""
    visible: int
    """Messages a peek of up to ``KEDA_PEEK`` returned (the visible ones)."""

    @property
    def host_length(self) -> int:
        """The Functions host's queue length: the full count, unless nothing is visible."""
        return self.approximate if self.visible else 0

    def host_target(self, concurrency: int) -> int:
        """Instances the Flex scale controller wants for this queue's function."""
        return math.ceil(self.host_length / concurrency)

    @property
    def keda_length(self) -> int:
        """KEDA's visible-only length, which falls back to the full count at 32 visible."""
        return self.approximate if self.visible >= KEDA_PEEK else self.visible

    def keda_target(self, queue_length: int) -> int:
        """Replicas KEDA's rule for this queue asks for."""
        return math.ceil(self.keda_length / queue_length)


@dataclass(frozen=True, slots=True)
class ScaleRules:
    """The numbers the scale controllers divide by, and the app's cap."""

    concurrency: int
    """host.json ``batchSize + newBatchThreshold``: messages per Flex instance."""
    keda_queue_length: int
    """The KEDA rules' ``queueLength`` (infra/modules/containerapp.bicep)."""
    max_instances: int
    """``maximumInstanceCount`` (infra/main.bicep): Flex instances or KEDA replicas at most."""

    @classmethod
    def of_repo(cls, root: Path = REPO) -> ScaleRules:
        """The rules this repository deploys: its host.json and the Bicep parameters' defaults."""
        queues = HostConfig.load(root).queues
        return cls(
            concurrency=queues.batch_size + queues.batch_threshold(),
            keda_queue_length=_bicep_default(
                root / "infra" / "modules" / "containerapp.bicep", "queueLength"
            ),
            max_instances=_bicep_default(root / "infra" / "main.bicep", "maximumInstanceCount"),
        )


def _bicep_default(path: Path, parameter: str) -> int:
    from tests.support.bicep import BicepFile

    value = BicepFile(path).scope()[parameter]
    if not isinstance(value, int):
        raise ValueError(f"{path}: parameter {parameter} has no integer default ({value!r})")
    return value


def trigger_queues(service: QueueServiceClient, hub: str, extra: Iterable[str] = ()) -> list[str]:
    """The queues an app's triggers listen on: each ``<hub>-*`` queue but poison ones, ``extra``.

    Found by the hub prefix rather than from the app's settings, so a queue a
    change adds (or forgets to trigger on) is counted too.
    """
    prefix = f"{hub}-"
    found = [
        q.name
        for q in service.list_queues(name_starts_with=prefix)
        if not q.name.endswith("-poison")
    ]
    return sorted({*found, *extra})


def sample_queues(service: QueueServiceClient, queues: Sequence[str]) -> list[QueueSample]:
    """Each queue's count and visible messages, as the scalers read them."""
    samples = []
    for name in queues:
        queue = service.get_queue_client(name)
        approximate = queue.get_queue_properties().approximate_message_count or 0
        visible = len(list(queue.peek_messages(max_messages=KEDA_PEEK))) if approximate else 0
        samples.append(QueueSample(name, approximate, visible))
    return samples


def model(samples: Sequence[QueueSample], rules: ScaleRules) -> dict[str, Any]:
    """The modelled targets of one sample of the queues (a JSON-ready dict).

    ``flex_instances``: the sum of the per-function targets (Flex scales each
    queue-trigger function on its own instances), capped at ``max_instances``
    as ``flex_instances_capped``. ``keda_replicas``: the largest rule, capped.
    """
    queues = {
        s.queue: {
            "approximate": s.approximate,
            "visible": s.visible,
            "host_target": s.host_target(rules.concurrency),
            "keda_target": s.keda_target(rules.keda_queue_length),
        }
        for s in samples
    }
    flex = sum(q["host_target"] for q in queues.values())
    keda = max((q["keda_target"] for q in queues.values()), default=0)
    return {
        "flex_instances": flex,
        "flex_instances_capped": min(flex, rules.max_instances),
        "flex_largest_function": max((q["host_target"] for q in queues.values()), default=0),
        "keda_replicas": min(keda, rules.max_instances),
        "messages": sum(s.approximate for s in samples),
        "visible": sum(s.visible for s in samples),
        "queues": queues,
    }
