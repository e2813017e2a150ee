"""``durable-fx schedule``: create, list, describe and steer durable schedules.

A schedule starts an orchestration at each occurrence of a cron expression
(six fields with seconds, as the Functions host reads them, or five) or of
an interval; a worker running on the store runs it (``durable-fx worker``,
``serve``). Every change is applied by that worker, in the order sent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, cast

import typer
from rich import box
from rich.table import Table

from .._schedule_spec import Overlap
from ..client import ScheduleDescription
from ..client._schedules import description_json
from ._input import JsonOption, StoreOption, command_settings, open_client, parse_json, parse_time
from ._output import OPERATION_ERROR, CliError, emit_json, format_time, stdout_console

__all__ = ["schedule_app"]

schedule_app = typer.Typer(
    name="schedule",
    no_args_is_help=True,
    help="Create, list, describe and steer durable schedules.",
)

IdArgument = Annotated[str, typer.Argument(metavar="ID", help="The schedule's id.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_OVERLAPS = ("skip", "buffer_one", "allow_all")


def parse_duration(text: str | None, option: str) -> timedelta | None:
    """``90``, ``90s``, ``5m``, ``2h`` or ``1d`` as a timedelta; ``CliError`` naming ``option``."""
    if text is None:
        return None
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise CliError(f"{option}: {text!r} is not a duration (90, 90s, 5m, 2h, 1d)") from None
    return timedelta(seconds=seconds)


def _rule(description: ScheduleDescription) -> str:
    spec = description.spec
    return f"cron {spec.cron}" if spec.cron else f"every {spec.every}"


@schedule_app.command()
def create(
    ctx: typer.Context,
    schedule_id: IdArgument,
    orchestration: Annotated[
        str, typer.Argument(metavar="ORCHESTRATION", help="The orchestration each run starts.")
    ],
    input: Annotated[
        str | None,
        typer.Option(
            "--input", metavar="JSON", help="The orchestration's input; @FILE reads a file."
        ),
    ] = None,
    cron: Annotated[
        str | None,
        typer.Option("--cron", metavar="EXPR", help='When to run: "0 */5 * * * *" (UTC).'),
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", metavar="DURATION", help="Or how often: 90s, 5m, 1h.")
    ] = None,
    start_at: Annotated[
        str | None, typer.Option("--start-at", metavar="TIME", help="No run before (ISO 8601).")
    ] = None,
    end_at: Annotated[
        str | None, typer.Option("--end-at", metavar="TIME", help="No run after (ISO 8601).")
    ] = None,
    jitter: Annotated[
        str | None, typer.Option("--jitter", metavar="DURATION", help="Delay each run up to this.")
    ] = None,
    overlap: Annotated[
        str,
        typer.Option(
            "--overlap", metavar="POLICY", help="While a run goes on: skip, buffer_one, allow_all."
        ),
    ] = "skip",
    catch_up_window: Annotated[
        str,
        typer.Option(
            "--catch-up-window", metavar="DURATION", help="How late a run may still start."
        ),
    ] = "60s",
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run ORCHESTRATION at every occurrence of --cron or --every."""
    settings = command_settings(ctx, store, json_output)
    if overlap not in _OVERLAPS:
        raise CliError(f"--overlap: {overlap!r} is not one of {', '.join(_OVERLAPS)}")
    when: dict[str, Any] = {
        "cron": cron,
        "every": parse_duration(every, "--every"),
        "start_at": parse_time(start_at, "--start-at"),
        "end_at": parse_time(end_at, "--end-at"),
        "jitter": parse_duration(jitter, "--jitter") or timedelta(0),
        "overlap": cast(Overlap, overlap),
        "catch_up_window": parse_duration(catch_up_window, "--catch-up-window"),
    }
    payload = parse_json(input, "--input")
    with open_client(settings.store) as client:
        try:
            client.create_schedule(schedule_id, orchestration, payload, **when)
        except ValueError as error:
            raise CliError(_one_line(error)) from None
    if settings.json:
        emit_json({"id": schedule_id, "created": True})
    else:
        stdout_console().print(f"created schedule {schedule_id}", markup=False)


@schedule_app.command("list")
def list_schedules(
    ctx: typer.Context,
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="TEXT", help="Only ids that start so.")
    ] = "",
    orchestration: Annotated[
        str | None,
        typer.Option("--orchestration", metavar="NAME", help="Only those that run NAME."),
    ] = None,
    paused: Annotated[
        bool | None,
        typer.Option("--paused/--active", help="Only paused ones, or only active ones."),
    ] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """List schedules with their next run (all, or those the options pick)."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        found = client.list_schedules(id_prefix=prefix, orchestration=orchestration, paused=paused)
    if settings.json:
        emit_json({"items": [description_json(d) for d in found]})
        return
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    for column in ("id", "orchestration", "rule", "next run", "last outcome"):
        table.add_column(column, overflow="fold")
    for description in found:
        last = description.recent_runs[-1].outcome if description.recent_runs else ""
        upcoming = "paused" if description.paused else format_time(_first(description))
        table.add_row(
            description.schedule_id, description.orchestration, _rule(description), upcoming, last
        )
    stdout_console().print(table)


@schedule_app.command()
def describe(
    ctx: typer.Context,
    schedule_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a schedule: its rule, next runs and recent runs (exit 1 if it does not exist)."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        description = client.get_schedule_handle(schedule_id).describe()
    if description is None:
        raise CliError(f"schedule {schedule_id!r} does not exist", exit_code=OPERATION_ERROR)
    if settings.json:
        emit_json(description_json(description))
        return
    console = stdout_console()
    state = "paused" if description.paused else "active"
    console.print(
        f"{schedule_id}: {description.orchestration}, {_rule(description)}, {state}", markup=False
    )
    for moment in description.next_runs:
        console.print(f"  next  {format_time(moment)}", markup=False)
    for run in description.recent_runs:
        line = f"  ran   {format_time(run.scheduled_at)}  {run.outcome}  {run.instance_id or ''}"
        console.print(line.rstrip(), markup=False)


def _steer(
    ctx: typer.Context, schedule_id: str, store: str | None, json_output: bool, action: str
) -> None:
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        handle = client.get_schedule_handle(schedule_id)
        if handle.describe() is None:
            raise CliError(f"schedule {schedule_id!r} does not exist", exit_code=OPERATION_ERROR)
        getattr(handle, action)()
    if settings.json:
        emit_json({"id": schedule_id, "sent": action})
    else:
        stdout_console().print(f"sent {action} to schedule {schedule_id}", markup=False)


@schedule_app.command()
def pause(
    ctx: typer.Context,
    schedule_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop starting runs until resumed."""
    _steer(ctx, schedule_id, store, json_output, "pause")


@schedule_app.command()
def resume(
    ctx: typer.Context,
    schedule_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start runs again from the next occurrence."""
    _steer(ctx, schedule_id, store, json_output, "resume")


@schedule_app.command()
def trigger(
    ctx: typer.Context,
    schedule_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run the orchestration once now, outside the schedule."""
    _steer(ctx, schedule_id, store, json_output, "trigger_now")


@schedule_app.command()
def delete(
    ctx: typer.Context,
    schedule_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove the schedule (runs going on go on)."""
    _steer(ctx, schedule_id, store, json_output, "delete")


def _first(description: ScheduleDescription) -> Any:
    return description.next_runs[0] if description.next_runs else None


def _one_line(error: Exception) -> str:
    """A pydantic error's first problem, or the error's message, on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next(
        (line for line in lines if line.startswith("Value error,")), lines[-1] if lines else ""
    )
    return detail.removeprefix("Value error, ").split(" [type=")[0]
