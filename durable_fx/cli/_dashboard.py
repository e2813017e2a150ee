"""``durable-fx dashboard``: the web dashboard on a store, served by uvicorn."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from ..client._async import AsyncDurableClient
from ..storage import default_store_url, open_store
from ._output import USAGE_ERROR, CliError, redact_store_url

__all__ = ["DashboardOptions", "run_dashboard"]

log = logging.getLogger("durable_fx.cli")


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    host: str
    port: int
    key: str | None
    anonymous: bool = False
    read_only: bool = False


def run_dashboard(store: str | None, options: DashboardOptions) -> None:
    """Serve the dashboard on ``host:port`` until SIGINT or SIGTERM."""
    try:
        import uvicorn

        from ..dashboard import create_dashboard
    except ImportError as missing:
        raise CliError(
            f"the dashboard needs the dashboard extra: pip install 'durable-fx[dashboard]' "
            f"({missing})",
            exit_code=USAGE_ERROR,
        ) from None
    if not options.key and not options.anonymous:
        raise CliError(
            "set DURABLE_FX_DASHBOARD_KEY (or --key): the dashboard is never open to anyone "
            "by default (--anonymous, on a trusted network only)",
            exit_code=USAGE_ERROR,
        )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    url = store or default_store_url()

    async def serve() -> None:
        client = AsyncDurableClient(open_store(url))
        try:
            app = create_dashboard(
                client, key=options.key, read_only=options.read_only, anonymous=options.anonymous
            )
            config = uvicorn.Config(
                app, host=options.host, port=options.port, log_level="warning", lifespan="off"
            )
            log.info(
                "dashboard for %s on http://%s:%d/instances",
                redact_store_url(url),
                options.host,
                options.port,
            )
            await uvicorn.Server(config).serve()
        finally:
            await client.close()

    try:
        asyncio.run(serve())
    except OSError as error:
        raise CliError(f"cannot listen on {options.host}:{options.port} ({error})") from None
