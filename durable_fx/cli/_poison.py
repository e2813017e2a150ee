"""``durable-fx poison``: list, requeue and delete messages that kept failing.

A message (an instance's inbox message or an activity work item) that fails
``max_dequeue_count`` times leaves circulation with its reason. These
commands show them, put them back once the cause is fixed, or drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..client._sync import DurableClient
from ..storage import PoisonedMessage
from ._input import CliSettings, JsonOption, StoreOption, command_settings, open_client
from ._output import USAGE_ERROR, CliError, emit_json, format_time, stdout_console

__all__ = ["poison_app", "poisoned_json", "poisoned_table"]

poison_app = typer.Typer(
    name="poison",
    no_args_is_help=True,
    help="List, requeue and delete messages taken out of circulation after failing too often.",
)

IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[ID]...",
        help="Poison ids, as 'durable-fx poison list' shows them.",
        show_default=False,
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every poisoned message.")]
InstanceOption = Annotated[
    str | None,
    typer.Option("--instance", metavar="ID", help="Only this instance's poisoned messages."),
]


def poisoned_json(message: PoisonedMessage) -> dict[str, Any]:
    """A poisoned message as JSON data, body and all."""
    return {
        "poison_id": message.poison_id,
        "queue": message.queue,
        "instance_id": message.instance_id,
        "reason": message.reason,
        "dequeue_count": message.dequeue_count,
        "poisoned_at": message.poisoned_at.isoformat(),
        "body": message.body,
        "extra": message.extra,
    }


def poisoned_table(messages: Sequence[PoisonedMessage]) -> Table:
    """Poisoned messages as rows: id, queue, instance, reason, delivery count, when."""
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    # Ids are copied into the next command, so they never wrap.
    table.add_column("id", no_wrap=True)
    table.add_column("queue", no_wrap=True)
    table.add_column("instance", overflow="fold")
    table.add_column("reason", overflow="fold", ratio=1)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("when", min_width=10)
    for message in messages:
        table.add_row(
            Text(message.poison_id),
            Text(message.queue),
            Text(message.instance_id or "", style="" if message.instance_id else "dim"),
            Text(" ".join(message.reason.split()), style="red"),
            str(message.dequeue_count),
            format_time(message.poisoned_at),
        )
    return table


@poison_app.command("list")
def list_poisoned(
    ctx: typer.Context,
    instance_id: InstanceOption = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """List poisoned messages, oldest first, with why they were taken out."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        messages = client.poisoned(instance_id=instance_id)
    if settings.json:
        emit_json({"items": [poisoned_json(m) for m in messages]})
        return
    console = stdout_console()
    console.print(poisoned_table(messages))
    console.print(f"{_count(len(messages))}", style="dim", markup=False)


@poison_app.command()
def requeue(
    ctx: typer.Context,
    poison_ids: IdsArgument = None,
    everything: AllOption = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Put poisoned messages back to run again, as they were (fix the cause first).

    Each goes back with its delivery count reset, so its instance makes
    progress again. One whose instance was purged stays poisoned.
    """
    settings = command_settings(ctx, store, json_output)
    _apply(settings, poison_ids, everything, "requeue", DurableClient.requeue_poisoned)


@poison_app.command()
def delete(
    ctx: typer.Context,
    poison_ids: IdsArgument = None,
    everything: AllOption = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete poisoned messages for good: they will never run."""
    settings = command_settings(ctx, store, json_output)
    _apply(settings, poison_ids, everything, "delete", DurableClient.delete_poisoned)


def _apply(
    settings: CliSettings,
    poison_ids: list[str] | None,
    everything: bool,
    verb: str,
    action: Callable[[DurableClient, list[str]], int],
) -> None:
    """Run ``action`` on the named poisoned messages (or all of them) and report the count."""
    ids = _chosen(poison_ids, everything, verb)
    with open_client(settings.store) as client:
        ids = _all_ids(client) if everything else ids
        affected = action(client, ids)
    _report(f"{verb}d", affected, ids, everything, settings.json)


def _chosen(poison_ids: list[str] | None, everything: bool, verb: str) -> list[str]:
    """The ids named on the command line; exactly one of ids and --all is allowed."""
    if poison_ids and everything:
        raise typer.BadParameter("give poison ids or --all, not both", param_hint="'--all'")
    if not poison_ids and not everything:
        raise CliError(
            f"name the poisoned messages to {verb} (see 'durable-fx poison list'), or pass --all",
            exit_code=USAGE_ERROR,
        )
    return list(poison_ids or [])


def _all_ids(client: DurableClient) -> list[str]:
    return [message.poison_id for message in client.poisoned()]


def _report(verb: str, affected: int, ids: list[str], everything: bool, as_json: bool) -> None:
    if affected == 0 and ids and not everything:
        # Most likely a mistyped id: say so rather than report a quiet zero.
        raise CliError(
            f"nothing {verb}: no poisoned message left with id {', '.join(ids)}"
            + (" whose instance still exists" if verb == "requeued" else "")
            + "; see 'durable-fx poison list'"
        )
    if as_json:
        emit_json({verb: affected, "asked": len(ids)})
        return
    # Fewer than asked: an id was wrong or already handled, or (requeue) its
    # instance was purged; the list shows what is left.
    short = "" if everything or affected == len(ids) else f" (of {len(ids)} asked)"
    stdout_console().print(f"{verb} {_count(affected)}{short}", markup=False)


def _count(n: int) -> str:
    return f"{n} poisoned message{'' if n == 1 else 's'}"
