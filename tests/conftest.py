"""Shared fixtures: every store the suite runs against.

``store_kind`` is parametrized over the stores; ``store_factory`` builds a new,
empty store of that kind per call, and ``store_url`` names one by URL for
tests that go through ``open_store``. The SQLite parameter is skipped, with
the reason shown, until ``durable_fx.storage.sqlite`` exists.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# Before durable_fx.testing is imported: its checks' bare asserts then report
# the compared values, as in a test module.
pytest.register_assert_rewrite("durable_fx.testing")

import durable_fx  # noqa: E402
from durable_fx._clock import Clock  # noqa: E402
from durable_fx.storage import Store  # noqa: E402
from durable_fx.storage.memory import MemoryStore  # noqa: E402
from durable_fx.testing import StoreFactory  # noqa: E402
from tests.support import instances  # noqa: E402
from tests.support.azurite import Azurite, AzuriteProcess, new_hub  # noqa: E402
from tests.support.spans import Spans, WhileRecording  # noqa: E402

_HAS_SQLITE = importlib.util.find_spec("durable_fx.storage.sqlite") is not None

STORE_KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param(
        "sqlite",
        id="sqlite",
        marks=pytest.mark.skipif(
            not _HAS_SQLITE, reason="durable_fx/storage/sqlite.py does not exist yet"
        ),
    ),
    # A real Azurite, started once per session (see the azurite fixture below).
    pytest.param("azure", id="azure", marks=pytest.mark.azurite),
]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of store under test: ``"memory"``, ``"sqlite"`` or ``"azure"``."""
    kind: str = request.param
    return kind


@pytest.fixture
def store_factory(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreFactory:
    """Builds a new, empty store of ``store_kind`` on each call (a new file for SQLite)."""
    if store_kind == "memory":
        return lambda clock: MemoryStore(clock=clock)
    if store_kind == "azure":
        return azure_store_factory(request.getfixturevalue("azurite"))
    from durable_fx.storage.sqlite import SqliteStore

    files = (tmp_path / f"store-{n}.db" for n in itertools.count())

    def sqlite_store(clock: Clock) -> Store:
        return SqliteStore(next(files), clock=clock)

    return sqlite_store


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL ``open_store`` accepts for ``store_kind`` (memory:// is new per open)."""
    if store_kind == "memory":
        return "memory://"
    if store_kind == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        return azurite.connection_string(new_hub())
    return f"sqlite:///{tmp_path / 'store.db'}"


# -- end-to-end fixtures: a store, a registry, workers and a client on top of them ----------
#
# These use the public API only (``import durable_fx``), as a user would.

WAIT_TIMEOUT = 20.0
"""Seconds a test waits for an instance to finish: generous, so slow CI does not flake."""


@pytest.fixture
def store(store_url: str) -> Iterator[durable_fx.Store]:
    """A store of ``store_kind`` opened by URL, closed after the test."""
    opened = durable_fx.open_store(store_url)
    yield opened
    asyncio.run(opened.close())


@pytest.fixture
def registry() -> durable_fx.Registry:
    """A fresh registry per test: tests register their orchestrators and activities on it."""
    return durable_fx.Registry()


@pytest.fixture
def make_worker(
    store: durable_fx.Store, registry: durable_fx.Registry
) -> Iterator[Callable[..., durable_fx.Worker]]:
    """Starts a Worker on ``store`` (or ``on=``) for ``registry`` (or ``app``); stops it after.

    Stop one early with ``worker.stop()`` and make another to force a cold replay.
    """
    started: list[durable_fx.Worker] = []

    def make(
        app: durable_fx.Registry | None = None,
        *,
        on: durable_fx.Store | None = None,
        **options: Any,
    ) -> durable_fx.Worker:
        options.setdefault("max_poll_interval", 0.05)
        options.setdefault("shutdown_grace", 2.0)
        app = app if app is not None else registry
        worker = durable_fx.Worker(app, on if on is not None else store, **options)
        worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in reversed(started):
        worker.stop()


@pytest.fixture
def worker(make_worker: Callable[..., durable_fx.Worker]) -> durable_fx.Worker:
    """A running worker for ``registry`` on ``store``."""
    return make_worker()


@pytest.fixture
def client(store: durable_fx.Store) -> Iterator[durable_fx.DurableClient]:
    """A DurableClient on ``store``."""
    with durable_fx.DurableClient(store) as opened:
        yield opened


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    """``tests.support.instances.wait_until``, for tests that take it as a fixture."""
    return instances.wait_until


# -- Azurite: the Azure store's tests run against a real one ----------------------------------


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite for the whole session, on free loopback ports with a temporary data dir."""
    try:
        process = AzuriteProcess(tmp_path_factory.mktemp("azurite"))
    except FileNotFoundError as missing:
        if os.environ.get("CI"):
            raise  # CI runs `make test`, which installs it: missing is a failure there
        pytest.skip(str(missing))
    try:
        yield process.azurite
    finally:
        process.stop()


def azure_store_factory(azurite: Azurite) -> StoreFactory:
    """Fresh Azure stores (one task hub each) that let the test's clock decide time.

    A queue hides messages in real time; with no delay cap the conformance
    suite's ManualClock could not make a delayed message due. Capping delays
    at zero makes every message come back at once and the store decide by
    the clock, which is also how it chains timers longer than a queue allows.
    """
    from datetime import timedelta

    from durable_fx.storage.azure import open_azure_store

    def factory(clock: Clock) -> Store:
        return open_azure_store(
            azurite.connection_string(new_hub()),
            clock=clock,
            max_message_delay=timedelta(0),
            idle_poll=(0.0, 0.0),
        )

    return factory


@pytest.fixture(scope="session")
def _span_recorder() -> tuple[InMemorySpanExporter, WhileRecording]:
    """The process's OpenTelemetry SDK provider (one per process), recording on demand."""
    exporter = InMemorySpanExporter()
    recording = WhileRecording(exporter)
    provider = TracerProvider()
    provider.add_span_processor(recording)
    trace.set_tracer_provider(provider)
    return exporter, recording


@pytest.fixture
def spans(_span_recorder: tuple[InMemorySpanExporter, WhileRecording]) -> Iterator[Spans]:
    """The spans ended while the test runs (tests/support/spans.py)."""
    exporter, recording = _span_recorder
    exporter.clear()
    recording.on = True
    try:
        yield Spans(exporter, recording)
    finally:
        recording.on = False
        recording.slow = None
        exporter.clear()
