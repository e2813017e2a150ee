"""The public API: what `import durable_fx` exposes, and under which name."""

from __future__ import annotations

import subprocess
import sys

import durable_fx


def test_all_is_sorted_and_complete() -> None:
    assert durable_fx.__all__ == sorted(durable_fx.__all__, key=lambda n: (n[0].islower(), n))
    for name in durable_fx.__all__:
        getattr(durable_fx, name)  # lazy names (DurableApp) appear once first used
    public = {
        name
        for name, value in vars(durable_fx).items()
        if not name.startswith("_") and not isinstance(value, type(durable_fx))
    }
    assert public == set(durable_fx.__all__)


def test_public_classes_show_their_public_module() -> None:
    for name in durable_fx.__all__:
        value = getattr(durable_fx, name)
        if isinstance(value, type):
            assert value.__module__ == "durable_fx", name


def test_importing_the_package_does_not_load_optional_stacks() -> None:
    # A worker on SQLite must start fast: no Azure SDK, no CLI toolkit, no gRPC.
    code = (
        "import sys, durable_fx; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('azure', 'typer', 'rich', 'aiohttp', 'grpc', 'google', 'durabletask')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
