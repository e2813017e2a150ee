"""The SQLite store keeps what it acknowledged, and waits for another process's lock only so long.

* Durable means durable: by default every commit is synced (``synchronous=FULL``),
  so an acknowledged start or event survives an OS crash or power loss;
  ``?synchronous=normal`` opts out, and a bad value is a clear error.
* A file another connection keeps locked makes writes wait ``busy_timeout``
  seconds, then fail with ``StoreBusyError`` (never a raw ``database is locked``);
  a lock released within the budget costs only the wait. Opening the store on
  an event loop never waits for the lock on that loop.
* Group commit: calls ready at the same moment share a transaction, and one
  failing member does not fail the others.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import durable_fx
import durable_fx.queues
from durable_fx import (
    AsyncDurableClient,
    InstanceExistsError,
    OrchestrationContext,
    OrchestrationStatus,
    Registry,
    StoreBusyError,
    Worker,
)
from durable_fx.storage.sqlite import SqliteStore
from tests.support.serve import free_port, server_env
from tests.support.sqlite_lock import write_locked

WAIT = 20.0
SCRIPT = Path(sys.executable).parent / "durable-fx"


def url_of(path: Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def release_later(holder: sqlite3.Connection, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, holder.execute, args=("ROLLBACK",))
    timer.start()
    return timer


# -- synchronous=FULL by default -------------------------------------------------------------


def test_the_default_store_syncs_every_commit(tmp_path: Path) -> None:
    store = durable_fx.open_store(url_of(tmp_path / "default.db"))
    assert isinstance(store, SqliteStore)

    def level() -> int:  # the connection's own level, read on the store thread
        return int(store._engine._db.execute("PRAGMA synchronous").fetchone()[0])

    async def levels() -> tuple[int, int]:
        before = await store._call(level, write=False)
        # Lease-only groups commit unsynced and must leave the connection at FULL.
        lease = timedelta(seconds=30)
        locks = (store.lock_activities(owner="w", limit=1, lease=lease) for _ in range(3))
        await asyncio.gather(*locks)
        return before, await store._call(level, write=False)

    try:
        assert store.synchronous == "full"
        assert "synchronous='full'" in repr(store)
        assert asyncio.run(levels()) == (2, 2)  # PRAGMA synchronous: 2 is FULL
    finally:
        asyncio.run(store.close())


@pytest.mark.parametrize("value", ["normal", "NORMAL", "full"])
def test_synchronous_can_be_chosen_in_the_url(tmp_path: Path, value: str) -> None:
    store = durable_fx.open_store(url_of(tmp_path / "chosen.db", f"synchronous={value}"))
    try:
        assert store.synchronous == value.lower()  # type: ignore[attr-defined]
    finally:
        asyncio.run(store.close())


@pytest.mark.parametrize(
    ("query", "fragments"),
    [
        pytest.param("synchronous=bogus", ["synchronous", "full or normal", "bogus"], id="bogus"),
        pytest.param("synchronous=off", ["synchronous", "full or normal"], id="off"),
        pytest.param("synchronous", ["synchronous", "exactly one value"], id="no-value"),
        pytest.param(
            "synchronous=full&synchronous=normal", ["synchronous", "exactly one"], id="twice"
        ),
        pytest.param("busy_timeout=soon", ["busy_timeout", "seconds", "soon"], id="not-a-number"),
        pytest.param("busy_timeout=-1", ["busy_timeout", "0 or more"], id="negative"),
        pytest.param("busy_timeout=nan", ["busy_timeout"], id="nan"),
        pytest.param("sync=full", ["'sync'", "busy_timeout and synchronous"], id="unknown"),
    ],
)
def test_bad_url_parameters_are_named(tmp_path: Path, query: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError, match="store URL parameter") as raised:
        durable_fx.open_store(url_of(tmp_path / "bad.db", query))
    for fragment in fragments:
        assert fragment in str(raised.value)
    assert not (tmp_path / "bad.db").exists()  # refused before anything was created


def test_the_cli_reports_a_bad_synchronous_value_in_one_line(tmp_path: Path) -> None:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed (pip install -e . installs it)")
    url = url_of(tmp_path / "x.db", "synchronous=bogus")
    done = subprocess.run(
        [str(SCRIPT), "--store", url, "list"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    assert "synchronous" in lines[0] and "full or normal" in lines[0]


def test_queues_of_a_url_with_parameters_use_the_same_file(tmp_path: Path) -> None:
    url = url_of(tmp_path / "q.db", "synchronous=normal&busy_timeout=2")

    async def round_trip() -> list[str]:
        queues = durable_fx.queues.open_queues(url)
        try:
            await queues.send("inbox", "hello")
            got = await queues.receive("inbox", limit=5, visibility=timedelta(seconds=30))
            return [message.text for message in got]
        finally:
            await queues.close()

    assert asyncio.run(round_trip()) == ["hello"]
    assert (tmp_path / "q.db").exists()


# -- a locked file: a bounded wait, then StoreBusyError --------------------------------------


registry = Registry()


@registry.activity()
def echo(value: Any) -> Any:
    return value


@registry.orchestrator()
def waits_for_go(ctx: OrchestrationContext, _: Any) -> Any:
    return (yield ctx.wait_for_event("go"))


@registry.orchestrator()
def two_steps(ctx: OrchestrationContext, value: Any) -> Any:
    first = yield ctx.call_activity(echo, value)
    return (yield ctx.call_activity(echo, first))


def test_start_and_raise_event_give_up_with_store_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"

    async def scenario() -> tuple[BaseException, BaseException]:
        client = AsyncDurableClient(url_of(path, "busy_timeout=0.2"))
        try:
            await client.start(waits_for_go, instance_id="running")
            with write_locked(path):
                with pytest.raises(StoreBusyError) as start_refused:
                    await client.start(waits_for_go, instance_id="new")
                with pytest.raises(StoreBusyError) as event_refused:
                    await client.raise_event("running", "go", 1)
            # Nothing was written, and the store works again once the lock is gone.
            assert await client.get("new") is None
            assert await client.raise_event("running", "go", 1) is True
            return start_refused.value, event_refused.value
        finally:
            await client.close()

    start_refused, event_refused = asyncio.run(scenario())
    for error in (start_refused, event_refused):
        assert str(path) in str(error) and "busy_timeout=0.2" in str(error)
        assert error.retry_after > 0  # type: ignore[attr-defined]
        assert isinstance(error.__cause__, sqlite3.OperationalError)


def test_a_call_waiting_for_the_lock_succeeds_once_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "released.db"

    async def scenario() -> str:
        client = AsyncDurableClient(url_of(path))  # the default budget: a few seconds
        try:
            await client.start(waits_for_go, instance_id="running")
            with write_locked(path) as holder:
                timer = release_later(holder, 0.3)
                started = await client.start(waits_for_go, instance_id="after-release")
                assert await client.raise_event("running", "go", 2) is True
                timer.join()
            return started
        finally:
            await client.close()

    assert asyncio.run(scenario()) == "after-release"


def test_queues_in_a_locked_file_give_up_with_store_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "queues.db"
    url = url_of(path, "busy_timeout=0.2")

    async def scenario() -> None:
        queues = durable_fx.queues.open_queues(url)
        try:
            await queues.send("inbox", "first")  # creates the table
            with write_locked(path), pytest.raises(StoreBusyError, match=r"busy_timeout=0\.2"):
                await queues.send("inbox", "second")
            await queues.send("inbox", "third")
            got = await queues.receive("inbox", limit=5, visibility=timedelta(seconds=30))
            assert [message.text for message in got] == ["first", "third"]
        finally:
            await queues.close()

    asyncio.run(scenario())


def test_opening_a_locked_file_outside_a_loop_gives_store_busy_error(tmp_path: Path) -> None:
    path = tmp_path / "new-and-locked.db"
    with write_locked(path), pytest.raises(StoreBusyError):
        durable_fx.open_store(url_of(path, "busy_timeout=0.1"))
    store = durable_fx.open_store(url_of(path))  # free again: it opens
    asyncio.run(store.close())


def test_opening_on_an_event_loop_does_not_wait_for_the_lock(tmp_path: Path) -> None:
    """The loop keeps running while the store thread waits: here the loop itself releases it."""
    path = tmp_path / "opened-on-a-loop.db"
    asyncio.run(durable_fx.open_store(url_of(path)).close())  # an existing store file

    async def scenario(holder: sqlite3.Connection) -> str:
        # A constructor that waited on the loop would wait for a lock only the loop can
        # release: it would give up after the budget and raise here instead of returning.
        store = durable_fx.open_store(url_of(path))
        client = AsyncDurableClient(store)
        try:
            start = asyncio.ensure_future(client.start(waits_for_go, instance_id="late"))
            await asyncio.sleep(0.05)
            holder.execute("ROLLBACK")  # only the loop can let the store in
            return await start
        finally:
            await store.close()

    with write_locked(path) as holder:
        assert asyncio.run(scenario(holder)) == "late"


def test_serve_on_a_file_that_is_not_a_store_fails_at_startup(tmp_path: Path) -> None:
    """``serve`` opens its store off the loop, so a bad file is still a startup error."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    command = [sys.executable, "-m", "durable_fx.cli", "serve", "serve_app:app"]
    done = subprocess.run(
        [*command, "--store", url_of(junk), "--port", str(free_port())],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "file is not a database" in done.stderr


# -- group commit ----------------------------------------------------------------------------


def test_concurrent_starts_and_events_all_commit_and_a_duplicate_fails_alone(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        client = AsyncDurableClient(url_of(tmp_path / "group.db"))
        try:
            ids = [f"g-{i:03d}" for i in range(120)]
            outcomes = await asyncio.gather(
                *(client.start(waits_for_go, instance_id=iid) for iid in ids),
                client.start(waits_for_go, instance_id=ids[7]),  # the same id twice, at once
                return_exceptions=True,
            )
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(refused) == 1 and isinstance(refused[0], InstanceExistsError)
            raised = await asyncio.gather(
                *(client.raise_event(iid, "go", iid, event_id="once") for iid in ids),
                *(client.raise_event(iid, "go", iid, event_id="once") for iid in ids[:10]),
            )
            assert raised.count(True) == len(ids) and raised.count(False) == 10
            for iid in ids:
                state = await client.get(iid)
                assert state is not None and state.status is OrchestrationStatus.PENDING
        finally:
            await client.close()

    asyncio.run(scenario())


def test_an_episode_that_fails_after_writing_does_not_fail_the_others(tmp_path: Path) -> None:
    """A damaged file makes one instance's commits fail halfway; the rest still complete."""
    path = tmp_path / "one-bad.db"
    durable_fx.open_store(url_of(path))  # create the schema, then damage it for one instance
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON history WHEN NEW.instance_id = 'bad'"
            " BEGIN SELECT RAISE(ABORT, 'damaged'); END"
        )

    async def scenario() -> dict[str, Any]:
        store = durable_fx.open_store(url_of(path))
        client = AsyncDurableClient(store)
        async with Worker(registry, store, max_poll_interval=0.05, shutdown_grace=1.0):
            ids = ["bad", *(f"ok-{i:02d}" for i in range(40))]
            await asyncio.gather(*(client.start(two_steps, i, instance_id=i) for i in ids))
            results = {iid: await client.wait(iid, timeout=WAIT) for iid in ids[1:]}
        bad = await client.get("bad")
        await store.close()
        assert bad is not None and bad.status is OrchestrationStatus.PENDING
        return {iid: state.output for iid, state in results.items()}

    outputs = asyncio.run(scenario())
    assert outputs == {iid: iid for iid in outputs}
