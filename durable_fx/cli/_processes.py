"""The commands that run a process until a signal stops it: worker, sidecar and serve.

``_app`` registers them; the machinery they share (finding the registry,
running until SIGTERM or Ctrl-C) is in ``_run``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from ..storage import default_store_url
from ._input import (
    JsonOption,
    StoreOption,
    command_settings,
    open_worker,
)
from ._output import (
    USAGE_ERROR,
    CliError,
    emit_json,
    redact_store_url,
)
from ._run import load_registry, run_until_signalled

__all__ = ["serve", "sidecar", "worker"]

log = logging.getLogger("durable_fx.cli")


def worker(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="Where the Registry is, e.g. myapp.workflows:registry (or an app object "
            "with a .registry attribute).",
        ),
    ],
    max_episodes: Annotated[
        int, typer.Option("--max-episodes", min=1, help="Orchestration episodes run at once.")
    ] = 32,
    max_activities: Annotated[
        int, typer.Option("--max-activities", min=1, help="Activities run at once.")
    ] = 64,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            metavar="SECONDS",
            min=0,
            help="On stop, how long in-flight work may finish before it is released.",
        ),
    ] = 10.0,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run the orchestrators and activities of a registry until stopped.

    MODULE is imported from the current directory or PYTHONPATH. Ctrl-C or
    SIGTERM stops the worker gracefully: it takes no new work, lets work in
    flight finish (up to --shutdown-grace seconds), releases the rest for other
    workers, and exits 0. A second Ctrl-C quits at once. With --json, one
    summary document is printed when the worker stops.
    """
    settings = command_settings(ctx, store, json_output)
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="'--log-level'")
    registry = load_registry(target)
    runner = open_worker(
        settings.store,
        registry,
        max_concurrent_episodes=max_episodes,
        max_concurrent_activities=max_activities,
        shutdown_grace=shutdown_grace,
    )
    url = settings.store or default_store_url()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("durable_fx").setLevel(level)
    log.info(
        "worker for %s on %s: orchestrators %s; activities %s. Stop with Ctrl-C.",
        target,
        redact_store_url(url),
        ", ".join(registry.orchestrator_names) or "none",
        ", ".join(registry.activity_names) or "none",
    )
    stopped_by = asyncio.run(run_until_signalled(runner))
    log.info("worker stopped (%s)", stopped_by or "no signal")
    if settings.json:
        emit_json(
            {
                "worker": target,
                "store": redact_store_url(url),
                "orchestrators": registry.orchestrator_names,
                "activities": registry.activity_names,
                "stopped_by": stopped_by,
            }
        )


def sidecar(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 4001,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            metavar="SECONDS",
            min=1,
            help="How long handed-out work stays "
            "locked; a crashed sidecar's work is taken over after it.",
        ),
    ] = 120.0,
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    auth_token: Annotated[
        str | None,
        typer.Option(
            "--auth-token",
            envvar="DURABLE_FX_SIDECAR_TOKEN",
            show_envvar=True,
            show_default=False,
            metavar="TOKEN",
            help="Require 'authorization: Bearer TOKEN' metadata on every call. Prefer the "
            "environment variable: an option is visible to every user in ps.",
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option("--tls-cert", metavar="PEM", help="Certificate chain: serve TLS only."),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option("--tls-key", metavar="PEM", help="The certificate's unencrypted key."),
    ] = None,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            "--max-message-bytes",
            envvar="DURABLE_FX_SIDECAR_MAX_MESSAGE_BYTES",
            show_envvar=True,
            metavar="BYTES",
            help="Largest message taken and work item sent (gRPC's default, as the SDKs' "
            "workers use it); a worker's answer over it fails its own work item. Raise it "
            "with the workers' max_receive_message_length.",
        ),
    ] = 4 * 1024 * 1024,
    activity_timeout: Annotated[
        float | None,
        typer.Option(
            "--activity-timeout",
            envvar="DURABLE_FX_SIDECAR_ACTIVITY_TIMEOUT",
            show_envvar=True,
            metavar="SECONDS",
            min=0.001,
            help="Fail an activity a worker has held this long (ActivityTimeoutError: its "
            "orchestration moves on, a retry policy may try again); default: never.",
        ),
    ] = None,
    entity_work_items: Annotated[
        str,
        typer.Option(
            "--entity-work-items",
            envvar="DURABLE_FX_SIDECAR_ENTITY_WORK_ITEMS",
            show_envvar=True,
            metavar="SHAPE",
            help="How entity operations go to workers: batch (EntityBatchRequest, every SDK "
            "with entities) or operations (EntityRequest, the newer shape).",
        ),
    ] = "batch",
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Serve the Durable Task gRPC protocol so the official SDKs run on the store.

    Point an SDK's client and worker at HOST:PORT (Python: TaskHubGrpcClient and
    TaskHubGrpcWorker with host_address="127.0.0.1:4001"). Ctrl-C or SIGTERM stops
    it gracefully; work that workers still hold is released for the next start.
    Beyond loopback, set DURABLE_FX_SIDECAR_TOKEN and --tls-cert/--tls-key.
    """
    try:
        from ._sidecar import SidecarOptions, run_sidecar
    except ImportError as missing:
        raise CliError(str(missing), exit_code=USAGE_ERROR) from None
    settings = command_settings(ctx, store, json_output)
    if entity_work_items not in ("batch", "operations"):
        message = f"--entity-work-items: {entity_work_items!r} is not batch or operations"
        raise CliError(message, exit_code=USAGE_ERROR)
    options = SidecarOptions(
        host=host,
        port=port,
        lease=lease,
        auth_token=auth_token or None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_message_bytes=max_message_bytes,
        activity_timeout=activity_timeout,
        entity_work_items=entity_work_items,
    )
    run_sidecar(settings.store, options, log_level=log_level, json_output=settings.json)


def serve(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR", help="The Functions app, e.g. function_app:app (a DurableApp)."
        ),
    ],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")
    ] = 7071,
    log_format: Annotated[
        str, typer.Option("--log-format", metavar="FORMAT", help="text (key=value) or json.")
    ] = "text",
    log_level: Annotated[
        str, typer.Option("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR.")
    ] = "INFO",
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace", metavar="SECONDS", min=0, help="How long work in flight may finish."
        ),
    ] = 10.0,
    store: StoreOption = None,
) -> None:
    """Run a Functions app's HTTP and queue triggers outside Azure, like `func start`.

    Reads host.json and local.settings.json from the current directory. HTTP
    routes are served at http://HOST:PORT/<routePrefix>/...; FUNCTION-level
    routes need a key from DURABLE_FX_FUNCTION_KEYS. Without settings the store
    is the embedded SQLite file. SIGTERM or Ctrl-C stops it gracefully.
    """
    from ._serve import serve_command

    settings = command_settings(ctx, store, False)
    serve_command(
        target,
        store=settings.store,
        host=host,
        port=port,
        log_format=log_format,
        log_level=log_level,
        shutdown_grace=shutdown_grace,
    )


def dashboard(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")
    ] = 8233,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            envvar="DURABLE_FX_DASHBOARD_KEY",
            show_envvar=True,
            show_default=False,
            metavar="KEY",
            help="The key a browser signs in with (header x-dashboard-key for scripts). Prefer "
            "the environment variable: an option is visible to every user in ps.",
        ),
    ] = None,
    anonymous: Annotated[
        bool, typer.Option("--anonymous", help="No key at all: a trusted network only.")
    ] = False,
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only", envvar="DURABLE_FX_DASHBOARD_READ_ONLY", help="Show, never act."
        ),
    ] = False,
    store: StoreOption = None,
) -> None:
    """Serve the web dashboard: find instances, see their timelines, act on them."""
    from ._dashboard import DashboardOptions, run_dashboard

    settings = command_settings(ctx, store, False)
    options = DashboardOptions(host, port, key or None, anonymous, read_only)
    run_dashboard(settings.store, options)
