"""How fast the dashboard's pages are on a large SQLite store (server time).

    python bench/dashboard.py [--instances 10000] [--events 5000] [--repeat 20] [--out FILE]

Starts ``--instances`` orchestrations on a fresh SQLite file (each waits for
an event), plus one run whose history has about ``--events`` events (a
fan-out of activities); a worker runs them all, then the bench
asks the dashboard's ASGI app in-process (httpx's ASGI transport: the time is
the server's, without a socket) for: the first page of the list, the list
filtered by name, by status (every instance's, and one none has) and by id
prefix, the counts per status, a page further on (its
continuation), and the long run's instance page (its timeline paged at 500
bars). Prints one JSON document with the median and p95 of each; nothing here
fails on a missed target (the issue's: under 200 ms for the list at 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402

from bench._report import dump, header  # noqa: E402
from durable_fx import (  # noqa: E402
    AsyncDurableClient,
    OrchestrationContext,
    Orchestrator,
    Registry,
    Worker,
    open_store,
    when_all,
)
from durable_fx.dashboard import create_dashboard  # noqa: E402

KEY = "bench-key"


def build_registry() -> Registry:
    registry = Registry()

    @registry.activity()
    def square(n: int) -> int:
        return n * n

    @registry.orchestrator()
    def fan_out(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        return sum((yield when_all([ctx.call_activity(square, i) for i in range(n)])))

    @registry.orchestrator()
    def email(ctx: OrchestrationContext, to: str) -> Orchestrator[None]:
        yield ctx.wait_for_event("Receipt")

    return registry


async def fill(client: AsyncDurableClient, instances: int) -> None:
    for start in range(0, instances, 500):
        batch = range(start, min(start + 500, instances))
        await asyncio.gather(
            *(
                client.start("email", f"u{n}@example.com", instance_id=f"email-{n:06d}")
                for n in batch
            )
        )


async def timed(http: httpx.AsyncClient, url: str, repeat: int) -> dict[str, Any]:
    times = []
    size = 0
    for _ in range(repeat):
        began = time.perf_counter()
        answer = await http.get(url)
        times.append((time.perf_counter() - began) * 1000)
        assert answer.status_code == 200, (url, answer.status_code)
        size = len(answer.content)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"median_ms": round(statistics.median(times), 2), "p95_ms": round(p95, 2), "bytes": size}


async def measure(args: Any, path: Path) -> dict[str, Any]:
    store = open_store(f"sqlite:///{path}")
    client = AsyncDurableClient(store)
    began = time.perf_counter()
    await fill(client, args.instances)
    filled_s = time.perf_counter() - began
    long_run = await client.start("fan_out", args.events // 2, instance_id="long-run")
    with Worker(build_registry(), store, max_poll_interval=0.05):
        await client.wait(long_run, timeout=600)
    state = await client.get(long_run, history=True)
    events = len(state.history or []) if state else 0
    app = create_dashboard(client, key=KEY)
    transport = httpx.ASGITransport(app=app)
    figures: dict[str, Any] = {"instances": args.instances, "start_s": round(filled_s, 1)}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://dashboard", headers={"x-dashboard-key": KEY}
    ) as http:
        first = await http.get("/instances")
        more = first.text.split('hx-get="')[-1].split('"')[0].replace("&amp;", "&")
        pages = {
            "list_first_page": "/instances",
            "list_by_name": "/instances?name=email",
            "list_by_status": "/instances?status=RUNNING",
            "list_by_rare_status": "/instances?status=FAILED",
            "counts_by_status": "/counts",
            "list_by_prefix": "/instances?prefix=email-0099",
            "list_next_page": more,
            "instance_page_long_history": "/instances/long-run",
        }
        for name, url in pages.items():
            figures[name] = await timed(http, url, args.repeat)
    figures["long_history_events"] = events
    await client.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="durable_fx-dashboard-") as workdir:
        figures = asyncio.run(measure(args, Path(workdir) / "app.db"))
    document = {
        **header("durable_fx dashboard pages (server time, in-process ASGI)"),
        "targets": {"list_first_page": "< 200 ms at 10,000 instances"},
        "results": figures,
    }
    print(dump(document, args.out))


if __name__ == "__main__":
    main()
