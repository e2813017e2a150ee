"""How long an orchestration stands still after the app instance running it dies (host mode).

    python bench/host_recovery.py [--max-wait 700] [--only NAME,...] [--out FILE]

Starts a private Azurite and plays the Functions host over it with
``tests/support/host_faults.Host``, holding each received message for the
host's fixed 10 minutes (renewed while its function runs) and retrying a
failed one after host.json's 10 s. The app runs with its default settings (the
instance lease). Each scenario runs ``chain`` (three activities in a row) on
its own task hub and kills the app instance at one point of the second step;
the host then starts a fresh instance, as the platform would, and keeps the
dead instance's message hidden until its hold runs out, as the host does.

Also printed: the app's storage requests per activity step of a 20-step chain
under the host, without faults (``cost``; the host's receives and deletes
not counted).

Printed per scenario: seconds from the death until the instance's history
grows again (the orchestration moves; polled every 0.5 s, and the host polls
its queues every 0.5 s when idle, as host.json's 2 s maxPollingInterval allows),
and whether it completed. The
scenarios run side by side, so one run takes as long as the slowest
(``--max-wait`` at most).

- control-after-takeover: the control invocation took the instance over and
  dies before committing the episode;
- control-after-commit: it committed the episode and dies before sending the
  work item it scheduled;
- work-mid-activity: the work-item invocation dies while the activity runs;
- work-at-wake-up: it dies at the put of the instance's wake-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import dump, header  # noqa: E402

from durable_fx import AsyncDurableClient, OrchestrationContext, Orchestrator  # noqa: E402
from durable_fx.queues import open_queues  # noqa: E402
from durable_fx.storage.azure import AzureStore, open_azure_store  # noqa: E402
from tests.support.azurite import Azurite, AzuriteProcess, new_hub  # noqa: E402
from tests.support.host_faults import KILL_POINTS, Host, chain_instance  # noqa: E402


async def scenario(azurite: Azurite, name: str, max_wait: float) -> dict[str, Any]:
    url = azurite.connection_string(new_hub())
    first = chain_instance(url, KILL_POINTS[name])
    host = Host(
        [first],
        open_queues(first.app.runtime.store),
        hold=timedelta(minutes=10),
        retry_after=timedelta(seconds=10),
        restart=lambda: chain_instance(url),
        idle_wait=0.5,
    )
    monitor = open_azure_store(url)
    client = AsyncDurableClient(monitor)
    await client.start("chain", 0, instance_id="chain")
    length_at_death: int | None = None
    result: dict[str, Any] = {"died": None, "seconds_to_move": None, "completed": False}
    started = time.monotonic()

    async def moved() -> bool:
        nonlocal length_at_death
        state = await client.get("chain", history=True)
        length = len(state.history or []) if state is not None else 0
        killer = first.killer
        assert killer is not None
        if killer.dead and length_at_death is None:
            length_at_death = length
            result["died"] = killer.where
        if length_at_death is not None and length > length_at_death:
            result["seconds_to_move"] = round(time.monotonic() - killer.died_at, 1)
            return True
        return time.monotonic() - started > max_wait

    try:
        await host.run_until(moved, max_wait + 60, check_every=0.5)

        async def finished() -> bool:
            state = await client.get("chain")
            return state is not None and state.status.is_terminal

        if result["seconds_to_move"] is not None:
            await host.run_until(finished, 120, check_every=0.25)
            result["completed"] = True
    except AssertionError as error:
        result["error"] = str(error)
    finally:
        await host.close()
        await monitor.close()
    return result


async def cost(azurite: Azurite, steps: int = 20) -> dict[str, Any]:
    """The app's storage requests per activity step of a chain under the host (no faults).

    The host's own requests (receives, deletes) are not counted, nor the watching.
    """
    url = azurite.connection_string(new_hub())
    instance = chain_instance(url)
    store = instance.app.runtime.store
    assert isinstance(store, AzureStore)
    app = instance.app

    @app.orchestrator()
    def long_chain(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        for _ in range(steps):
            n = yield ctx.call_activity("step", n)
        return n

    host = Host([instance], open_queues(store))
    monitor = open_azure_store(url)
    client = AsyncDurableClient(monitor)

    async def run(instance_id: str) -> None:
        await client.start("long_chain", 0, instance_id=instance_id)

        async def finished() -> bool:
            state = await client.get(instance_id)
            return state is not None and state.status.is_terminal

        await host.run_until(finished, 120)

    try:
        await run("warm-up")
        before = store.requests.snapshot()
        await run("counted")
        after = store.requests.snapshot()
    finally:
        await host.close()
        await monitor.close()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    return {
        "steps": steps,
        "store_requests_per_step": round(sum(spent.values()) / steps, 2),
        "by_kind": spent,
    }


async def run(azurite: Azurite, names: list[str], max_wait: float) -> dict[str, Any]:
    outcomes = await asyncio.gather(*(scenario(azurite, n, max_wait) for n in names))
    results = dict(zip(names, outcomes, strict=True))
    results["cost"] = await cost(azurite)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(KILL_POINTS))
    parser.add_argument("--max-wait", type=float, default=700.0)
    parser.add_argument("--out")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for name in names:
        if name not in KILL_POINTS:
            raise SystemExit(f"unknown scenario {name!r}: {', '.join(KILL_POINTS)}")
    with tempfile.TemporaryDirectory(prefix="durable_fx-azurite-") as workdir:
        process = AzuriteProcess(Path(workdir))
        try:
            results = asyncio.run(run(process.azurite, names, args.max_wait))
        finally:
            process.stop()
    document = {
        **header("host mode: recovery after an app instance dies mid-invocation"),
        "host": {"hold_seconds": 600, "retry_after_seconds": 10},
        "target": "seconds_to_move < 60",
        "results": results,
    }
    print(dump(document, args.out))


if __name__ == "__main__":
    main()
