"""The ``durable-fx`` command line: manage orchestration instances and run workers.

Each command opens the store (``--store``, else ``default_store_url()``),
does one thing through ``DurableClient`` and prints a table, or one JSON
document with ``--json``. Every failure is one ``error:`` line on stderr with
exit code 1 (the operation failed) or 2 (the command line is wrong).

The instance commands are in ``_instances``, those that run a process
(worker, sidecar, serve) in ``_processes``, ``durable-fx poison`` in ``_poison``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._entities import entity_app
from ._input import CliSettings, JsonOption, StoreOption
from ._instances import (
    history,
    list_instances,
    purge,
    raise_event,
    start,
    status,
    wait,
)
from ._output import OneLineErrorsGroup
from ._poison import poison_app
from ._processes import dashboard, serve, sidecar, worker
from ._replay import replay
from ._schedules import schedule_app
from ._steering import restart, resume, rewind, suspend, terminate

__all__ = ["app", "main"]


app = typer.Typer(
    name="durable-fx",
    cls=OneLineErrorsGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Start, inspect and steer durable_fx orchestrations, and run workers.",
)
app.add_typer(poison_app, name="poison")
app.add_typer(entity_app, name="entity")
app.add_typer(schedule_app, name="schedule")


# -- shared options -----------------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"durable-fx {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    store: StoreOption = None,
    json_output: JsonOption = False,
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_version, help="Show the version."),
    ] = False,
) -> None:
    """Start, inspect and steer durable_fx orchestrations, and run workers.

    --store and --json go before the command or after it.
    """
    ctx.obj = CliSettings(store, json_output)


# -- the commands, in the order --help lists them ---------------------------------------------

app.command()(start)
app.command()(status)
app.command("list")(list_instances)
app.command()(history)
app.command("raise")(raise_event)
app.command()(terminate)
app.command()(suspend)
app.command()(resume)
app.command()(rewind)
app.command()(restart)
app.command()(purge)
app.command()(wait)
app.command()(replay)
app.command()(worker)
app.command()(sidecar)
app.command()(serve)
app.command()(dashboard)


def main() -> None:
    """The ``durable-fx`` console script."""
    app(prog_name="durable-fx")


if __name__ == "__main__":
    main()
