"""``durable-fx worker``'s machinery: find the registry, run until a signal says stop."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
from typing import Protocol

from .._registry import Registry
from ._output import USAGE_ERROR, CliError

__all__ = ["load_registry", "run_until_signalled"]

log = logging.getLogger("durable_fx.cli")


def load_registry(target: str) -> Registry:
    """Import ``module:attr`` and return the Registry it names (or that object's ``.registry``).

    ``attr`` may be dotted (``module:app.registry``). The current directory is
    put on ``sys.path`` first, as uvicorn and gunicorn do: through the console
    script it would not be there, and the app usually lives right where the
    command runs.
    """
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise CliError(
            f"{target!r} is not MODULE:ATTR; name the module and the registry in it, "
            "e.g. myapp.workflows:registry",
            exit_code=USAGE_ERROR,
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise CliError(
                f"cannot import {module_name!r}: no module named {missing!r}; run from the "
                "directory that contains it, or add that directory to PYTHONPATH",
                exit_code=USAGE_ERROR,
            ) from None
        raise CliError(f"importing {module_name!r} failed: {error}") from None
    except Exception as error:
        raise CliError(
            f"importing {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None
    for attr in attr_path.split("."):
        try:
            found = getattr(found, attr)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attr_path!r}; check the name after "
                "the colon",
                exit_code=USAGE_ERROR,
            ) from None
    if isinstance(found, Registry):
        return found
    registry = getattr(found, "registry", None)
    if isinstance(registry, Registry):
        return registry
    raise CliError(
        f"{target} is a {type(found).__name__}, not a durable_fx Registry nor an object with a "
        ".registry; point MODULE:ATTR at the Registry your orchestrators are registered on",
        exit_code=USAGE_ERROR,
    )


class Service(Protocol):
    """Something that runs until asked to stop: a ``Worker``, a ``SidecarServer``."""

    async def run(self) -> None: ...

    def request_stop(self) -> None: ...


async def run_until_signalled(worker: Service) -> str | None:
    """Run ``worker`` until SIGINT or SIGTERM, then stop it gracefully.

    Returns the name of the signal that stopped it (``None`` if it stopped
    on its own). A second signal exits the process at once.
    """
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if received:
            # A second signal means "now": skip the grace period. Work in flight
            # keeps its lease and is picked up again once that expires.
            log.warning("%s again: quitting without waiting", signum.name)
            os._exit(128 + signum)
        received.append(signum)
        log.info("%s: stopping after the work in flight (again to quit at once)", signum.name)
        worker.request_stop()

    def on_signal_threadsafe(number: int, _frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signal.Signals(number))

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except NotImplementedError:  # Windows event loops have no add_signal_handler
            signal.signal(signum, on_signal_threadsafe)
    try:
        await worker.run()
    finally:
        for signum in signals:
            try:
                loop.remove_signal_handler(signum)
            except NotImplementedError:
                signal.signal(signum, signal.SIG_DFL)
    return received[0].name if received else None
