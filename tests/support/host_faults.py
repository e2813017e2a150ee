"""A Functions host over app instances that fail: for tests/test_host_faults.py and bench/.

``Host`` plays the Functions host as ``QueueProcessor`` does (the review's Q3):
it receives from every control partition, the legacy control queue and the
work-item queue, hides each message while its function runs (renewing the
hold), deletes it on success, releases it for ``retry_after`` after a failure
and copies it to ``<queue>-poison`` after ``maxDequeueCount`` failed deliveries
(or without invoking, once delivered more often than that). Its own requests
do not fail. It invokes each message on one of its ``Instance``s (app
processes), at random.

An instance's store can be given random faults (``FaultInjector``), a shared
``Outage`` and a ``Killer``: at a random request the process dies, before the
request leaves or after it applied. Nothing of a dead process runs on (every
later request of its store raises ``Killed``, which no ``except Exception``
catches), the host does not settle the messages it held (they come back after
``hold``), and a fresh instance takes its place.

``soak`` runs the fault suite's workload: N orchestrations (two activities in
a row, a fan-out of three, a one-second timer) under all of that at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import HttpRequest
from azure.storage.queue import QueueClient

from durable_fx import (
    AsyncDurableClient,
    DurableApp,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    when_all,
)
from durable_fx.hosting import queue_message
from durable_fx.queues import QueueBackend, QueuedMessage, decode_body, open_queues
from durable_fx.storage.azure import AzureStore, FaultInjector, open_azure_store
from tests.support.azurite import Azurite, new_hub

log = logging.getLogger("tests.soak")

__all__ = ["MAX_DEQUEUE_COUNT", "Host", "Instance", "Killed", "Killer", "Outage", "soak"]

MAX_DEQUEUE_COUNT = 5
"""host.json's ``maxDequeueCount`` (the host's default)."""


class Killed(BaseException):
    """The process died at this point: nothing after it runs (no ``except Exception``)."""


class Killer(AsyncHTTPPolicy[Any, Any]):
    """Kills its process at a random request: ``rate`` per request, half of them after
    the request applied (the process died before it saw the response)."""

    def __init__(self, rate: float = 0.0, *, seed: int = 0) -> None:
        self.rate = rate
        self.dead = False
        self.died_at = 0.0
        """``time.monotonic()`` at the death."""
        self.where = ""
        """What the fatal request was (``request_kind``), and before or after it applied."""
        self._random = random.Random(seed)
        self._match: Callable[[HttpRequest], bool] | None = None

    def arm(self, match: Callable[[HttpRequest], bool], where: str) -> None:
        """Die at the next request that ``match``es, before it leaves."""
        self._match = match
        self.where = where

    def kill(self, where: str) -> None:
        """Die now (every later request of the process raises ``Killed``)."""
        self.dead, self.where, self.died_at = True, where, time.monotonic()

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        if self.dead:
            raise Killed("the process is gone")
        if self._match is not None and self._match(request.http_request):
            self.kill(self.where)
            raise Killed(self.where)
        roll = self._random.random()
        if roll >= self.rate:
            return await self.next.send(request)
        kind = request_kind(request)
        if roll < self.rate / 2:
            self.kill(f"{kind}, before")
            raise Killed(self.where)
        self.kill(f"{kind}, after")
        await self.next.send(request)
        raise Killed(self.where)


_HISTORY_ROW = re.compile(rb"RowKey='h")
_CONTROL_MESSAGES = re.compile(r"-control(-\d\d)?/messages$")


def _body(request: HttpRequest) -> bytes:
    return request.body if isinstance(request.body, bytes) else b""


def _commit(request: HttpRequest) -> bool:
    """An episode's commit (the transaction that writes history rows)."""
    return request.url.endswith("$batch") and _HISTORY_ROW.search(_body(request)) is not None


def _work_put(request: HttpRequest) -> bool:
    return request.method == "POST" and "-workitems/messages" in request.url


def _wake_up(request: HttpRequest) -> bool:
    """A control message put, or a guard made visible (an update of a control message)."""
    path = request.url.split("?")[0]
    control = _CONTROL_MESSAGES.search(path) is not None or (
        "-control" in path and "/messages/" in path
    )
    return request.method in ("POST", "PUT") and control


KILL_POINTS: dict[str, Callable[[Killer], None]] = {
    "control-after-takeover": lambda k: k.arm(_commit, "before the commit"),
    "control-after-commit": lambda k: k.arm(_work_put, "before the work item's put"),
    "work-mid-activity": lambda k: k.kill("in the activity"),
    "work-at-wake-up": lambda k: k.arm(_wake_up, "at the instance's wake-up"),
}
"""Where to kill an instance during the second step of a chain, armed (or killed) from the
activity of that step: the control invocation after its takeover, before its commit; after
its commit, before the work item's put; the work-item invocation in its activity; at its
wake-up for the instance, once the result is written."""


def request_kind(request: PipelineRequest[Any]) -> str:
    """A request as the suite counts it: service, method and which queue or table call."""
    http = request.http_request
    path = http.url.split("?")[0]
    if "/$batch" in path:
        return "table transaction"
    if "-workitems" in path or "-control" in path:
        queue = "work-item queue" if "-workitems" in path else "control queue"
        verbs = {"POST": "put", "GET": "receive", "DELETE": "delete", "PUT": "update"}
        if not path.endswith("/messages") and "/messages/" not in path:
            verbs = {"PUT": "create", "GET": "properties"}
        return f"{queue} {verbs.get(http.method, http.method)}"
    if ".table." in path or "Tables" in path or "(" in path:
        return f"table {http.method}"
    return f"{'blob' if '-payloads' in path else 'other'} {http.method}"


class Outage:
    """Storage unreachable for a while (``begin(seconds)``), for every store given ``policy()``."""

    def __init__(self) -> None:
        self.until = 0.0
        self.refused = 0

    def begin(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def end(self) -> None:
        self.until = 0.0

    @property
    def on(self) -> bool:
        return time.monotonic() < self.until

    def policy(self) -> AsyncHTTPPolicy[Any, Any]:
        """A policy for one store (a pipeline links its policies: one object per store)."""
        return _Unreachable(self)


class _Unreachable(AsyncHTTPPolicy[Any, Any]):
    """Fails every request before it leaves while its ``Outage`` lasts."""

    def __init__(self, outage: Outage) -> None:
        self.outage = outage

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        if self.outage.on:
            self.outage.refused += 1
            raise ServiceRequestError("test: storage is unreachable")
        return await self.next.send(request)


@dataclass
class Instance:
    """One app process: the app, its store, and what may kill it."""

    app: DurableApp
    store: AzureStore | None = None
    """Closed by the host when the instance is replaced (``None``: the test's to close)."""
    killer: Killer | None = None
    faults: FaultInjector | None = None
    running: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no invocation runs on it."""
    handlers: dict[str, Callable[..., Any]] = field(init=False)

    def __post_init__(self) -> None:
        functions: dict[str, Any] = {
            str(f.get_function_name()): f for f in self.app.get_functions()
        }
        durable = [n for n in functions if n.startswith("dfx_control") or n == "dfx_work_items"]
        self.handlers = {
            functions[name].get_trigger().queue_name: functions[name].get_user_function()
            for name in durable
        }

    @property
    def dead(self) -> bool:
        return self.killer is not None and self.killer.dead

    async def close(self) -> None:
        # A dead process's requests raise Killed even while closing, and what a dead
        # process does then proves nothing: each part is closed whatever the other
        # did, so no connection is left to the garbage collector.
        with contextlib.suppress(Killed, Exception):
            await self.app.runtime.aclose()
        if self.store is not None:
            with contextlib.suppress(Killed, Exception):
                await self.store.close()


class Host:
    """Receives the hub's messages and invokes them on its instances by the host's rules.

    Args:
        instances: The app processes to invoke on (at random).
        queues: The host's own queue client (reliable).
        hold: How long a received message stays hidden (renewed while it runs).
        retry_after: host.json's ``visibilityTimeout``: the hold after a failure.
        restart: Makes the instance that replaces a dead one (``None``: none dies).
        lose_deletes: Fraction of successful invocations whose delete the host loses
            (the message comes back after ``hold``, as after a host crash).
        capacity: Invocations at once (``batchSize + newBatchThreshold``).
        idle_wait: How long ``run_until`` waits after a round that found nothing.
    """

    def __init__(
        self,
        instances: list[Instance],
        queues: QueueBackend,
        *,
        hold: timedelta = timedelta(minutes=10),
        retry_after: timedelta = timedelta(seconds=0.5),
        restart: Callable[[], Instance] | None = None,
        lose_deletes: float = 0.0,
        capacity: int = 24,
        idle_wait: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.instances = instances
        self.queues = queues
        self.hold = hold
        self.retry_after = retry_after
        self.restart = restart
        self.lose_deletes = lose_deletes
        self.capacity = capacity
        self.idle_wait = idle_wait
        self._random = random.Random(seed)
        self.polled = list(instances[0].handlers)
        self.invocations: Counter[str] = Counter()
        self.failures: list[str] = []
        """``"<queue>: <error>"`` for each invocation that raised."""
        self.poisoned: list[str] = []
        """Queues of the messages the host moved to a poison queue."""
        self.gone: list[str] = []
        """Messages already gone when the host deleted them after a success."""
        self.deaths: list[str] = []
        """Where each dead instance died (``Killer.where``)."""
        self.fates: dict[str, list[str]] = {}
        """How each delivery of a message ended, by message id (what led up to a poisoning)."""
        self.poisoned_fates: list[str] = []
        """``"<queue> <id>: <fates>"`` for each message the host poisoned."""
        self.lost_deletes = 0
        self.lapsed_holds = 0
        """Deletes that failed because the hold had run out (the test's loop was starved)."""
        self._held_since: dict[str, float] = {}
        self._retired: list[asyncio.Task[None]] = []

    async def pump(self) -> int:
        """One receive per queue; runs the messages concurrently; returns how many."""
        received: list[QueuedMessage] = []
        for queue in self.polled:
            received += await self.queues.receive(queue, limit=16, visibility=self.hold)
        await asyncio.gather(*(self.process(message) for message in received))
        return len(received)

    async def run_until(
        self, done: Callable[[], Any], timeout: float, *, check_every: float = 0.0
    ) -> None:
        """Receive and invoke continuously until ``await done()``; fail after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        running: set[asyncio.Task[None]] = set()
        checked = 0.0
        try:
            while True:
                if time.monotonic() - checked >= check_every:
                    if await done():
                        return
                    checked = time.monotonic()
                assert time.monotonic() < deadline, (
                    f"not done after {timeout} s; host failures: {self.failures[-5:]}"
                )
                found = 0
                for queue in self.polled:
                    room = min(16, self.capacity - len(running))
                    if room <= 0:
                        break
                    for message in await self.queues.receive(
                        queue, limit=room, visibility=self.hold
                    ):
                        task = asyncio.ensure_future(self.process(message))
                        running.add(task)
                        task.add_done_callback(running.discard)
                        found += 1
                if not found:
                    await asyncio.sleep(self.idle_wait)
        finally:
            await asyncio.gather(*running, return_exceptions=True)

    async def process(self, message: QueuedMessage) -> None:
        """Invoke one received message and settle it as ``QueueProcessor`` does."""
        if message.dequeue_count > MAX_DEQUEUE_COUNT:
            await self._poison(message)
            return
        instance = self._random.choice([i for i in self.instances if not i.dead])
        self.invocations[message.queue] += 1
        settled = asyncio.Event()
        renewal = asyncio.ensure_future(self._renew(message, settled))
        instance.running += 1
        instance.idle.clear()
        try:
            await instance.handlers[message.queue](
                msg=queue_message(message, decode_body(message.text))
            )
        except Killed:
            pass
        except Exception as error:
            if not instance.dead:
                self._fate(message, "failed")
                self.failures.append(f"{message.queue}: {type(error).__name__}: {error}")
                latest = await _stop(renewal, settled)
                if message.dequeue_count >= MAX_DEQUEUE_COUNT:
                    await self._poison(latest)
                else:
                    await self.queues.update_visibility(latest, self.retry_after)
                return
        else:
            if not instance.dead:
                latest = await _stop(renewal, settled)
                if self._random.random() < self.lose_deletes:
                    self._fate(message, "delete lost")
                    self.lost_deletes += 1
                elif await self.queues.delete(latest):
                    self._held_since.pop(message.id, None)
                elif self._hold_ran_out(message):
                    self.lapsed_holds += 1  # received again meanwhile: a late renewal's doing
                else:
                    self.gone.append(f"{message.queue}: {message.id}")
                return
        finally:
            instance.running -= 1
            if not instance.running:
                instance.idle.set()
        # The instance died with the message: the host dies with it, so nothing renews
        # or settles the message; it comes back once its hold runs out.
        self._fate(message, "killed")
        renewal.cancel()
        self._replace(instance)

    def _replace(self, dead: Instance) -> None:
        if dead not in self.instances or self.restart is None:
            return
        assert dead.killer is not None
        self.deaths.append(dead.killer.where)
        self.instances[self.instances.index(dead)] = self.restart()
        self._retired.append(asyncio.ensure_future(self._retire(dead)))

    async def _retire(self, dead: Instance) -> None:
        if dead.running:
            await dead.idle.wait()
        await dead.close()

    async def _renew(self, message: QueuedMessage, settled: asyncio.Event) -> QueuedMessage:
        """Keep ``message`` held until ``settled``; the latest receipt.

        A renewal in flight is awaited, never cut short: it may have changed the
        receipt already, and the host settles the message with the latest one
        (the Functions host stops its renewal timer and waits for it likewise).
        """
        latest = message
        self._held_since[message.id] = time.monotonic()
        while not await _wait(settled, self.hold.total_seconds() / 2):
            asked = time.monotonic()
            renewed = await self.queues.update_visibility(latest, self.hold)
            if renewed is None:
                self._fate(message, "hold ran out")
                self._held_since[message.id] = 0.0  # the hold ran out before the renewal
                return latest
            latest = renewed
            self._held_since[message.id] = asked  # the new hold counts from the request
        return latest

    def _hold_ran_out(self, message: QueuedMessage) -> bool:
        """Whether the host's hold on ``message`` may have lapsed (a starved loop)."""
        since = self._held_since.pop(message.id, 0.0)
        return time.monotonic() - since >= self.hold.total_seconds()

    def _fate(self, message: QueuedMessage, fate: str) -> None:
        self.fates.setdefault(message.id, []).append(fate)

    async def _poison(self, message: QueuedMessage) -> None:
        fates = ", ".join(self.fates.get(message.id, [])) or "none recorded"
        self.poisoned_fates.append(
            f"{message.queue} {message.id} (delivery {message.dequeue_count}): {fates}"
        )
        self.poisoned.append(message.queue)
        await self.queues.poison(message, "failed too often")

    async def close(self) -> None:
        """Close the queues, every instance, and the dead ones once they stopped."""
        await asyncio.gather(*self._retired)
        for instance in self.instances:
            await instance.close()
        await self.queues.close()


async def _stop(renewal: asyncio.Task[QueuedMessage], settled: asyncio.Event) -> QueuedMessage:
    """Stop renewing a message; its latest receipt (a renewal in flight finishes first)."""
    settled.set()
    return await renewal


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """True if ``event`` is set within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def chain_instance(
    url: str, kill: Callable[[Killer], None] | None = None, *, lease: timedelta | None = None
) -> Instance:
    """An instance of an app whose ``chain`` runs ``step`` three times (``chain(0) == 3``).

    ``kill`` (one of ``KILL_POINTS``) is applied to the instance's killer from the
    activity of the second step.
    """
    killer = Killer()
    store = open_azure_store(url, policies=[killer])
    app = DurableApp(store=store)
    if lease is not None:
        app.runtime.settings = dataclasses.replace(app.runtime.settings, lease=lease)

    @app.activity()
    def step(n: int) -> int:
        if n == 1 and kill is not None:
            kill(killer)
        return n + 1

    @app.orchestrator()
    def chain(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        for _ in range(3):
            n = yield ctx.call_activity(step, n)
        return n

    return Instance(app, store, killer)


# -- the soak ------------------------------------------------------------------------------


class _Ledger:
    """Activity runs by input, across every instance (threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.runs: Counter[str] = Counter()

    def add(self, key: str) -> None:
        with self._lock:
            self.runs[key] += 1


def build_job_app(store: AzureStore, ledger: _Ledger, lease: timedelta) -> DurableApp:
    """The soak's app: ``job(n)`` returns ``3n + 12`` after five activities and a timer."""
    app = DurableApp(store=store)
    app.runtime.settings = dataclasses.replace(app.runtime.settings, lease=lease)

    @app.activity()
    def add(args: list[Any]) -> int:
        job, step, x, y = args
        ledger.add(f"{job}/{step}")
        return int(x) + int(y)

    @app.orchestrator()
    def job(ctx: OrchestrationContext, n: int) -> Orchestrator[int]:
        a = yield ctx.call_activity(add, [n, "a", n, 1])
        b = yield ctx.call_activity(add, [n, "b", a, 2])
        parts = yield when_all([ctx.call_activity(add, [n, f"c{i}", b, i]) for i in range(3)])
        yield ctx.create_timer(timedelta(seconds=1))
        return int(sum(parts))

    return app


@dataclass
class SoakFigures:
    """What a soak run saw, for the test's assertions and the bench's report."""

    orchestrations: int
    completed: int = 0
    wrong_outputs: list[str] = field(default_factory=list)
    faults_before: int = 0
    faults_after: int = 0
    kills: list[str] = field(default_factory=list)
    outage_seconds: float = 0.0
    outage_refused: int = 0
    invocations: dict[str, int] = field(default_factory=dict)
    host_failures: int = 0
    host_poisoned: list[str] = field(default_factory=list)
    host_poisoned_fates: list[str] = field(default_factory=list)
    """How each delivery of each poisoned message ended before the host poisoned it."""
    store_poisoned: int = 0
    gone: int = 0
    lost_deletes: int = 0
    lapsed_holds: int = 0
    activity_runs: int = 0
    activity_reruns: int = 0
    seconds_to_complete: float = 0.0
    seconds_to_settle: float | None = None
    messages_left: int = 0
    states: list[Any] = field(default_factory=list, repr=False)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    """The rows of each instance that did not finish in time."""

    def summary(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields.pop("states")
        fields["kills_by_step"] = dict(Counter(self.kills))
        fields.pop("kills")
        fields["kill_count"] = len(self.kills)
        return fields


async def soak(
    azurite: Azurite,
    *,
    orchestrations: int = 100,
    instances: int = 2,
    fault_rate: float = 0.07,
    kill_rate: float = 0.004,
    outage_seconds: float = 10.0,
    outage_after: float = 4.0,
    lease: timedelta = timedelta(seconds=5),
    hold: timedelta = timedelta(seconds=8),
    retry_after: timedelta = timedelta(seconds=1),
    lose_deletes: float = 0.02,
    timeout: float = 180.0,
    settle_timeout: float = 90.0,
    seed: int = 12,
) -> SoakFigures:
    """Run ``orchestrations`` jobs under the host with every fault at once; report what happened.

    Jobs not finished within ``timeout`` are described in ``stuck`` (and the
    run ends there).

    Faults, kills and the outage stop once every job completed; the host then
    runs on until every queue of the hub is empty, hidden messages included
    (``seconds_to_settle``; ``None`` if it never was within ``settle_timeout``).
    """
    url = azurite.connection_string(new_hub())
    connection_string = azurite.connection_string()
    ledger = _Ledger()
    outage = Outage()
    seeds = iter(range(seed * 1000, seed * 1000 + 100_000))
    figures = SoakFigures(orchestrations, outage_seconds=outage_seconds)
    all_faults: list[FaultInjector] = []
    killers: list[Killer] = []

    def start_instance() -> Instance:
        faults = FaultInjector(fault_rate, seed=next(seeds))
        killer = Killer(kill_rate, seed=next(seeds))
        all_faults.append(faults)
        killers.append(killer)
        store = open_azure_store(url, policies=[outage.policy(), faults, killer])
        return Instance(build_job_app(store, ledger, lease), store, killer, faults)

    monitor = open_azure_store(url)
    client = AsyncDurableClient(monitor)
    first = [start_instance() for _ in range(instances)]
    host = Host(
        first,
        open_queues(monitor),
        hold=hold,
        retry_after=retry_after,
        restart=start_instance,
        lose_deletes=lose_deletes,
        seed=seed,
    )
    started = time.monotonic()
    ids = [await client.start("job", n, instance_id=f"job-{n:03d}") for n in range(orchestrations)]
    outage_started = False

    async def all_completed() -> bool:
        nonlocal outage_started
        if not outage_started and time.monotonic() - started >= outage_after:
            outage_started = True
            outage.begin(outage_seconds)
        page = await client.query(page_size=1000)
        done = [s for s in page.items if s.status.is_terminal]
        figures.completed = len(done)
        log.info(
            "%.0f s: %d completed, %d invocations, %d deaths, %d host failures",
            time.monotonic() - started,
            len(done),
            host.invocations.total(),
            len(host.deaths),
            len(host.failures),
        )
        return len(done) == orchestrations

    try:
        try:
            await host.run_until(all_completed, timeout, check_every=1.0)
        except AssertionError:
            figures.stuck = await _describe_unfinished(client, connection_string, monitor, ids)
            return figures
        figures.seconds_to_complete = round(time.monotonic() - started, 1)
        # The faults stop; what they left behind must run out on its own.
        outage.end()
        for injector in all_faults:
            injector.enabled = False
        for killer in killers:
            killer.rate = 0.0
        names = monitor.settings.names
        queues = [*names.control_queues, names.legacy_control_queue, names.work_queue]
        calm = time.monotonic()

        async def empty() -> bool:
            counts = await asyncio.gather(*(_length(connection_string, q) for q in queues))
            figures.messages_left = sum(counts)
            return figures.messages_left == 0

        try:
            await host.run_until(empty, settle_timeout, check_every=1.0)
            figures.seconds_to_settle = round(time.monotonic() - calm, 1)
        except AssertionError:
            figures.seconds_to_settle = None
        for iid in ids:
            state = await client.get(iid, history=True)
            assert state is not None
            figures.states.append(state)
            n = int(iid.split("-")[1])
            if state.status is not OrchestrationStatus.COMPLETED or state.output != 3 * n + 12:
                figures.wrong_outputs.append(f"{iid}: {state.status.value} {state.output!r}")
        figures.store_poisoned = len(await client.poisoned())
    finally:
        figures.faults_before = sum(f.failed_before for f in all_faults)
        figures.faults_after = sum(f.failed_after for f in all_faults)
        figures.kills = list(host.deaths)
        figures.outage_refused = outage.refused
        figures.invocations = dict(host.invocations)
        figures.host_failures = len(host.failures)
        figures.host_poisoned = list(host.poisoned)
        figures.host_poisoned_fates = list(host.poisoned_fates)
        figures.gone = len(host.gone)
        figures.lost_deletes = host.lost_deletes
        figures.lapsed_holds = host.lapsed_holds
        figures.activity_runs = sum(ledger.runs.values())
        figures.activity_reruns = sum(n - 1 for n in ledger.runs.values())
        await host.close()
        await monitor.close()
    return figures


async def _describe_unfinished(
    client: AsyncDurableClient, connection_string: str, store: AzureStore, ids: list[str]
) -> list[dict[str, Any]]:
    """Every row (but history) of each unfinished instance, and its history's last events."""
    from azure.data.tables import TableClient

    described = []
    table = TableClient.from_connection_string(connection_string, store.settings.names.table)
    for iid in ids:
        state = await client.get(iid, history=True)
        if state is not None and state.status.is_terminal:
            continue
        query = f"PartitionKey eq '{iid}'"
        rows = await asyncio.to_thread(list, table.query_entities(query))  # pages lazily
        described.append(
            {
                "id": iid,
                "status": state.status.value if state else None,
                "last_events": [e.kind for e in (state.history or [])[-4:]] if state else [],
                "rows": [
                    {k: v for k, v in r.items() if k in _DESCRIBED}
                    for r in rows
                    if not str(r["RowKey"]).startswith("h")
                ],
            }
        )
    table.close()
    return described


_DESCRIBED = {"RowKey", "Owner", "OwnedUntil", "Version", "VisibleAt", "DequeueCount", "Local"}


async def _length(connection_string: str, queue: str) -> int:
    """``ApproximateMessagesCount``: every message of ``queue``, hidden ones included."""

    def read() -> int:
        client = QueueClient.from_connection_string(connection_string, queue)
        with client:
            return int(client.get_queue_properties().approximate_message_count or 0)

    return await asyncio.to_thread(read)
