"""``durable-fx sidecar``'s machinery: open the store, serve until a signal says stop."""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import timedelta

from .._cli_output import USAGE_ERROR, CliError, emit_json, redact_store_url
from .._cli_worker import run_until_signalled
from ..storage import default_store_url
from ._server import SidecarServer

__all__ = ["run_sidecar"]

log = logging.getLogger("durable_fx.cli")


def run_sidecar(
    store: str | None,
    *,
    host: str,
    port: int,
    lease: float,
    log_level: str,
    json_output: bool,
) -> None:
    """Serve the sidecar on ``host:port`` until SIGINT or SIGTERM, then stop gracefully."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise CliError(f"unknown log level {log_level!r}", exit_code=USAGE_ERROR)
    url = store or default_store_url()
    server = _open(url, host, port, lease)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("durable_fx").setLevel(level)
    log.info("sidecar on %s; stop with Ctrl-C", redact_store_url(url))
    try:
        stopped_by = asyncio.run(run_until_signalled(server))
    except OSError as error:
        raise CliError(
            f"cannot listen on {host}:{port} ({error}); is another process using the port?"
        ) from None
    log.info("sidecar stopped (%s)", stopped_by or "no signal")
    if json_output:
        emit_json(
            {
                "sidecar": server.address,
                "store": redact_store_url(url),
                "stopped_by": stopped_by,
            }
        )


def _open(url: str, host: str, port: int, lease: float) -> SidecarServer:
    try:
        return SidecarServer(url, host=host, port=port, lease=timedelta(seconds=lease))
    except ValueError as error:  # open_store's message lists the URLs it accepts
        raise CliError(
            f"{error}; pass --store URL or set DURABLE_FX_STORE", exit_code=USAGE_ERROR
        ) from None
    except Exception as error:
        raise CliError(
            f"cannot open the store {redact_store_url(url)}: {type(error).__name__}: {error}"
        ) from None
