"""``durable-fx replay``: check a deploy against the histories of running instances first.

Each history is replayed against the code of ``MODULE:ATTR`` with the
``Replayer``, as a worker of the new code would when the instance next
moves. An instance fails the check when the code takes another path than its
history (the first mismatching step is named), its orchestrator is gone, or
its code now fails it. Exit 1 if any fails, so CI can gate a deploy on it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from .._errors import InvalidOperationError, NonDeterminismError, UnknownNameError
from .._history import HistoryEvent
from .._replayer import Replayer, history_from_json
from .._state import OrchestrationStatus
from ._input import JsonOption, StoreOption, command_settings, open_client
from ._output import OPERATION_ERROR, USAGE_ERROR, CliError, emit_json, stdout_console
from ._run import load_registry

__all__ = ["replay"]

_UNFINISHED = [
    OrchestrationStatus.PENDING,
    OrchestrationStatus.RUNNING,
    OrchestrationStatus.SUSPENDED,
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one history replays against the new code."""

    source: str
    """The instance id, or the file the history came from."""
    orchestration: str
    ok: bool
    detail: str


def replay(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTR",
            help="The new code: the Registry (or app with a .registry) to check.",
            show_default=False,
        ),
    ],
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="HISTORY.json",
            help="Histories written by `durable-fx history ID --json`; "
            "without any, every unfinished instance of the store is checked.",
            show_default=False,
        ),
    ] = None,
    store: StoreOption = None,
    json_output: JsonOption = False,
) -> None:
    """Replay running instances' histories against new code; list those it would break.

    Exit 0 if every history replays, 1 if any would fail (CI can gate a deploy
    on it).
    """
    settings = command_settings(ctx, store, json_output)
    replayer = Replayer(load_registry(target))
    histories = _files(files) if files else _unfinished(settings.store)
    verdicts = [_judge(replayer, source, history) for source, history in histories]
    failed = [v for v in verdicts if not v.ok]
    if settings.json:
        emit_json(
            {
                "checked": len(verdicts),
                "failed": [
                    {"source": v.source, "orchestration": v.orchestration, "problem": v.detail}
                    for v in failed
                ],
            }
        )
    else:
        _print(verdicts, failed)
    if failed:
        raise typer.Exit(OPERATION_ERROR)


def _files(paths: list[Path]) -> Iterator[tuple[str, list[HistoryEvent]]]:
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CliError(f"cannot read {path}: {error.strerror}", exit_code=USAGE_ERROR) from None
        try:
            yield str(path), history_from_json(text)
        except (ValueError, ValidationError) as error:
            first = str(error).splitlines()[0]
            raise CliError(
                f"{path} is not a history (`durable-fx history ID --json` output): {first}",
                exit_code=USAGE_ERROR,
            ) from None


def _unfinished(store: str | None) -> Iterator[tuple[str, list[HistoryEvent]]]:
    with open_client(store) as client:
        continuation = None
        while True:
            page = client.query(status=_UNFINISHED, page_size=100, continuation=continuation)
            for summary in page.items:
                state = client.get(summary.instance_id, history=True)
                if state is not None and state.history:
                    yield state.instance_id, list(state.history)
            continuation = page.continuation
            if continuation is None:
                return


def _judge(replayer: Replayer, source: str, history: list[HistoryEvent]) -> Verdict:
    name = next((getattr(e, "name", "") for e in history if e.kind == "ExecutionStarted"), "?")
    try:
        result = replayer.replay(history)
    except NonDeterminismError as error:
        detail = f"at step {error.sequence}: history has {error.recorded}, code {error.produced}"
        return Verdict(source, name, False, detail)
    except (UnknownNameError, InvalidOperationError) as error:
        return Verdict(source, name, False, str(error))
    if result.status is OrchestrationStatus.FAILED:
        why = result.failure.message if result.failure else "no details"
        return Verdict(source, name, False, f"the new code fails it: {why}")
    return Verdict(source, name, True, f"replays ({result.status.value})")


def _print(verdicts: list[Verdict], failed: list[Verdict]) -> None:
    console = stdout_console()
    if failed:
        table = Table("instance", "orchestration", "problem", title="would fail after the deploy")
        for verdict in failed:
            table.add_row(verdict.source, verdict.orchestration, verdict.detail)
        console.print(table)
    console.print(
        f"{len(verdicts) - len(failed)} of {len(verdicts)} histories replay on the new code",
        markup=False,
    )
