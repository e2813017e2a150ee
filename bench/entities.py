"""Durable entities' benchmark: operations/s on one entity and over many, requests per operation.

    python bench/entities.py [--stores sqlite,azure] [--n 10000] [--entities 1000] [--out FILE]

For each store, two shapes: ``--n`` signals (``add 1``) to one counter
entity, and ``--n`` signals spread round-robin over ``--entities`` counters.
The signals are sent first, through the client, with no worker running
(timed: ``send``); then a worker starts and the time until every entity's
state holds all its operations is measured (``run``: the entities' own
throughput, which batching decides: one commit per batch, not per
operation). On Azure (a private Azurite, ``node_modules/.bin/azurite``) the
store's pipeline counts the storage requests of each part; completion is
watched through a second store object so the watching is not counted.

Target (issue 17): >= 5,000 operations/s on one entity on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import dump, header  # noqa: E402

from durable_fx import (  # noqa: E402
    AsyncDurableClient,
    EntityContext,
    EntityId,
    Registry,
    Store,
    Worker,
    open_store,
)
from tests.support.azurite import AzuriteProcess, new_hub  # noqa: E402

TARGETS = {"sqlite/one": [("run_ops_per_s", ">=", 5000)]}

registry = Registry()


@registry.entity()
def counter(ctx: EntityContext, amount: int = 1) -> int:
    total = ctx.get_state(int, 0) + amount
    ctx.set_state(total)
    return total


def run_shape(
    open_one: Callable[[], Store], n: int, entities: int, *, concurrency: int
) -> dict[str, Any]:
    """Send ``n`` adds over ``entities`` counters, then time a worker applying them."""
    sender, worker_store, observer = open_one(), open_one(), open_one()
    targets = [EntityId("counter", f"c{i:05d}") for i in range(entities)]
    try:
        t0 = time.perf_counter()
        sent_requests = asyncio.run(_send(sender, targets, n, concurrency))
        send_s = time.perf_counter() - t0
        before = _requests(worker_store)
        t1 = time.perf_counter()
        with Worker(registry, worker_store, max_poll_interval=0.05):
            asyncio.run(_wait_applied(observer, targets, n))
            run_s = time.perf_counter() - t1
            used = _requests(worker_store) - before if before is not None else None
        figures: dict[str, Any] = {
            "operations": n,
            "entities": entities,
            "send_s": round(send_s, 2),
            "send_ops_per_s": round(n / send_s, 1),
            "run_s": round(run_s, 3),
            "run_ops_per_s": round(n / run_s, 1),
        }
        if used is not None and sent_requests is not None:
            figures |= {
                "send_requests_per_op": round(sent_requests / n, 2),
                "run_requests_per_op": round(used / n, 3),
            }
        return figures
    finally:
        for store in (sender, worker_store, observer):
            asyncio.run(store.close())


async def _send(store: Store, targets: list[EntityId], n: int, concurrency: int) -> int | None:
    client = AsyncDurableClient(store)
    before = _requests(store)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.signal_entity(targets[i % len(targets)], "add", 1)

    await asyncio.gather(*(one(i) for i in range(n)))
    after = _requests(store)
    return None if before is None or after is None else after - before


async def _wait_applied(store: Store, targets: list[EntityId], n: int) -> None:
    """Until each counter holds its share of the ``n`` adds (one read per check)."""
    client = AsyncDurableClient(store)
    shares = {
        t: n // len(targets) + (1 if i < n % len(targets) else 0) for i, t in enumerate(targets)
    }
    for target, share in shares.items():
        while True:
            found = await client.get_entity(target, int)
            if found is not None and found.state == share:
                break
            await asyncio.sleep(0.01)


def _requests(store: Store) -> int | None:
    counter = getattr(store, "requests", None)
    return None if counter is None else int(counter.total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,azure")
    parser.add_argument("--n", type=int, default=10_000, help="operations per shape")
    parser.add_argument("--entities", type=int, default=1000, help="entities of the spread shape")
    parser.add_argument("--concurrency", type=int, default=32, help="signals in flight")
    parser.add_argument("--out")
    args = parser.parse_args()
    document = header("entities")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="durable_fx-entities-") as workdir:
        for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
            for shape, entities in (("one", 1), ("spread", args.entities)):
                print(f"running {kind}/{shape} ...", file=sys.stderr, flush=True)
                results[f"{kind}/{shape}"] = _run_on(kind, Path(workdir), args, entities)
    document["results"] = results
    document["targets"] = _verdicts(results)
    print(dump(document, args.out))


def _run_on(kind: str, workdir: Path, args: Any, entities: int) -> dict[str, Any]:
    if kind == "sqlite":
        url = f"sqlite:///{workdir / new_hub()}.db"
        return run_shape(lambda: open_store(url), args.n, entities, concurrency=args.concurrency)
    if kind == "azure":
        azurite = AzuriteProcess(workdir / new_hub())
        try:
            url = azurite.azurite.connection_string(new_hub())
            return run_shape(
                lambda: open_store(url), args.n, entities, concurrency=args.concurrency
            )
        finally:
            azurite.stop()
    raise SystemExit(f"unknown store {kind!r}: sqlite or azure")


def _verdicts(results: dict[str, Any]) -> dict[str, Any]:
    verdicts = {}
    for name, checks in TARGETS.items():
        for key, op, bound in checks:
            value = results.get(name, {}).get(key)
            if value is not None:
                met = value >= bound if op == ">=" else value <= bound
                verdicts[f"{name} {key} {op} {bound}"] = {"value": value, "met": met}
    return verdicts


if __name__ == "__main__":
    main()
