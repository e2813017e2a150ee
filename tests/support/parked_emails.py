"""Parking many emails in the served email app, and watching them: for the scale test and bench.

Emails are posted to ``POST /api/emails`` with idempotency keys, so their
instance ids are ``email-<key>`` and a prefix finds them all; receipts go to
the signed webhook. Instances are watched straight from the store's table
(the instance rows only), not through the status API: one query per look,
whatever the number of emails.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from azure.data.tables import TableClient

from durable_fx import AsyncDurableClient, OrchestrationStatus, open_store
from email_pipeline.localrun import signed
from email_pipeline.models import DeliveryPolicy, EmailJob, EmailRequest

__all__ = [
    "EVENT_QUEUES",
    "SECRET",
    "AzureObserver",
    "Instance",
    "Observer",
    "SqliteObserver",
    "app_settings",
    "instance_ids",
    "post_emails",
    "post_receipts",
    "start_directly",
    "wait_for",
    "wait_while_moving",
]

SECRET = "flex-scale-secret"
EVENT_QUEUES = ("email-delivery-events",)
"""The app's event-source queue (function_app.py), which is not named after the hub."""


def app_settings(smtp_port: int, receipt_timeout_seconds: float) -> dict[str, str]:
    """The pipeline's settings: a local SMTP server and the given receipt timeout."""
    return {
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "DELIVERY_WEBHOOK_SECRET": SECRET,
        "EMAIL_RECEIPT_TIMEOUT_SECONDS": f"{receipt_timeout_seconds:g}",
        "EMAIL_OPERATIONS_ADDRESS": "ops@example.com",
    }


def instance_ids(tag: str, count: int) -> list[str]:
    """The instance ids ``post_emails(tag, count)`` creates."""
    return [f"email-{tag}-{i:05d}" for i in range(count)]


def _email(key: str) -> dict[str, Any]:
    return {
        "from": "shop@example.com",
        "to": [f"{key}@example.com"],
        "subject": "your order",
        "text": "shipped",
        "idempotency_key": key,
    }


# A request is built just before it is sent (and again for a retry): a signed
# receipt carries its signing time, which the webhook refuses after 300 s, and
# ten thousand of them take longer than that to send.
RequestFactory = Callable[[], tuple[str, bytes, dict[str, str]]]


async def _post_all(
    client: httpx.AsyncClient, requests: Sequence[RequestFactory], limit: int
) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(build: RequestFactory) -> None:
        async with gate:
            for _ in range(20):
                path, body, headers = build()
                answer = await client.post(path, content=body, headers=headers)
                if answer.status_code in (200, 202):
                    return
                if answer.status_code not in (404, 429, 503):
                    raise RuntimeError(f"{path} answered {answer.status_code}: {answer.text}")
                await asyncio.sleep(0.5)  # 404: the receipt beat the send's bookkeeping
            raise RuntimeError(f"{path} kept answering {answer.status_code}: {answer.text}")

    await asyncio.gather(*(one(build) for build in requests))


def post_emails(base_url: str, key: str, tag: str, count: int, concurrency: int = 16) -> None:
    """Start ``count`` emails through ``POST /api/emails``, ``concurrency`` at a time."""
    requests = [_email_request(iid.removeprefix("email-")) for iid in instance_ids(tag, count)]
    asyncio.run(_post(base_url, key, requests, concurrency))


def post_receipts(
    base_url: str, key: str, message_ids: Sequence[str], concurrency: int = 16
) -> None:
    """A signed ``delivered`` receipt for each message, through ``POST /api/webhooks/delivery``."""
    requests = [_receipt_request(message_id) for message_id in message_ids]
    asyncio.run(_post(base_url, key, requests, concurrency))


def _email_request(key: str) -> RequestFactory:
    body = json.dumps(_email(key)).encode()
    return lambda: ("emails", body, {"Content-Type": "application/json"})


def _receipt_request(message_id: str) -> RequestFactory:
    # One event id for every attempt: a retried receipt is the same receipt.
    body = {"message_id": message_id, "status": "delivered", "event_id": uuid.uuid4().hex}

    def build() -> tuple[str, bytes, dict[str, str]]:
        raw, headers = signed(body, SECRET)
        return "webhooks/delivery", raw, headers

    return build


async def _post(base_url: str, key: str, requests: Sequence[RequestFactory], limit: int) -> None:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"x-functions-key": key}, timeout=60
    ) as client:
        await _post_all(client, requests, limit)


def start_directly(store_url: str, instance_id: str, receipt_timeout_seconds: float) -> None:
    """Start one email with the client, as ``POST /api/emails`` does, while no host runs.

    Its wake-up is then the one visible message a scale controller sees when
    new work reaches an app scaled to zero.
    """
    request = EmailRequest.model_validate(_email(instance_id.removeprefix("email-")))
    job = EmailJob(
        request=request, policy=DeliveryPolicy(receipt_timeout_seconds=receipt_timeout_seconds)
    )

    async def start() -> None:
        store = open_store(store_url)
        try:
            await AsyncDurableClient(store).start("email_delivery", job, instance_id=instance_id)
        finally:
            await store.close()

    asyncio.run(start())


@dataclass(frozen=True, slots=True)
class Instance:
    """What the watcher needs of an instance row."""

    instance_id: str
    status: OrchestrationStatus
    custom_status: Any
    updated_at: datetime

    @property
    def awaiting_receipt(self) -> bool:
        """Parked: its send is done and it waits for the receipt (or the timeout)."""
        status = self.custom_status if isinstance(self.custom_status, dict) else {}
        return (
            self.status is OrchestrationStatus.RUNNING and status.get("stage") == "awaiting receipt"
        )

    @property
    def completed(self) -> bool:
        """Whether it completed."""
        return self.status is OrchestrationStatus.COMPLETED

    @property
    def message_id(self) -> str:
        """The provider message id it waits for a receipt of."""
        return str(self.custom_status["message_id"])


class Observer(Protocol):
    """Reads the instance rows whose id starts with a prefix."""

    def instances(self, prefix: str) -> list[Instance]: ...


class AzureObserver:
    """Instance rows of an Azure task hub (``<hub>state``, RowKey ``i``)."""

    def __init__(self, connection_string: str, hub: str) -> None:
        self._table = TableClient.from_connection_string(connection_string, f"{hub}state")

    def instances(self, prefix: str) -> list[Instance]:
        query = f"RowKey eq 'i' and PartitionKey ge '{prefix}' and PartitionKey lt '{prefix}~'"
        rows = self._table.query_entities(
            query, select=["PartitionKey", "Status", "CustomStatus", "UpdatedAt"]
        )
        return [
            Instance(
                str(r["PartitionKey"]),
                OrchestrationStatus(r["Status"]),
                json.loads(r["CustomStatus"]) if r.get("CustomStatus") else None,
                datetime.strptime(str(r["UpdatedAt"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
            )
            for r in rows
        ]

    def close(self) -> None:
        self._table.close()


class SqliteObserver:
    """Instance rows of a SQLite store file (read-only; WAL lets it read beside the writer)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def instances(self, prefix: str) -> list[Instance]:
        with sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=30) as db:
            rows = db.execute(
                "SELECT instance_id, status, custom_status, updated_at FROM instances "
                "WHERE instance_id >= ? AND instance_id < ?",
                (prefix, prefix + "~"),
            ).fetchall()
        return [
            Instance(
                iid,
                OrchestrationStatus(status),
                json.loads(custom) if custom else None,
                datetime.fromtimestamp(updated / 1e6, UTC),
            )
            for iid, status, custom, updated in rows
        ]

    def close(self) -> None:
        pass


def wait_for(
    observer: Observer,
    prefix: str,
    done: Callable[[Instance], bool],
    count: int,
    timeout: float,
    poll: float = 1.0,
) -> list[Instance]:
    """Poll until ``count`` instances under ``prefix`` are ``done``; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observer.instances(prefix)
        found = [i for i in seen if done(i)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            others = [(i.instance_id, i.status.value, i.custom_status) for i in seen if not done(i)]
            raise TimeoutError(
                f"{len(found)} of {count} {prefix}* instances done after {timeout:g} s; "
                f"not done: {others[:5]}"
            )
        time.sleep(poll)


def wait_while_moving(
    observer: Observer,
    prefix: str,
    done: Callable[[Instance], bool],
    count: int,
    stall: float,
    poll: float = 1.0,
    limit: float = 0.0,
    progress: Callable[[int, float], object] | None = None,
) -> list[Instance]:
    """Poll until ``count`` instances are ``done`` or none moved for ``stall`` s; the done ones.

    For work that may strand some instances: the caller reports how many.
    An instance moves when its status or custom status changes. With
    ``limit``, also stop after ``limit`` s. ``progress`` hears how many are
    done and the seconds so far after every poll (a run cut short keeps them).
    """
    last: list[tuple[str, str]] = []
    since = start = time.monotonic()
    while True:
        if limit and time.monotonic() - start > limit:
            return [i for i in observer.instances(prefix) if done(i)]
        seen = observer.instances(prefix)
        found = [i for i in seen if done(i)]
        if progress is not None:
            progress(len(found), time.monotonic() - start)
        if len(found) >= count:
            return found
        states = sorted((i.status.value, json.dumps(i.custom_status, sort_keys=True)) for i in seen)
        if states != last:
            last, since = states, time.monotonic()
        elif time.monotonic() - since > stall:
            return found
        time.sleep(poll)
