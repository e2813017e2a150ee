"""Worker subprocesses, the activity ledger and history checks for the durability tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from durable_fx import DurableClient, HistoryEvent, OrchestrationState, open_store
from tests.apps.durability_app import LEDGER_ENV, STEP_DELAY_ENV
from tests.support.instances import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One ``python -m tests.apps.run_worker`` subprocess over a store file."""

    def __init__(
        self,
        workdir: Path,
        store_url: str,
        *,
        name: str,
        lease_seconds: float,
        step_delay: float,
        ledger: Path,
    ) -> None:
        self.name = name
        self._ready = workdir / f"{name}.ready"
        self.log_path = workdir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            LEDGER_ENV: str(ledger),
            STEP_DELAY_ENV: str(step_delay),
        }
        command = [
            sys.executable,
            "-m",
            "tests.apps.run_worker",
            store_url,
            str(self._ready),
            str(lease_seconds),
        ]
        self._log: IO[bytes] = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        """The worker's process id (what its activities write to the ledger)."""
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until the worker runs; fail with its output if it died."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"worker {self.name} exited with {self.process.returncode}:\n{self.output()}"
                )
            return self._ready.exists()

        wait_until(ready, timeout=timeout, what=f"worker {self.name} to start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease released, no buffered result written."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        """Everything the worker printed so far (its log)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class WorkerPool:
    """Starts worker subprocesses and makes sure none outlives the test."""

    def __init__(self, workdir: Path, store_url: str, ledger: Path) -> None:
        self._workdir = workdir
        self._store_url = store_url
        self._ledger = ledger
        self._workers: list[WorkerProcess] = []

    def start(
        self, name: str, *, lease_seconds: float = 60.0, step_delay: float = 0.0
    ) -> WorkerProcess:
        """Start a worker and wait until it runs."""
        worker = WorkerProcess(
            self._workdir,
            self._store_url,
            name=name,
            lease_seconds=lease_seconds,
            step_delay=step_delay,
            ledger=self._ledger,
        )
        self._workers.append(worker)
        worker.wait_ready()
        return worker

    def close(self) -> None:
        """Stop every worker still running (SIGTERM, then SIGKILL)."""
        for worker in self._workers:
            worker.stop()

    def errors(self) -> list[str]:
        """Log lines of every worker that report an error or a traceback."""
        return [
            f"{worker.name}: {line}"
            for worker in self._workers
            for line in worker.output().splitlines()
            if "ERROR" in line or "Traceback" in line
        ]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One run of an activity, as the activity itself recorded it."""

    instance_id: str
    task_id: int
    key: str
    pid: int
    delivery: int

    @property
    def task(self) -> tuple[str, int]:
        """Which task this run served: ``(instance id, task id)``."""
        return self.instance_id, self.task_id


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Every activity run so far (an absent ledger means none)."""
    if not path.exists():
        return []
    return [LedgerEntry(**json.loads(line)) for line in path.read_text().splitlines()]


def runs_per_task(entries: Iterable[LedgerEntry]) -> Counter[tuple[str, int]]:
    """How many times each task ran."""
    return Counter(entry.task for entry in entries)


def histories(client: DurableClient, instance_ids: Iterable[str]) -> dict[str, OrchestrationState]:
    """Each instance's state with its history."""
    states: dict[str, OrchestrationState] = {}
    for instance_id in instance_ids:
        state = client.get(instance_id, history=True)
        assert state is not None, f"instance {instance_id} is gone"
        states[instance_id] = state
    return states


def events_of(state: OrchestrationState, kind: str) -> list[Any]:
    """The events of one kind in an instance's history."""
    return [event for event in state.history or [] if event.kind == kind]


def completed_tasks(state: OrchestrationState) -> set[tuple[str, int]]:
    """``(instance id, task id)`` of every activity whose result is in the history."""
    return {(state.instance_id, e.task_scheduled_id) for e in events_of(state, "TaskCompleted")}


def assert_history_consistent(state: OrchestrationState) -> None:
    """No episode was committed twice and nothing is missing, judging by the history.

    One execution start and one completion; every scheduled task id, timer id
    and event id once; every result once, for a task that was scheduled.
    """
    history: list[HistoryEvent] = state.history or []
    where = f"instance {state.instance_id}"
    kinds = Counter(event.kind for event in history)
    assert kinds["ExecutionStarted"] == 1, f"{where}: {kinds['ExecutionStarted']} starts"
    assert kinds["ExecutionCompleted"] == 1, f"{where}: {kinds['ExecutionCompleted']} completions"
    assert history[-1].kind == "ExecutionCompleted", f"{where}: ends with {history[-1].kind}"
    action_ids = Counter(event.event_id for event in history if event.event_id >= 0)
    repeated = {event_id: n for event_id, n in action_ids.items() if n > 1}
    assert not repeated, f"{where}: actions recorded more than once: {repeated}"
    scheduled = [e.event_id for e in events_of(state, "TaskScheduled")]
    results = [e.task_scheduled_id for e in events_of(state, "TaskCompleted")]
    assert not events_of(state, "TaskFailed"), f"{where}: {events_of(state, 'TaskFailed')}"
    assert sorted(results) == sorted(scheduled), (
        f"{where}: results {sorted(results)} do not match scheduled tasks {sorted(scheduled)}"
    )
    created = [e.event_id for e in events_of(state, "TimerCreated")]
    fired = [e.timer_id for e in events_of(state, "TimerFired")]
    assert len(fired) == len(set(fired)), f"{where}: a timer fired twice: {fired}"
    assert set(fired) <= set(created), f"{where}: timers {fired} fired, {created} created"


def poisoned_count(store_url: str) -> int:
    """How many messages the store took out of circulation."""

    async def count() -> int:
        store = open_store(store_url)
        try:
            return len(await store.poisoned_messages())
        finally:
            await store.close()

    return asyncio.run(count())
