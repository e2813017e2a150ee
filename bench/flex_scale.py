"""What the scale controllers would do with parked emails, and what parked emails cost.

    python bench/flex_scale.py [--n 100] [--only receipts,timeouts,sqlite]
                               [--timeout-s 0] [--concurrency 16] [--out FILE]
                               [--park-dir DIR | --from-park DIR]

Runs the email pipeline (``function_app:app``) under ``durable-fx serve`` on
an Azure store on a private Azurite, with a local SMTP server playing the
provider, parks ``--n`` emails (each sent and waiting for its delivery
receipt) and applies the scale controllers' model (``tests/support/scale_model.py``:
the Flex per-function target and KEDA's visible-only rule) to every queue a
trigger of the app listens on (``<hub>-*`` but poison queues, and the event
source queue ``email-delivery-events``). Prints one JSON document.

"At zero" figures are taken with ``serve`` stopped: the queues as the scale
controller sees them while no instance runs, which is what decides whether the
app stays at zero and how far it scales out from it. "Live" figures are the
largest over samples taken every ``--sample-s`` while ``serve`` works.

- receipts (receipt timeout 24 h, the default): park N; the target at idle
  (live, then at zero); one new email started while at zero (its wake-up is the
  one visible message), then live while ``serve`` runs it; table rows and bytes
  and the serve process's memory with N parked; then N + 1 receipts through
  the signed webhook: time until all completed, and the target meanwhile;
  idle again afterwards.
- timeouts (receipt timeout ``--timeout-s``, default 60 s + 0.3 s per email):
  park N, stop ``serve`` at once, wait until every receipt timeout is due,
  take the target with all N due, then start ``serve`` and time the N
  escalations. With ``--jump-clock`` the wait is a jump instead: Azurite and
  ``serve`` run under libfaketime (Debian's ``faketime``), and their clock is
  moved past the last deadline while ``serve`` is stopped, so the timeout can
  exceed a long park without the run waiting it out.
- park (with ``--park-dir DIR --timeout-s T``): park N as receipts does, take
  its parked figures, stop, and keep Azurite's data in DIR. ``--from-park DIR``
  then runs receipts or timeouts on a copy of it, without parking again: at
  10,000 emails Azurite parks about 2 a second, so one park serves both (T
  longer than the park and the receipts run, so nothing is due before them).
- sqlite: the same pipeline on a SQLite file: park N, file size and rows,
  memory, N receipts and the completion throughput.

Waiting for completions ends once no instance changed for ``--stall-s`` (an
instance a receipt never reaches is counted in ``not_completed``) or after
``--resume-limit-s``. The document is written to ``--out`` after every phase,
and SIGTERM stops ``serve`` and Azurite and keeps the figures so far.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from _report import dump, header  # noqa: E402
from azure.data.tables import TableServiceClient  # noqa: E402
from azure.storage.blob import BlobServiceClient  # noqa: E402
from azure.storage.queue import QueueServiceClient  # noqa: E402

from durable_fx.storage.azure._settings import partition_of  # noqa: E402
from email_pipeline.localrun import AppProcess  # noqa: E402
from email_pipeline.localsmtp import LocalSmtp  # noqa: E402
from tests.support.azurite import Azurite, AzuriteProcess, new_hub  # noqa: E402
from tests.support.parked_emails import (  # noqa: E402
    EVENT_QUEUES,
    AzureObserver,
    Instance,
    Observer,
    SqliteObserver,
    app_settings,
    post_emails,
    post_receipts,
    start_directly,
    wait_for,
    wait_while_moving,
)
from tests.support.scale_model import ScaleRules, model, sample_queues, trigger_queues  # noqa: E402

DAY = 86400.0


class Bench:
    """One run: Azurite, the SMTP server, the rules and the options."""

    def __init__(self, azurite: Azurite, smtp: LocalSmtp, workdir: Path, args: Any) -> None:
        self.azurite = azurite
        self.smtp = smtp
        self.workdir = workdir
        self.args = args
        self.rules = ScaleRules.of_repo()
        self.queues = QueueServiceClient.from_connection_string(azurite.connection_string())
        self.save: Callable[[], object] = lambda: None
        """Writes the figures so far (set by ``main``): a run cut short keeps what it measured."""
        self.clock: FakeClock | None = None
        """Azurite's and serve's clock, when ``--jump-clock`` (set by ``main``)."""

    def wait_until_due(self, seconds: float) -> None:
        """Let ``seconds`` pass for the stores: sleep, or jump the fake clock."""
        if self.clock is None:
            time.sleep(max(0.0, seconds))
        else:
            self.clock.jump(max(0.0, seconds))

    def now(self) -> datetime:
        """The time the stores' rows are stamped with (ahead of ours after a jump)."""
        return datetime.now(UTC) + timedelta(seconds=self.clock.offset if self.clock else 0.0)

    def serve(self, store_url: str, timeout_s: float, name: str) -> AppProcess:
        process = AppProcess(
            store_url, app_settings(self.smtp.port, timeout_s), self.workdir / f"{name}.log"
        )
        return process.start()

    def target(self, hub: str) -> dict[str, Any]:
        return model(self._sample(hub), self.rules)

    def _sample(self, hub: str) -> list[Any]:
        return sample_queues(self.queues, trigger_queues(self.queues, hub, EVENT_QUEUES))

    @contextmanager
    def live(self, hub: str) -> Iterator[dict[str, Any]]:
        """Sample the queues every ``--sample-s`` while the block runs; the largest figures."""
        found: dict[str, Any] = {"samples": 0}
        stop = threading.Event()

        def run() -> None:
            while not stop.is_set():
                _keep_largest(found, self.target(hub))
                stop.wait(self.args.sample_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield found
        finally:
            stop.set()
            thread.join()

    def settle(self, hub: str, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until no trigger queue has a visible message; the model then."""
        deadline = time.monotonic() + timeout
        while True:
            figures = self.target(hub)
            if figures["visible"] == 0 or time.monotonic() > deadline:
                return figures
            time.sleep(0.5)


class FakeClock:
    """libfaketime's offset for the processes started after ``install``: Azurite and serve.

    The offset lives in a file that libfaketime rereads every second, so a
    running Azurite sees a jump too. This process keeps the real clock.
    """

    def __init__(self, workdir: Path) -> None:
        libraries = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
        if not libraries:
            raise SystemExit("--jump-clock needs libfaketime: apt-get install faketime")
        self.offset = 0.0
        self._file = workdir / "faketime"
        self._file.write_text("+0\n")
        self._env = {
            "LD_PRELOAD": str(libraries[0]),
            "FAKETIME_TIMESTAMP_FILE": str(self._file),
            # Timeouts, sleeps and event loops keep running on real time.
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_CACHE_DURATION": "1",
        }

    def install(self) -> None:
        """Processes started from now on run on this clock."""
        os.environ.update(self._env)

    def jump(self, seconds: float) -> None:
        self.offset += seconds
        self._file.write_text(f"+{self.offset:.0f}s\n")
        time.sleep(2.5)  # libfaketime rereads the file once a second


def _keep_largest(found: dict[str, Any], figures: dict[str, Any]) -> None:
    found["samples"] += 1
    for key in ("flex_instances", "flex_largest_function", "keda_replicas", "visible", "messages"):
        found[f"max_{key}"] = max(found.get(f"max_{key}", 0), figures[key])
    if figures["flex_instances"] >= found.get("at_max_flex", {}).get("flex_instances", -1):
        found["at_max_flex"] = figures


# -- parking, resuming --------------------------------------------------------------------


def park(process: AppProcess, observer: Observer, tag: str, n: int, args: Any) -> dict[str, Any]:
    """Start ``n`` emails through the HTTP API; wait until each awaits its receipt."""
    t0 = time.perf_counter()
    post_emails(_base(process), process.key, tag, n, args.concurrency)
    posted = time.perf_counter()
    # Sent, at least: with a short receipt timeout the first may time out before the last is sent.
    wait_for(observer, f"email-{tag}-", _sent, n, args.wait_s, poll=args.poll_s)
    parked = time.perf_counter()
    return {
        "emails": n,
        "post_s": round(posted - t0, 2),
        "park_s": round(parked - t0, 2),
        "parked_per_s": round(n / (parked - t0), 1),
    }


def _parked(instance: Instance) -> bool:
    return instance.awaiting_receipt


def _sent(instance: Instance) -> bool:
    status = instance.custom_status if isinstance(instance.custom_status, dict) else {}
    return instance.awaiting_receipt or status.get("stage") not in (None, "sending")


def resume(
    process: AppProcess,
    observer: Observer,
    prefix: str,
    args: Any,
    progress: Callable[[int, float], object] | None = None,
) -> dict[str, Any]:
    """A ``delivered`` receipt for every parked email under ``prefix``; time to completion."""
    waiting = [i for i in observer.instances(prefix) if i.awaiting_receipt]
    first = datetime.now(UTC)
    t0 = time.perf_counter()
    post_receipts(_base(process), process.key, [i.message_id for i in waiting], args.concurrency)
    posted = time.perf_counter()
    done = wait_while_moving(
        observer,
        prefix,
        _completed,
        len(waiting),
        args.stall_s,
        poll=args.poll_s,
        limit=args.resume_limit_s,
        progress=progress,
    )
    return {
        "receipts": len(waiting),
        "post_s": round(posted - t0, 2),
        **_completion(done, first, len(waiting)),
    }


def _completed(instance: Instance) -> bool:
    return instance.completed


def _completion(done: list[Instance], first: datetime, expected: int) -> dict[str, Any]:
    """How many completed since ``first``, when the last did (the rows' own times), how many not."""
    since = [i for i in done if i.updated_at >= first]
    span = (max(i.updated_at for i in since) - first).total_seconds() if since else 0.0
    return {
        "completed": len(since),
        "not_completed": expected - len(since),
        "last_completed_s": round(span, 2),
        "completed_per_s": round(len(since) / span, 1) if span else 0,
    }


def _base(process: AppProcess) -> str:
    return f"http://127.0.0.1:{process.port}/api/"


def rss(process: AppProcess) -> dict[str, float]:
    """The serve process's resident memory now and at its peak, in MiB."""
    assert process.process is not None
    fields = {}
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


# -- what parked instances occupy -----------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime):
        return value.isoformat()
    return getattr(value, "value", str(value))


def azure_footprint(azurite: Azurite, hub: str, parked: int) -> dict[str, Any]:
    """Rows and JSON bytes of every ``<hub>*`` table, and the hub's payload blobs."""
    tables = TableServiceClient.from_connection_string(azurite.connection_string())
    found: dict[str, Any] = {}
    rows_all = bytes_all = 0
    for table in sorted(t.name for t in tables.list_tables() if t.name.startswith(hub)):
        rows = size = 0
        kinds: dict[str, int] = {}
        for entity in tables.get_table_client(table).list_entities():
            rows += 1
            size += len(json.dumps(dict(entity), default=_json_default))
            kind = str(entity.get("RowKey", ""))[:1] or "?"
            kinds[kind] = kinds.get(kind, 0) + 1
        rows_all, bytes_all = rows_all + rows, bytes_all + size
        found[table] = {"rows": rows, "json_bytes": size, "rows_by_rowkey_initial": kinds}
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string())
    container = blobs.get_container_client(f"{hub}-payloads")
    blob_count = blob_bytes = 0
    if container.exists():
        for blob in container.list_blobs():
            blob_count, blob_bytes = blob_count + 1, blob_bytes + (blob.size or 0)
    return {
        "tables": found,
        "rows_per_parked_instance": round(rows_all / parked, 2),
        "json_bytes_per_parked_instance": round(bytes_all / parked),
        "payload_blobs": blob_count,
        "payload_blob_bytes": blob_bytes,
        "note": "every row of every <hub>* table (the app's email tables too) over the parked "
        "emails; bytes are each entity's JSON (binary properties as Base64)",
    }


def sqlite_footprint(path: Path, parked: int) -> dict[str, Any]:
    """Rows per table and the file's size (database and WAL)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}
        try:  # page bytes per table and index, where SQLite was built with dbstat
            pages = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"))
        except sqlite3.OperationalError:
            pages = {}
    files = {p.name: p.stat().st_size for p in path.parent.glob(path.name + "*")}
    total = sum(rows.values())
    return {
        "rows": {k: v for k, v in rows.items() if v},
        "rows_per_parked_instance": round(total / parked, 2),
        "file_bytes": files,
        "file_bytes_per_parked_instance": round(sum(files.values()) / parked),
        "page_bytes": {k: v for k, v in sorted(pages.items()) if v},
        "page_bytes_per_parked_instance": round(sum(pages.values()) / parked) if pages else None,
    }


# -- scenarios ------------------------------------------------------------------------------


def receipts(bench: Bench, out: dict[str, Any]) -> None:
    if bench.args.from_park:
        hub = _from_park(bench, out)
    else:
        hub = new_hub()
        out.update(hub=hub, receipt_timeout_s=DAY)
        _park_and_measure(bench, out, hub, DAY, "receipts-1")
    _new_email_and_resume(bench, out, hub)


def parked(bench: Bench, out: dict[str, Any]) -> None:
    """Park N once, for ``receipts`` and ``timeouts`` to resume from copies (``--from-park``)."""
    if not bench.args.park_dir or not bench.args.timeout_s:
        raise SystemExit("the park scenario needs --park-dir and --timeout-s")
    hub = new_hub()
    out.update(hub=hub, receipt_timeout_s=bench.args.timeout_s)
    started = time.time()
    _park_and_measure(bench, out, hub, bench.args.timeout_s, "park")
    observer = AzureObserver(bench.azurite.connection_string(), hub)
    out["fired_before_stop"] = sum(
        1 for i in observer.instances("email-") if not i.awaiting_receipt
    )
    observer.close()
    # The last deadline: every email was parked before the stop, each due timeout_s after.
    record = {"hub": hub, "n": bench.args.n, "receipt_timeout_s": bench.args.timeout_s}
    record.update(parked_from=started, all_due_at=time.time() + bench.args.timeout_s)
    (Path(bench.args.park_dir) / PARK_RECORD).write_text(json.dumps(record, indent=1))


PARK_RECORD = "park.json"


def _from_park(bench: Bench, out: dict[str, Any]) -> str:
    """The hub parked by the ``park`` scenario (its Azurite data copied in by ``main``)."""
    record = json.loads((Path(bench.args.from_park) / PARK_RECORD).read_text())
    if record["n"] != bench.args.n:
        raise SystemExit(f"--from-park holds {record['n']} emails: pass --n {record['n']}")
    out.update(from_park=record)
    return str(record["hub"])


def _park_and_measure(
    bench: Bench, out: dict[str, Any], hub: str, timeout_s: float, log_name: str
) -> None:
    """Park N under ``serve``; the target live and at zero, the memory and the footprint."""
    url = bench.azurite.connection_string(hub)
    observer = AzureObserver(bench.azurite.connection_string(), hub)
    process = bench.serve(url, timeout_s, log_name)
    try:
        out["park"] = park(process, observer, "park", bench.args.n, bench.args)
        bench.save()
        out["idle_live"] = bench.settle(hub)
        bench.save()
        out["memory_parked"] = rss(process)
        bench.save()
    finally:
        process.stop()
        observer.close()
    out["idle_at_zero"] = bench.target(hub)
    bench.save()
    out["footprint_parked"] = azure_footprint(bench.azurite, hub, bench.args.n)
    bench.save()


def _new_email_and_resume(bench: Bench, out: dict[str, Any], hub: str) -> None:
    """One new email at zero, then a receipt for every parked email: target and throughput."""
    args = bench.args
    url = bench.azurite.connection_string(hub)
    observer = AzureObserver(bench.azurite.connection_string(), hub)
    start_directly(url, "email-new-00000", DAY)
    out["one_new_email_at_zero"] = bench.target(hub)
    bench.save()
    process = bench.serve(url, DAY, "receipts-2")
    try:
        with bench.live(hub) as live:
            wait_for(observer, "email-new-", _parked, 1, args.wait_s)
        out["one_new_email_live"] = live
        bench.settle(hub)
        with bench.live(hub) as live:
            out["resume_live"] = live  # saved with the progress: a cut-short run keeps its peak
            out["resume"] = resume(process, observer, "email-", args, _progress(bench, out))
            bench.save()
        out["idle_live_after"] = bench.settle(hub)
        bench.save()
        out["memory_after"] = rss(process)
        bench.save()
    finally:
        process.stop()
    out["idle_at_zero_after"] = bench.target(hub)
    bench.save()
    observer.close()


def timeouts(bench: Bench, out: dict[str, Any]) -> None:
    n, args = bench.args.n, bench.args
    if args.from_park:
        hub = _from_park(bench, out)
        timeout_s = float(out["from_park"]["receipt_timeout_s"])
        # serve is stopped: wait until the last deadline has passed.
        bench.wait_until_due(float(out["from_park"]["all_due_at"]) + 3 - time.time())
        observer = AzureObserver(bench.azurite.connection_string(), hub)
    else:
        timeout_s = args.timeout_s or 60 + 0.3 * n
        hub = new_hub()
        observer = AzureObserver(bench.azurite.connection_string(), hub)
        out.update(hub=hub, receipt_timeout_s=timeout_s)
        process = bench.serve(bench.azurite.connection_string(hub), timeout_s, "timeouts-1")
        try:
            out["park"] = park(process, observer, "late", n, args)
            bench.save()
        finally:
            process.stop()
        stopped = time.monotonic()
        out["fired_before_stop"] = sum(
            1 for i in observer.instances("email-") if not i.awaiting_receipt
        )
        # Every deadline is at most timeout_s after its email was parked, so after the stop.
        bench.wait_until_due(timeout_s + 3 - (time.monotonic() - stopped))
    if bench.clock is not None:
        out["clock_jumped_s"] = round(bench.clock.offset)
    _fire_due(bench, out, hub, observer, timeout_s)


def _fire_due(
    bench: Bench, out: dict[str, Any], hub: str, observer: AzureObserver, timeout_s: float
) -> None:
    """With every receipt timeout due: the target at zero, then serve escalating them all."""
    due = [i.instance_id for i in observer.instances("email-") if i.awaiting_receipt]
    out["due"] = len(due)
    bench.save()
    out["target_for_due_work_only"] = _due_only_target(due, bench.rules.concurrency)
    bench.save()
    out["all_due_at_zero"] = bench.target(hub)
    bench.save()
    process = bench.serve(bench.azurite.connection_string(hub), timeout_s, "timeouts-2")
    try:
        first = bench.now()
        with bench.live(hub) as live:
            out["escalations_live"] = live  # saved with the progress, as resume_live
            done = wait_while_moving(
                observer,
                "email-",
                _completed,
                len(due),
                bench.args.stall_s,
                poll=bench.args.poll_s,
                progress=_progress(bench, out),
            )
        out["escalations"] = _completion(done, first, len(due))
        bench.save()
        out["idle_live_after"] = bench.settle(hub)
        bench.save()
    finally:
        process.stop()
    out["idle_at_zero_after"] = bench.target(hub)
    bench.save()
    observer.close()


def _progress(bench: Bench, out: dict[str, Any]) -> Callable[[int, float], None]:
    """Keeps ``completed so far`` in the figures, saved at most once a minute."""
    saved = [0.0]

    def note(completed: int, elapsed: float) -> None:
        out["progress"] = {"completed": completed, "elapsed_s": round(elapsed, 1)}
        if elapsed - saved[0] >= 60:
            saved[0] = elapsed
            bench.save()

    return note


def _due_only_target(due: list[str], concurrency: int, partitions: int = 4) -> dict[str, Any]:
    """The Flex target if the queues held exactly one visible wake-up per due timer."""
    per_partition = [0] * partitions
    for iid in due:
        per_partition[partition_of(iid, partitions)] += 1
    targets = [math.ceil(c / concurrency) for c in per_partition]
    return {"due_per_partition": per_partition, "flex_instances": sum(targets)}


def sqlite(bench: Bench, out: dict[str, Any]) -> None:
    n, args = bench.args.n, bench.args
    path = bench.workdir / f"{new_hub()}.db"
    observer = SqliteObserver(path)
    out.update(receipt_timeout_s=DAY)
    process = bench.serve(f"sqlite:///{path}", DAY, "sqlite")
    try:
        out["park"] = park(process, observer, "park", n, args)
        bench.save()
        out["memory_parked"] = rss(process)
        bench.save()
        out["footprint_parked"] = sqlite_footprint(path, n)
        bench.save()
        out["resume"] = resume(process, observer, "email-", args)
        bench.save()
        out["memory_after"] = rss(process)
        bench.save()
    finally:
        process.stop()


SCENARIOS: dict[str, Callable[[Bench, dict[str, Any]], None]] = {
    "receipts": receipts,
    "timeouts": timeouts,
    "park": parked,
    "sqlite": sqlite,
}


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _commit() -> str:
    def git(*command: str) -> str:
        return subprocess.run(
            ["git", *command], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", "durable_fx", "email_pipeline", "function_app.py")
    return head + ("-dirty" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="emails to park (default 100)")
    parser.add_argument("--only", default="receipts,timeouts,sqlite")
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=0.0,
        help="timeouts' receipt timeout (0: 60 + 0.3 a mail)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="HTTP requests in flight")
    parser.add_argument("--sample-s", type=float, default=1.0, help="live sampling interval")
    parser.add_argument("--wait-s", type=float, default=900.0, help="give up waiting after")
    parser.add_argument(
        "--stall-s", type=float, default=60.0, help="stop waiting after this long without progress"
    )
    parser.add_argument(
        "--resume-limit-s",
        type=float,
        default=0.0,
        help="stop waiting for receipts' effect (0: no)",
    )
    parser.add_argument(
        "--park-dir",
        help="park: park N there (Azurite's data kept) for later runs to resume from",
    )
    parser.add_argument(
        "--from-park",
        help="receipts, timeouts: start from a copy of what `--only park` left in this directory",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=0.0,
        help="how often to read every instance (0: 1 s a thousand emails; on Azurite each "
        "read scans the whole table, and reading too often slows what is measured)",
    )
    parser.add_argument(
        "--jump-clock",
        action="store_true",
        help="timeouts: jump Azurite's and serve's clock past the deadlines instead of waiting "
        "(needs Debian's faketime)",
    )
    parser.add_argument("--logs", help="keep serve's logs in this directory")
    parser.add_argument("--out")
    args = parser.parse_args()
    args.poll_s = args.poll_s or max(1.0, args.n / 1000)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}: {', '.join(SCENARIOS)}")
    load_before = os.getloadavg()[0]
    # SIGTERM unwinds like Ctrl-C: serve and Azurite are stopped, the figures so far kept.
    signal.signal(signal.SIGTERM, _interrupted)
    args.commit = _commit()  # now: the tree may change while the run lasts
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="durable_fx-flex-") as workdir:
        clock = FakeClock(Path(workdir)) if args.jump_clock else None
        if clock is not None:
            if wanted != ["timeouts"]:
                raise SystemExit("--jump-clock goes with --only timeouts")
            clock.install()
        azurite = _start_azurite(args, Path(workdir))
        try:
            with LocalSmtp() as smtp:
                logs = Path(args.logs or workdir)
                logs.mkdir(parents=True, exist_ok=True)
                bench = Bench(azurite.azurite, smtp, logs, args)
                bench.clock = clock
                bench.save = lambda: _write(args, bench.rules, results, load_before)
                for name in wanted:
                    print(f"running {name} with {args.n} emails ...", file=sys.stderr, flush=True)
                    t0 = time.perf_counter()
                    out = results[name] = {}
                    try:
                        SCENARIOS[name](bench, out)
                    except BaseException as error:  # a figure missing is reported, not fatal
                        out["error"] = f"{type(error).__name__}: {error}"
                        # The workdir goes at the end: keep why serve failed in the figures.
                        out["serve_log_tail"] = _log_tails(logs)
                        if not isinstance(error, Exception):
                            raise
                    finally:
                        out["scenario_wall_s"] = round(time.perf_counter() - t0, 1)
                        bench.save()
        finally:
            azurite.stop()
    print(_write(args, bench.rules, results, load_before))


def _start_azurite(args: Any, workdir: Path) -> AzuriteProcess:
    """Azurite on a fresh data directory, the park directory, or a copy of a park."""
    if args.park_dir:
        if args.only != "park":
            raise SystemExit("--park-dir goes with --only park")
        Path(args.park_dir).mkdir(parents=True, exist_ok=True)
        return AzuriteProcess(Path(args.park_dir), keep_data=True)
    if args.from_park:
        if "park" in args.only.split(","):
            raise SystemExit("--from-park goes with receipts or timeouts, not park")
        shutil.copytree(Path(args.from_park) / "azurite-data", workdir / "azurite-data")
    return AzuriteProcess(workdir)


def _log_tails(logs: Path, lines: int = 40) -> dict[str, list[str]]:
    """The last ``lines`` lines of each serve log (errors and tracebacks land there)."""
    tails = {}
    for log_file in sorted(logs.glob("*.log")):
        text = log_file.read_text(encoding="utf-8", errors="replace")
        tails[log_file.name] = text.splitlines()[-lines:]
    return tails


def _write(args: Any, rules: ScaleRules, results: dict[str, Any], load_before: float) -> str:
    """The JSON document so far; also to ``--out`` (after every scenario)."""
    document = {
        **header(
            "durable_fx scale-controller model and parked-email cost",
            load_average_before_after=[load_before, os.getloadavg()[0]],
            azurite="node_modules/.bin/azurite (same cores)",
        ),
        "durable_fx": args.commit,
        "rules": {
            "flex_divisor": rules.concurrency,
            "flex_rule": "per queue-trigger function: ceil(ApproximateMessagesCount / "
            "(batchSize + newBatchThreshold)) if a peek finds a visible message, else 0",
            "keda_queue_length": rules.keda_queue_length,
            "keda_rule": "per queue: ceil(visible (peek 32; the full count at 32) / queueLength); "
            "replicas = the largest rule",
            "max_instances": rules.max_instances,
        },
        "results": results,
    }
    return dump(document, args.out)


if __name__ == "__main__":
    main()
