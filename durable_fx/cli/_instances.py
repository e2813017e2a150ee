"""The commands on instances: start, status, list, history, raise, purge and wait.

``_app`` registers them. Each opens the store (``--store``, else ``default_store_url()``), does one
thing through ``DurableClient`` and prints a table, or one JSON document with
``--json``.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated

import typer

from .._reuse import IdReusePolicy
from .._state import OrchestrationState, OrchestrationStatus
from ._input import (
    IdArgument,
    JsonOption,
    StoreOption,
    check_instance_id,
    command_settings,
    open_client,
    parse_json,
    parse_time,
    require_state,
)
from ._output import (
    USAGE_ERROR,
    CliError,
    emit_json,
    instances_table,
    state_json,
    state_table,
    stdout_console,
)
from ._timeline import render_timeline, timeline_rows

__all__ = [
    "history",
    "list_instances",
    "purge",
    "raise_event",
    "start",
    "status",
    "wait",
]

_TERMINAL = [s for s in OrchestrationStatus if s.is_terminal]


class ReuseChoice(StrEnum):
    """``start --reuse``: the CLI spelling of an ``IdReusePolicy``."""

    refuse = "refuse"
    replace_finished = "replace-finished"
    replace_failed = "replace-failed"

    @property
    def policy(self) -> IdReusePolicy:
        return IdReusePolicy[self.name.upper()]


def start(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The orchestrator's registered name.")],
    input_json: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            metavar="JSON",
            help="The orchestrator's input as JSON; @FILE reads it from a file, @- from stdin.",
        ),
    ] = None,
    instance_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            metavar="ID",
            callback=check_instance_id,
            help="Instance id to use (default: a new random id). Refused if an instance "
            "with this id exists, unless --reuse says to replace it.",
        ),
    ] = None,
    reuse: Annotated[
        ReuseChoice,
        typer.Option(
            "--reuse",
            help="What to do if --id names a finished instance: refuse (keep it and fail), "
            "replace-finished (replace a COMPLETED, FAILED or TERMINATED one, dropping its "
            "history) or replace-failed (only a FAILED or TERMINATED one). A running "
            "instance is never replaced.",
            case_sensitive=False,
        ),
    ] = ReuseChoice.refuse,
    start_at: Annotated[
        str | None,
        typer.Option(
            "--start-at",
            metavar="ISO",
            help="Stay PENDING until this time (ISO 8601; no offset means UTC).",
        ),
    ] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Start an orchestration and print its instance id.

    The instance runs as soon as a worker that registers NAME is running on
    the same store (see 'durable-fx worker').
    """
    settings = command_settings(ctx, store, json_output)
    payload = parse_json(input_json, "--input")
    when = parse_time(start_at, "--start-at")
    with open_client(settings.store) as client:
        started = client.start(
            name, payload, instance_id=instance_id, start_at=when, reuse=reuse.policy
        )
    if settings.json:
        emit_json(
            {"instance_id": started, "name": name, "start_at": when.isoformat() if when else None}
        )
        return
    scheduled = f" (pending until {when.isoformat()})" if when else ""
    stdout_console().print(f"started {name} as instance {started}{scheduled}", markup=False)


def status(
    ctx: typer.Context,
    instance_id: IdArgument,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show an instance's status, input, output, custom status and failure."""
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        state = require_state(client.get(instance_id), instance_id)
    if settings.json:
        emit_json(state_json(state))
    else:
        stdout_console().print(state_table(state))


def list_instances(
    ctx: typer.Context,
    status: Annotated[
        list[OrchestrationStatus] | None,
        typer.Option(
            "--status",
            "-s",
            case_sensitive=False,
            help="Only instances with this status; repeat the option for several.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", metavar="NAME", help="Only this orchestrator.")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", metavar="TEXT", help="Only ids starting with this.")
    ] = None,
    created_from: Annotated[
        str | None,
        typer.Option("--created-from", metavar="ISO", help="Only instances created at or after."),
    ] = None,
    created_to: Annotated[
        str | None,
        typer.Option("--created-to", metavar="ISO", help="Only instances created at or before."),
    ] = None,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=1000, help="Instances per page.")
    ] = 100,
    continuation: Annotated[
        str | None,
        typer.Option("--continuation", metavar="TOKEN", help="Start at the page this names."),
    ] = None,
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow the pages to the end and list every match.")
    ] = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """List instances, newest first, one page at a time (or --all)."""
    settings = command_settings(ctx, store, json_output)
    since = parse_time(created_from, "--created-from")
    until = parse_time(created_to, "--created-to")
    items: list[OrchestrationState] = []
    with open_client(settings.store) as client:
        while True:
            page = client.query(
                status=status or None,
                name=name,
                instance_id_prefix=prefix,
                created_from=since,
                created_to=until,
                page_size=page_size,
                continuation=continuation,
            )
            items.extend(page.items)
            continuation = page.continuation
            if not (all_pages and continuation):
                break
    if settings.json:
        emit_json({"items": [state_json(s) for s in items], "continuation": continuation})
        return
    console = stdout_console()
    console.print(instances_table(items))
    count = f"{len(items)} instance{'' if len(items) == 1 else 's'}"
    more = f"; more with --continuation {continuation} (or --all)" if continuation else ""
    console.print(f"{count}{more}", style="dim", markup=False)


def history(
    ctx: typer.Context,
    instance_id: IdArgument,
    episodes: Annotated[
        bool,
        typer.Option(
            "--episodes",
            help="Also show the OrchestratorStarted markers that open each replay episode.",
        ),
    ] = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show an instance's history as a timeline.

    One row per event: time since the start, event kind, and what it was
    (activity and input, result, timer, event data, failure, sub-orchestration).
    """
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        state = require_state(client.get(instance_id, history=True), instance_id)
    if settings.json:
        rows = timeline_rows(state, show_episodes=episodes)
        emit_json(
            {
                "instance_id": state.instance_id,
                "name": state.name,
                "status": state.status.value,
                "events": [row.as_dict() for row in rows],
                # Every event, episode markers included: what the Replayer replays.
                "history": [event.model_dump(mode="json") for event in state.history or []],
            }
        )
    else:
        stdout_console().print(render_timeline(state, show_episodes=episodes))


def raise_event(
    ctx: typer.Context,
    instance_id: IdArgument,
    event: Annotated[
        str, typer.Argument(metavar="EVENT", help="The event name the orchestrator waits for.")
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", metavar="JSON", help="The event's data as JSON; @FILE reads a file."
        ),
    ] = None,
    event_id: Annotated[
        str | None,
        typer.Option(
            "--event-id",
            metavar="KEY",
            help="Idempotency key: raising again with the same key while the event is "
            "pending delivers it once.",
        ),
    ] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Send event EVENT (with optional JSON data) to an instance."""
    settings = command_settings(ctx, store, json_output)
    payload = parse_json(data, "--data")
    with open_client(settings.store) as client:
        client.raise_event(instance_id, event, payload, event_id=event_id)
    if settings.json:
        emit_json({"instance_id": instance_id, "event": event, "data": payload})
    else:
        stdout_console().print(f"raised {event} on instance {instance_id}", markup=False)


def purge(
    ctx: typer.Context,
    instance_id: Annotated[
        str | None,
        typer.Argument(
            metavar="[ID]",
            callback=check_instance_id,
            help="Purge this instance.",
            show_default=False,
        ),
    ] = None,
    status: Annotated[
        list[OrchestrationStatus] | None,
        typer.Option(
            "--status",
            "-s",
            case_sensitive=False,
            help="Purge finished instances with this status (COMPLETED, FAILED or TERMINATED); "
            "repeat for several.",
        ),
    ] = None,
    created_before: Annotated[
        str | None,
        typer.Option("--created-before", metavar="ISO", help="Purge those created before this."),
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Purge every finished instance.")
    ] = False,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete finished instances and their history, for good.

    Name one instance, or choose with --status, --created-before or --all.
    Running instances are never purged: terminate them first.
    """
    settings = command_settings(ctx, store, json_output)
    filtered = bool(status or created_before or everything)
    if instance_id is not None and filtered:
        raise typer.BadParameter("give an instance id or filters, not both", param_hint="'ID'")
    if instance_id is None and not filtered:
        raise CliError(
            "name the instance to purge, or choose with --status, --created-before or --all",
            exit_code=USAGE_ERROR,
        )
    running = [s.value for s in status or () if not s.is_terminal]
    if running:
        raise typer.BadParameter(
            f"{', '.join(running)} instances cannot be purged; "
            f"use {', '.join(s.value for s in _TERMINAL)}",
            param_hint="'--status'",
        )
    before = parse_time(created_before, "--created-before")
    with open_client(settings.store) as client:
        if instance_id is not None:
            purged = client.purge(instance_id)
        else:
            # The store's bound is inclusive; "before" is not.
            until = before - timedelta(microseconds=1) if before else None
            purged = client.purge(status=status or None, created_to=until)
    if settings.json:
        emit_json({"purged": purged})
    else:
        stdout_console().print(f"purged {purged} instance{'' if purged == 1 else 's'}")


def wait(
    ctx: typer.Context,
    instance_id: IdArgument,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=0, help="Give up after this; 0: never."),
    ] = 60.0,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Wait until an instance finishes, then show its status.

    Exits 0 if it COMPLETED, 1 if it FAILED or was TERMINATED, or if the
    timeout passed first.
    """
    settings = command_settings(ctx, store, json_output)
    with open_client(settings.store) as client:
        try:
            state = client.wait(instance_id, timeout=timeout or None)
        except TimeoutError as error:
            raise CliError(f"{error}; is a worker running on this store?") from None
    if settings.json:
        emit_json(state_json(state))
    else:
        stdout_console().print(state_table(state))
    if state.status is not OrchestrationStatus.COMPLETED:
        detail = f": {state.failure}" if state.failure else ""
        raise CliError(f"instance {instance_id} ended {state.status.value}{detail}")
