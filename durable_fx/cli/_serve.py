"""``durable-fx serve``'s machinery: check the extra is installed, run the host, map errors."""

from __future__ import annotations

import logging

from ._output import USAGE_ERROR, CliError

__all__ = ["serve_command"]

_FORMATS = ("text", "json")


def serve_command(
    target: str,
    *,
    store: str | None,
    host: str,
    port: int,
    log_format: str,
    log_level: str,
    shutdown_grace: float,
) -> str | None:
    """Run ``durable_fx.hosting.serve``; returns the signal that stopped it."""
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise CliError(f"unknown log level {log_level!r}", exit_code=USAGE_ERROR)
    if log_format not in _FORMATS:
        raise CliError(
            f"--log-format must be text or json, not {log_format!r}", exit_code=USAGE_ERROR
        )
    try:
        from ..hosting import ServeError, ServeOptions, serve
    except ImportError as error:
        raise CliError(
            "durable-fx serve needs the functions extra: pip install 'durable-fx[functions]' "
            f"({error})"
        ) from None
    options = ServeOptions(
        target=target,
        store=store,
        host=host,
        port=port,
        log_format="json" if log_format == "json" else "text",
        log_level=level,
        shutdown_grace=shutdown_grace,
    )
    try:
        return serve(options)
    except ServeError as error:
        raise CliError(str(error), exit_code=error.exit_code) from None
