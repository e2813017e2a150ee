"""The commands that steer one instance: terminate, suspend, resume, rewind and restart.

``_app`` registers them. Each opens the store (``--store``, else
``default_store_url()``), asks ``DurableClient`` for one thing and says what
it asked, or prints one JSON document with ``--json``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._input import (
    CliSettings,
    IdArgument,
    JsonOption,
    ReasonOption,
    StoreOption,
    command_settings,
    open_client,
    require_state,
)
from ._output import emit_json, stdout_console

__all__ = ["restart", "resume", "rewind", "suspend", "terminate"]


def terminate(
    ctx: typer.Context,
    instance_id: IdArgument,
    reason: ReasonOption = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop an instance and the sub-orchestrations it waits on.

    The instance ends TERMINATED at its next episode; work already running
    finishes but its results are ignored. A finished instance is left as it is.
    """
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        state = require_state(client.get(instance_id), instance_id)
        requested = not state.status.is_terminal
        if requested:
            client.terminate(instance_id, reason)
    if settings.json:
        emit_json(
            {
                "instance_id": instance_id,
                "action": "terminate",
                "requested": requested,
                "status": state.status.value,
                "reason": reason,
            }
        )
    elif requested:
        stdout_console().print(f"terminating instance {instance_id}", markup=False)
    else:
        stdout_console().print(
            f"instance {instance_id} is already {state.status.value}; nothing to terminate",
            markup=False,
        )


_STEERING = {"suspend": "suspending", "resume": "resuming", "rewind": "rewinding"}


def _steer(action: str, instance_id: str, reason: str | None, settings: CliSettings) -> None:
    with open_client(settings.store) as client:
        if action == "suspend":
            client.suspend(instance_id, reason)
        elif action == "resume":
            client.resume(instance_id, reason)
        else:
            client.rewind(instance_id, reason)
    if settings.json:
        emit_json({"instance_id": instance_id, "action": action, "reason": reason})
    else:
        stdout_console().print(f"{_STEERING[action]} instance {instance_id}", markup=False)


def suspend(
    ctx: typer.Context,
    instance_id: IdArgument,
    reason: ReasonOption = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Pause an instance: it keeps its events but runs no code until resumed."""
    _steer("suspend", instance_id, reason, command_settings(ctx, store, json_output))


def resume(
    ctx: typer.Context,
    instance_id: IdArgument,
    reason: ReasonOption = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Resume a suspended instance."""
    _steer("resume", instance_id, reason, command_settings(ctx, store, json_output))


def rewind(
    ctx: typer.Context,
    instance_id: IdArgument,
    reason: ReasonOption = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run a FAILED instance on from where it failed, keeping its successful results.

    The failed activities and sub-orchestrations run again and the code goes
    on from there (after a deploy that fixed the cause, say). A worker does
    it at the instance's next episode.
    """
    _steer("rewind", instance_id, reason, command_settings(ctx, store, json_output))


def restart(
    ctx: typer.Context,
    instance_id: IdArgument,
    new_id: Annotated[
        bool,
        typer.Option(
            "--new-id", help="Start a copy under a new instance id (the old one is kept)."
        ),
    ] = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start a finished instance again from the beginning, with its input.

    Under its own id (its history is replaced), or with --new-id as a new
    instance, which also works while the old one runs.
    """
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        started = client.restart(instance_id, new_instance_id=new_id)
    if settings.json:
        emit_json({"instance_id": started, "restarted": instance_id})
    else:
        stdout_console().print(f"restarted {instance_id} as {started}", markup=False)
