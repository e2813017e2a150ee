"""What the ``durable-fx`` CLI reads: shared options, JSON and times, instance ids, the store.

Bad input becomes a usage error (exit 2) naming the option and the fix; a
failed operation becomes a ``CliError`` (exit 1). Neither shows a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .._errors import DurableFxError, InstanceNotFoundError, InvalidInstanceIdError
from .._ids import validate_instance_id
from .._registry import Registry
from .._state import OrchestrationState
from ..client._sync import DurableClient
from ..storage import default_store_url
from ..worker._worker import Worker
from ._output import USAGE_ERROR, CliError, redact_store_url

__all__ = [
    "CliSettings",
    "IdArgument",
    "JsonOption",
    "ReasonOption",
    "StoreOption",
    "check_instance_id",
    "command_settings",
    "open_client",
    "open_worker",
    "parse_json",
    "parse_time",
    "require_state",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class CliSettings:
    """The options every command takes, before the command or after it."""

    store: str | None = None
    json: bool = False


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        show_default=False,
        help="Store URL, e.g. sqlite:///app.db or sqlite:////abs/path.db. Default: "
        "$DURABLE_FX_STORE, else $AzureWebJobsStorage, else sqlite:///.durable_fx/durable_fx.db.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")
]


def command_settings(ctx: typer.Context, store: str | None, json_output: bool) -> CliSettings:
    """The command's own --store/--json, else those given before the command."""
    root = ctx.find_object(CliSettings) or CliSettings()
    return CliSettings(store or root.store, json_output or root.json)


def check_instance_id(value: str | None) -> str | None:
    """Typer callback: reject an instance id that no store accepts, as a usage error."""
    if value is None:
        return None
    try:
        return validate_instance_id(value)
    except InvalidInstanceIdError as error:
        raise typer.BadParameter(str(error)) from None


IdArgument = Annotated[
    str,
    typer.Argument(
        metavar="ID", callback=check_instance_id, help="The instance id.", show_default=False
    ),
]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", metavar="TEXT", help="Why; kept in the history.")
]


def parse_json(text: str | None, option: str) -> Any:
    """The JSON value of an option; ``@FILE`` reads it from a file and ``@-`` from stdin."""
    if text is None:
        return None
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as error:
            raise typer.BadParameter(
                f"cannot read {source!r}: {error.strerror or error}", param_hint=f"'{option}'"
            ) from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise typer.BadParameter(
            f"not valid JSON ({error}); quote text as a JSON string, e.g. {option} '\"hello\"', "
            f"or read a file with {option} @input.json",
            param_hint=f"'{option}'",
        ) from None


def parse_time(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time option; one without an offset is taken as UTC."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-05-01T09:30:00Z or "
            "2026-05-01T11:30:00+02:00 (no offset means UTC)",
            param_hint=f"'{option}'",
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def require_state(state: OrchestrationState | None, instance_id: str) -> OrchestrationState:
    """``state``, or ``InstanceNotFoundError`` when the instance does not exist."""
    if state is None:
        raise InstanceNotFoundError(instance_id)
    return state


@contextmanager
def open_client(store: str | None) -> Iterator[DurableClient]:
    """A client on ``store`` (default: ``default_store_url()``) that reports errors in one line.

    Errors raised inside the ``with`` block become ``CliError``s: a bad value
    is a usage error; anything the client refuses, or a store failure, is an
    operation error.
    """
    url = store or default_store_url()
    shown = redact_store_url(url)
    client = _open(url, DurableClient)
    try:
        yield client
    except (CliError, typer.TyperException):
        raise
    except InstanceNotFoundError as error:
        raise CliError(
            f"{error} in {shown}; list instances with 'durable-fx list', or pass the right --store"
        ) from None
    except InvalidInstanceIdError as error:
        raise CliError(str(error), exit_code=USAGE_ERROR) from None
    except DurableFxError as error:
        raise CliError(str(error)) from None
    except (ValueError, TypeError) as error:  # the client rejected a value passed on to it
        raise CliError(str(error), exit_code=USAGE_ERROR) from None
    except Exception as error:  # the store itself failed (locked, corrupt, unreachable)
        raise CliError(
            f"the store {shown} failed: {type(error).__name__}: {error}; try again, and check "
            "that no other program holds it locked"
        ) from None
    finally:
        client.close()


def open_worker(store: str | None, registry: Registry, **options: Any) -> Worker:
    """A ``Worker`` for ``registry`` on ``store``, with store errors reported in one line."""
    url = store or default_store_url()
    return _open(url, lambda url: Worker(registry, url, **options))


def _open(url: str, opener: Callable[[str], T]) -> T:
    try:
        return opener(url)
    except ValueError as error:  # open_store's message lists the URLs it accepts
        raise CliError(
            f"{error}; pass --store URL or set DURABLE_FX_STORE", exit_code=USAGE_ERROR
        ) from None
    except Exception as error:
        raise CliError(
            f"cannot open the store {redact_store_url(url)}: {type(error).__name__}: {error}; "
            "check the URL, and that the file is a durable_fx store you may read and write"
        ) from None
