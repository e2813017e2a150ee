"""What the ``durable-fx`` CLI prints: tables for people, JSON for scripts, one-line errors.

Every command prints either rich output (for a terminal) or exactly one JSON
document on stdout (``--json``). Errors never reach stdout: they are one line
on stderr, starting with ``error:``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from .._state import OrchestrationState, OrchestrationStatus

__all__ = [
    "OPERATION_ERROR",
    "USAGE_ERROR",
    "CliError",
    "OneLineErrorsGroup",
    "emit_json",
    "error_line",
    "format_time",
    "instances_table",
    "print_error",
    "redact_store_url",
    "state_json",
    "state_table",
    "status_text",
    "stdout_console",
]

OPERATION_ERROR = 1
"""Exit code when the request was understood but could not be carried out."""
USAGE_ERROR = 2
"""Exit code when the command line itself is wrong (click's convention)."""

_PIPE_WIDTH = 160

_STATUS_STYLES = {
    OrchestrationStatus.PENDING: "dim",
    OrchestrationStatus.RUNNING: "cyan",
    OrchestrationStatus.COMPLETED: "green",
    OrchestrationStatus.FAILED: "bold red",
    OrchestrationStatus.TERMINATED: "red",
    OrchestrationStatus.SUSPENDED: "yellow",
    OrchestrationStatus.CONTINUED_AS_NEW: "blue",
}


class CliError(Exception):
    """An error the CLI reports as one ``error:`` line, then exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = OPERATION_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class OneLineErrorsGroup(TyperGroup):
    """The command group, reporting every error as one ``error:`` line on stderr.

    Click's own usage errors would print a usage block and a boxed message,
    and anything else a traceback; scripts and people both read one line
    better, so all of it is caught here, where ``CliRunner`` sees it too.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            # Without standalone mode click returns typer.Exit's code (or None).
            code = result if isinstance(result, int) else 0
        except CliError as error:
            print_error(error.message)
            code = error.exit_code
        except typer.TyperException as error:  # click's usage errors
            code = _report_usage_error(error)
        except typer.Abort:
            print_error("aborted")
            code = 1
        except Exception as error:
            if os.environ.get("DURABLE_FX_DEBUG"):
                raise
            print_error(
                f"unexpected {type(error).__name__}: {error} (a bug in durable-fx: rerun with "
                "DURABLE_FX_DEBUG=1 to see the traceback, and please report it)"
            )
            code = 1
        if standalone_mode:
            sys.exit(code)
        return code


def _report_usage_error(error: typer.TyperException) -> int:
    # Running with no command at all shows the help, which is what was wanted.
    if type(error).__name__ == "NoArgsIsHelpError":
        typer.echo(error.format_message())
        return 0
    message = error.format_message()
    message = message[:1].lower() + message[1:]
    ctx = getattr(error, "ctx", None)
    if ctx is not None:
        message = f"{message.rstrip('.')} (see '{ctx.command_path} --help')"
    print_error(message)
    return int(getattr(error, "exit_code", USAGE_ERROR))


def error_line(message: str) -> str:
    """``message`` as the single ``error: ...`` line the CLI prints."""
    return "error: " + " ".join(message.split())


def print_error(message: str) -> None:
    """Print ``message`` as one ``error:`` line on stderr."""
    typer.echo(error_line(message), err=True)


def emit_json(document: Any) -> None:
    """Print ``document`` as the command's one JSON document on stdout."""
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))


def stdout_console() -> Console:
    """A console on the current stdout.

    Made per command, not per module: test runners swap ``sys.stdout``, and a
    console keeps the stream it was made with.
    """
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # A file or pipe has no screen width to fit: lay tables out wide
        # rather than folding ids at rich's default 80 columns.
        console = Console(highlight=False, width=_PIPE_WIDTH)
    return console


def redact_store_url(url: str) -> str:
    """``url`` fit to show: an Azure connection string's account key is hidden."""
    head, found, _ = url.partition("AccountKey=")
    return head + "AccountKey=***" if found else url


def format_time(moment: datetime | None) -> str:
    """A timestamp for people: UTC, to the second."""
    if moment is None:
        return ""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def status_text(status: OrchestrationStatus) -> Text:
    """The status, coloured by how it went."""
    return Text(status.value, style=_STATUS_STYLES.get(status, ""))


def state_json(state: OrchestrationState) -> dict[str, Any]:
    """An instance's state as JSON data (without its history)."""
    return state.model_dump(mode="json", exclude={"history"})


def state_table(state: OrchestrationState) -> Table:
    """One instance as a two-column field/value table."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("instance", Text(state.instance_id))
    table.add_row("name", Text(state.name))
    table.add_row("status", status_text(state.status))
    table.add_row("created", format_time(state.created_at))
    table.add_row("updated", format_time(state.updated_at))
    table.add_row("input", Text(_json_text(state.input)))
    if state.output is not None or state.status is OrchestrationStatus.COMPLETED:
        table.add_row("output", Text(_json_text(state.output)))
    if state.custom_status is not None:
        table.add_row("custom status", Text(_json_text(state.custom_status)))
    if state.failure is not None:
        table.add_row("failure", Text(str(state.failure), style="red"))
    return table


def instances_table(items: Sequence[OrchestrationState]) -> Table:
    """Instances as rows: id, name, status, created and updated times."""
    table = Table(header_style="bold", box=box.SIMPLE_HEAD)
    # Ids are copied into the next command, so they never wrap; the times may
    # wrap at their space on a narrow terminal.
    table.add_column("instance", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("created", min_width=10)
    table.add_column("updated", min_width=10)
    for state in items:
        table.add_row(
            Text(state.instance_id),
            Text(state.name),
            status_text(state.status),
            format_time(state.created_at),
            format_time(state.updated_at),
        )
    return table


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
