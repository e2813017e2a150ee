"""The SDK clients of one task hub, created on the store's loop, and payload blobs.

Everything is created on first use: the tables (state and timers), the queues (every control
partition's, the legacy control queue, the work-item queue, and the poison
twin of each) and the blob container. A value too large for a table property
or a queue message is written to a blob named ``<instance id>/<uuid>`` and
referenced by name, so purging an instance deletes its blobs by prefix.

**The hub record.** The partition count decides which queue carries an
instance's wake-ups, so every process of a hub must use the same one. The
first setup writes ``hub.json`` (``{"partitions": N}``) to the payload
container, only if it is not there (If-None-Match, as DTFx writes its
``taskhub.json``); later setups read it and refuse another count
(``PartitionCountError``). The name has no ``/``, so no instance's payload
prefix covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.policies import (
    AsyncRedirectPolicy,
    CustomHookPolicy,
    DistributedTracingPolicy,
    HttpLoggingPolicy,
    NetworkTraceLoggingPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from ..._errors import DurableFxError
from ._policies import RequestCounter
from ._settings import AzureSettings, HubNames, client_kwargs
from ._transient import retrying

__all__ = ["HUB_RECORD", "PartitionCountError", "Resources"]

_MAX_BODY = 1024 * 1024
HUB_RECORD = "hub.json"
"""The blob, in the payload container, that records the hub's partition count."""


class PartitionCountError(DurableFxError, ValueError):
    """A store was opened with another partition count than its hub was set up with."""

    def __init__(self, hub: str, recorded: int | None, configured: int) -> None:
        if recorded is None:
            detail = f"its {HUB_RECORD} blob (in {hub}-payloads) has no valid partition count"
        else:
            detail = f"it was set up with {recorded} partitions"
        super().__init__(
            f"task hub {hub!r} cannot be opened with {configured} partitions: {detail}. "
            f"The count is fixed per hub: set DURABLE_FX_PARTITIONS (or the store URL's "
            f"partitions option) to {recorded if recorded is not None else 'its count'}, "
            "or use a new hub"
        )
        self.hub = hub
        self.recorded = recorded
        self.configured = configured


# Policies of the table client that cost CPU on every request and do nothing here:
# tracing and logging (not configured), request ids and user agents nobody reads,
# and redirects Table storage does not send. The retry policy stays (with no
# retries: the store retries itself, see _transient): queries rely on its bookkeeping.
_UNNEEDED = (
    AsyncRedirectPolicy,
    CustomHookPolicy,
    DistributedTracingPolicy,
    HttpLoggingPolicy,
    NetworkTraceLoggingPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)


def _lean_table_client(
    endpoint: str, table: str, credential: Any, extra: Sequence[Any]
) -> TableClient:
    """A table client without the ``_UNNEEDED`` policies, with ``extra`` last (per try)."""
    options = client_kwargs("table", [])
    options.pop("per_retry_policies")
    default = TableClient(endpoint, table, credential=credential, **options)  # never sends
    kept = [policy for policy in default._policies if not isinstance(policy, _UNNEEDED)]
    return TableClient(endpoint, table, credential=credential, policies=[*kept, *extra], **options)


class Resources:
    """Clients for the hub's table, queues and container (bound to one event loop)."""

    def __init__(
        self,
        settings: AzureSettings,
        policies: Sequence[Any],
        counter: RequestCounter | None = None,
    ) -> None:
        self.settings = settings
        self.names: HubNames = settings.names
        credential: Any = settings.credential()
        self._credential = credential
        names = self.names

        def options(service: str) -> dict[str, Any]:
            counted = [counter.policy(service)] if counter is not None else []
            return client_kwargs(service, [*counted, *policies])

        table_policies = [*([counter.policy("table")] if counter is not None else []), *policies]
        self.table = _lean_table_client(
            settings.endpoint("table"), names.table, credential, table_policies
        )
        self.timers = _lean_table_client(
            settings.endpoint("table"), names.timers_table, credential, table_policies
        )
        self.container = ContainerClient(
            settings.endpoint("blob"),
            names.container,
            credential=credential,
            # aiohttp warns about (and copies) request bodies over 1 MiB: upload in blocks.
            max_single_put_size=_MAX_BODY,
            max_block_size=_MAX_BODY,
            **options("blob"),
        )
        self.queues: dict[str, QueueClient] = {}
        queues = (*names.control_queues, names.work_queue)
        poison_queues = tuple(names.poison(queue) for queue in queues)
        for queue in (*queues, *poison_queues):
            # Base64 is what the Functions queue trigger expects by default. Poison
            # queues are read as they are: the host moves a body that is not Base64
            # there unread, and decoding it here would fail the whole receive.
            decode = None if queue in poison_queues else TextBase64DecodePolicy()
            self.queues[queue] = QueueClient(
                settings.endpoint("queue"),
                queue,
                credential=credential,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=decode,
                **options("queue"),
            )
        self._ready: asyncio.Future[None] | None = None

    async def ensure(self) -> None:
        """Create the table, queues and container once (concurrent callers share the work).

        Raises ``PartitionCountError`` if the hub was set up with another
        partition count (and again on every call: nothing is created then).
        """
        if self._ready is None:
            self._ready = asyncio.ensure_future(self._create())
        try:
            await asyncio.shield(self._ready)
        except BaseException:
            self._ready = None  # let the next call try again
            raise

    async def _create(self) -> None:
        # The record first: a store with the wrong count must not add queues to the hub.
        recorded = await self._read_record()
        if recorded is not None:
            self._check_record(recorded)

        async def create(make: Any) -> None:
            with contextlib.suppress(ResourceExistsError):
                await make()

        makers: list[Any] = [
            self.table.create_table,
            self.timers.create_table,
            self.container.create_container,
        ]
        makers += [client.create_queue for client in self.queues.values()]
        creating = [
            asyncio.ensure_future(
                retrying(partial(create, m), what="create the task hub's resources")
            )
            for m in makers
        ]
        try:
            await asyncio.gather(*creating)
        except BaseException:
            # One gave up (storage kept failing): the others stop too, rather than retry
            # on in the background with their connections open.
            for task in creating:
                task.cancel()
            await asyncio.gather(*creating, return_exceptions=True)
            raise
        if recorded is None:
            await self._write_record()

    async def _write_record(self) -> None:
        """Record our partition count, unless another first setup recorded one meanwhile."""
        text = json.dumps({"partitions": self.settings.partitions})
        try:
            await retrying(
                # overwrite=False sends If-None-Match: *, so of two first setups one writes.
                lambda: self.container.upload_blob(HUB_RECORD, text, overwrite=False),
                what=f"record the task hub's partitions in {HUB_RECORD}",
            )
        except ResourceExistsError:
            self._check_record(await self._read_record())

    def _check_record(self, recorded: int | str | None) -> None:
        configured = self.settings.partitions
        if recorded != configured:
            count = recorded if isinstance(recorded, int) else None
            raise PartitionCountError(self.names.hub, count, configured)

    async def _read_record(self) -> int | str | None:
        """The recorded count; ``None`` if there is no record, ``""`` if it is unreadable."""
        try:
            text = await self.get_payload(HUB_RECORD)
        except ResourceNotFoundError:
            return None
        except UnicodeDecodeError:
            return ""
        try:
            count = json.loads(text)["partitions"]
        except (ValueError, TypeError, KeyError):
            return ""
        return count if isinstance(count, int) and not isinstance(count, bool) else ""

    async def close(self) -> None:
        """Close every client and the credential (and stop a creation still running)."""
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
            await asyncio.gather(self._ready, return_exceptions=True)
        await self.table.close()
        await self.timers.close()
        await self.container.close()
        for client in self.queues.values():
            await client.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    # -- payload blobs ------------------------------------------------------------

    async def put_payload(self, instance_id: str, text: str) -> str:
        """Upload ``text`` as a new blob under the instance's prefix; return its name."""
        name = f"{instance_id}/{uuid.uuid4().hex}"
        data = text.encode()
        await retrying(
            # A stream, not bytes: aiohttp would otherwise copy a large body on the loop.
            lambda: self.container.upload_blob(
                name, io.BytesIO(data), length=len(data), overwrite=True
            ),
            what=f"upload payload blob {name}",
        )
        return name

    async def get_payload(self, name: str) -> str:
        """The text of a payload blob."""

        async def download() -> bytes:
            stream = await self.container.download_blob(name)
            return await stream.readall()

        return (await retrying(download, what=f"download payload blob {name}")).decode()

    async def delete_payloads(self, instance_id: str) -> int:
        """Delete every payload blob of an instance; returns how many."""
        names = [
            blob.name
            async for blob in self.container.list_blobs(name_starts_with=f"{instance_id}/")
        ]
        for name in names:
            with contextlib.suppress(ResourceNotFoundError):
                await retrying(
                    partial(self.container.delete_blob, name), what=f"delete payload blob {name}"
                )
        return len(names)
