"""``durable-fx entity``: signal, read and list durable entities.

An entity is addressed by its name and key (``durable-fx entity get stock
sku-42``); ``signal`` sends it an operation, which a worker runs once.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from .._entity import EntityId, EntityMetadata
from ._input import JsonOption, StoreOption, command_settings, open_client, parse_json
from ._output import OPERATION_ERROR, CliError, emit_json, format_time, stdout_console

__all__ = ["entity_app"]

entity_app = typer.Typer(
    name="entity",
    no_args_is_help=True,
    help="Signal, read and list durable entities.",
)

NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The entity's name.")]
KeyArgument = Annotated[str, typer.Argument(metavar="KEY", help="The entity's key.")]


def _entity(name: str, key: str) -> EntityId:
    try:
        return EntityId(name, key)
    except ValueError as error:
        raise CliError(f"not an entity id: {error}") from None


def _as_json(found: EntityMetadata[Any]) -> dict[str, Any]:
    return {
        "name": found.id.name,
        "key": found.id.key,
        "last_modified": found.last_modified.isoformat(),
        "state": found.state,
    }


@entity_app.command()
def signal(
    ctx: typer.Context,
    name: NameArgument,
    key: KeyArgument,
    operation: Annotated[str, typer.Argument(metavar="OPERATION", help="The operation to run.")],
    input: Annotated[
        str | None,
        typer.Option("--input", metavar="JSON", help="The operation's input; @FILE reads a file."),
    ] = None,
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id",
            metavar="KEY",
            help="Idempotency key: signalling again with the same key sends nothing.",
        ),
    ] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send OPERATION (with optional JSON input) to the entity NAME/KEY."""
    settings = command_settings(ctx, store, json_output)
    entity = _entity(name, key)
    payload = parse_json(input, "--input")
    with open_client(settings.store) as client:
        try:
            sent = client.signal_entity(entity, operation, payload, request_id=request_id)
        except ValueError as error:
            raise CliError(str(error)) from None
    if settings.json:
        emit_json({"entity": str(entity), "operation": operation, "sent": sent})
    elif sent:
        stdout_console().print(f"sent {operation} to {entity}", markup=False)
    else:
        stdout_console().print(f"already sent: request {request_id} to {entity}", markup=False)


@entity_app.command()
def get(
    ctx: typer.Context,
    name: NameArgument,
    key: KeyArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the entity NAME/KEY's state (exit 1 if it has none)."""
    settings = command_settings(ctx, store, json_output)
    entity = _entity(name, key)
    with open_client(settings.store) as client:
        found: EntityMetadata[Any] | None = client.get_entity(entity, Any)
    if found is None:
        raise CliError(f"entity {entity} has no state", exit_code=OPERATION_ERROR)
    if settings.json:
        emit_json(_as_json(found))
        return
    console = stdout_console()
    console.print(f"{entity}  (changed {format_time(found.last_modified)})", markup=False)
    console.print(json.dumps(found.state, indent=2), markup=False)


@entity_app.command("list")
def list_entities(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Only this entity's keys.")
    ] = None,
    key_prefix: Annotated[
        str, typer.Option("--key-prefix", metavar="TEXT", help="Only keys that start so.")
    ] = "",
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many.")
    ] = 100,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """List entities that have state, newest first."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        try:
            page = client.query_entities(name=name, key_prefix=key_prefix, page_size=limit)
        except ValueError as error:
            raise CliError(str(error)) from None
    if settings.json:
        emit_json({"items": [_as_json(m) for m in page.items]})
        return
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("key", overflow="fold")
    table.add_column("changed", min_width=10)
    table.add_column("state", overflow="fold", ratio=1)
    for found in page.items:
        state = found.state_json or ""
        table.add_row(
            Text(found.id.name),
            Text(found.id.key),
            format_time(found.last_modified),
            Text(state[:200] + ("…" if len(state) > 200 else "")),
        )
    console = stdout_console()
    console.print(table)
    console.print(f"{len(page.items)} entities", style="dim", markup=False)


@entity_app.command()
def clean(
    ctx: typer.Context,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Remove empty entities and release locks whose holder has ended (reads every entity)."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        cleaned = client.clean_entity_storage()
    removed, released = cleaned.empty_entities_removed, cleaned.orphaned_locks_released
    if settings.json:
        emit_json({"removed_entities": removed, "released_locks": released})
    else:
        message = f"removed {removed} empty entit{'y' if removed == 1 else 'ies'}, "
        stdout_console().print(f"{message}released {released} lock(s)", markup=False)
