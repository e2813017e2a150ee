"""``durable-fx sidecar``'s machinery: open the store, serve until a signal says stop."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import timedelta

from ..sidecar._message_limit import DEFAULT_MAX_MESSAGE_BYTES, check_max_message_bytes
from ..sidecar._security import TlsFiles
from ..sidecar._server import SidecarServer
from ..storage import default_store_url
from ._output import USAGE_ERROR, CliError, emit_json, redact_store_url
from ._run import run_until_signalled

__all__ = ["SidecarOptions", "run_sidecar"]

log = logging.getLogger("durable_fx.cli")


@dataclass(frozen=True, slots=True)
class SidecarOptions:
    """The command line's settings for the server (see ``SidecarServer`` for each)."""

    host: str
    port: int
    lease: float
    auth_token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    activity_timeout: float | None = None
    entity_work_items: str = "batch"


def run_sidecar(
    store: str | None, options: SidecarOptions, *, log_level: str, json_output: bool
) -> None:
    """Serve the sidecar on ``host:port`` until SIGINT or SIGTERM, then stop gracefully."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise CliError(f"unknown log level {log_level!r}", exit_code=USAGE_ERROR)
    url = store or default_store_url()
    server = _open(url, options)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("durable_fx").setLevel(level)
    log.info("sidecar on %s; stop with Ctrl-C", redact_store_url(url))
    try:
        stopped_by = asyncio.run(run_until_signalled(server))
    except OSError as error:
        raise CliError(
            f"cannot listen on {options.host}:{options.port} ({error}); "
            "is another process using the port?"
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


def _open(url: str, options: SidecarOptions) -> SidecarServer:
    _check(options)
    try:
        return SidecarServer(
            url,
            host=options.host,
            port=options.port,
            lease=timedelta(seconds=options.lease),
            auth_token=options.auth_token,
            tls_cert=options.tls_cert,
            tls_key=options.tls_key,
            max_message_bytes=options.max_message_bytes,
            activity_timeout=(
                None
                if options.activity_timeout is None
                else timedelta(seconds=options.activity_timeout)
            ),
            entity_work_items=options.entity_work_items,  # type: ignore[arg-type]
        )
    except ValueError as error:  # open_store's message lists the URLs it accepts
        raise CliError(
            f"{error}; pass --store URL or set DURABLE_FX_STORE", exit_code=USAGE_ERROR
        ) from None
    except Exception as error:
        raise CliError(
            f"cannot open the store {redact_store_url(url)}: {type(error).__name__}: {error}"
        ) from None


def _check(options: SidecarOptions) -> None:
    """Refuse bad server settings here: ``_open``'s ValueErrors are about the store URL."""
    try:
        if (options.tls_cert is None) != (options.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: pass both or neither")
        if options.tls_cert is not None and options.tls_key is not None:
            TlsFiles.load(options.tls_cert, options.tls_key)
        check_max_message_bytes(options.max_message_bytes)
    except ValueError as error:
        raise CliError(
            str(error).replace("max_message_bytes", "--max-message-bytes"), exit_code=USAGE_ERROR
        ) from None
