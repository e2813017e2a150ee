"""The email app served by ``durable-fx serve function_app:app`` for the tests that use it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from email_pipeline.localrun import AppProcess
from tests.support.azurite import Azurite, new_hub


@contextmanager
def served_email_app(
    request: pytest.FixtureRequest,
    workdir_name: str,
    store_kind: str,
    settings: dict[str, str],
    sqlite_query: str = "",
) -> Iterator[AppProcess]:
    """Serve the email app on a new SQLite file or Azurite hub; it must stop cleanly."""
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    workdir = tmp_path_factory.mktemp(workdir_name)
    if store_kind == "sqlite":
        url = f"sqlite:///{workdir / 'app.db'}{sqlite_query}"
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        url = azurite.connection_string(new_hub())
    process = AppProcess(url, settings, workdir / "serve.log")
    process.start()
    try:
        yield process
    except BaseException:
        # A failed test still stops its server: left running, its Popen is collected
        # in a later test and fails that one with an unraisable-exception warning.
        process.stop()
        raise
    assert process.stop() == 0
