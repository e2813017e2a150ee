"""Where an Azure task hub lives and how to authenticate: settings and client construction.

Three ways to name a storage account, all turned into one ``AzureSettings``:

- a connection string (``AccountName=...;AccountKey=...`` or
  ``UseDevelopmentStorage=true`` for Azurite), optionally with a durable_fx
  extra ``TaskHub=<name>`` segment (removed before the SDK sees it);
- ``azure://<account>[?hub=...&credential=managedidentity&client_id=...]``:
  identity (Entra ID) auth through ``azure-identity``;
- ``azure://`` alone: the Functions identity settings
  ``AzureWebJobsStorage__accountName`` / ``__queueServiceUri`` /
  ``__tableServiceUri`` / ``__blobServiceUri`` / ``__credential`` /
  ``__clientId``, read from the environment; ``azure://?connection=MyConn``
  reads ``MyConn__accountName`` and friends instead (a custom connection).

The task hub name (``hub`` argument, else the URL, else ``DURABLE_FX_HUB``,
else ``durablefx``) names every resource, so several apps can share one
account: table ``<hub>state``, control queues ``<hub>-control-00`` ...
(one per partition) and the legacy ``<hub>-control``, ``<hub>-workitems``
(each with a ``-poison`` twin), blob container ``<hub>-payloads``.

The partition count (``partitions`` argument, else ``Partitions=`` in the
connection string or ``?partitions=`` in the URL, else ``DURABLE_FX_PARTITIONS``,
else 4; at most 16) decides which control queue carries an instance's
wake-ups. It is fixed per hub: the hub records it on first setup (``_resources``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .._partitions import DEFAULT_PARTITIONS, PARTITIONS_ENV, partition_count, valid_partitions

if TYPE_CHECKING:
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
    from azure.core.credentials_async import AsyncTokenCredential

__all__ = [
    "DEFAULT_HUB",
    "DEFAULT_PARTITIONS",
    "HUB_ENV",
    "PARTITIONS_ENV",
    "AzureSettings",
    "HubNames",
    "is_azure_url",
    "partition_of",
    "settings_from_url",
    "sync_credential",
]

DEFAULT_HUB = "durablefx"
HUB_ENV = "DURABLE_FX_HUB"
IDENTITY_PREFIX = "AzureWebJobsStorage"

_HUB = re.compile(r"[a-z][a-z0-9]{2,39}")
_DEV_ACCOUNT = "devstoreaccount1"
# The well-known Azurite/emulator key: public, documented, not a secret.
_DEV_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_DEV_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}
_SERVICES = ("blob", "queue", "table")


def is_azure_url(url: str) -> bool:
    """Whether ``open_store`` should hand ``url`` to the Azure store."""
    lowered = url.lower()
    return (
        url.startswith("azure://")
        or "usedevelopmentstorage=true" in lowered.replace(" ", "")
        or "accountname=" in lowered
    )


@dataclass(frozen=True, slots=True)
class HubNames:
    """The resource names of one task hub (all valid for their services)."""

    hub: str
    partitions: int = DEFAULT_PARTITIONS

    @classmethod
    def of(cls, hub: str, partitions: int = DEFAULT_PARTITIONS) -> HubNames:
        """Validate ``hub`` (case-insensitive) and ``partitions``, and derive the names."""
        name = hub.strip().lower()
        if not _HUB.fullmatch(name):
            raise ValueError(
                f"invalid task hub name {hub!r}: use 3-40 letters and digits, starting with a "
                "letter (it names a table, queues and a blob container)"
            )
        return cls(name, valid_partitions(partitions, source="partitions"))

    @property
    def table(self) -> str:
        return f"{self.hub}state"

    @property
    def timers_table(self) -> str:
        """Durable timers by partition and due time (``_timers``)."""
        return f"{self.hub}timers"

    @property
    def legacy_control_queue(self) -> str:
        """The one control queue of hubs made before partitions: still drained, never sent to."""
        return f"{self.hub}-control"

    @property
    def work_queue(self) -> str:
        return f"{self.hub}-workitems"

    @property
    def container(self) -> str:
        return f"{self.hub}-payloads"

    def control_partition(self, index: int) -> str:
        """The control queue of partition ``index`` (``<hub>-control-00`` ...)."""
        return f"{self.hub}-control-{index:02d}"

    @property
    def control_partitions(self) -> tuple[str, ...]:
        """Every partition's control queue, in partition order."""
        return tuple(self.control_partition(i) for i in range(self.partitions))

    @property
    def control_queues(self) -> tuple[str, ...]:
        """Every queue that may hold wake-ups: the partitions, then the legacy queue."""
        return (*self.control_partitions, self.legacy_control_queue)

    def control_queue_of(self, instance_id: str) -> str:
        """The control queue of ``instance_id``'s partition."""
        return self.control_partition(self.partition_index(instance_id))

    def partition_index(self, instance_id: str) -> int:
        """The control partition of ``instance_id`` (``partition_of`` with this hub's count)."""
        return partition_of(instance_id, self.partitions)

    @staticmethod
    def poison(queue: str) -> str:
        """The poison twin of a queue (the Functions host's naming)."""
        return f"{queue}-poison"


def partition_of(instance_id: str, count: int) -> int:
    """The control partition of an instance: FNV-1a (32 bit) of its UTF-8 id, modulo ``count``.

    Stable across processes and versions (unlike ``hash``), so every writer
    and every trigger agrees on where an instance's wake-ups go.
    """
    value = 0x811C9DC5
    for byte in instance_id.encode("utf-8", "surrogatepass"):
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value % count


@dataclass(frozen=True)
class AzureSettings:
    """A storage account, its endpoints, how to authenticate, and the task hub.

    Exactly one of ``account_key``, ``sas_token`` or ``use_identity`` says how
    requests are authorized.
    """

    account: str
    endpoints: Mapping[str, str]
    hub: str = DEFAULT_HUB
    partitions: int = DEFAULT_PARTITIONS
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)
    use_identity: bool = False
    managed_identity: bool = False
    client_id: str | None = None

    @property
    def names(self) -> HubNames:
        """The hub's resource names."""
        return HubNames.of(self.hub, self.partitions)

    def endpoint(self, service: str) -> str:
        """The service URL for ``blob``, ``queue`` or ``table``."""
        return self.endpoints[service]

    def credential(self) -> AzureNamedKeyCredential | AzureSasCredential | AsyncTokenCredential:
        """A credential object the three async SDK clients accept."""
        if self.account_key is not None:
            from azure.core.credentials import AzureNamedKeyCredential

            return AzureNamedKeyCredential(self.account, self.account_key)
        if self.sas_token is not None:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(self.sas_token)
        return self._token_credential()

    def _token_credential(self) -> AsyncTokenCredential:
        try:
            from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential
        except ImportError as error:  # the azure extra is optional
            raise ImportError(
                "identity auth needs azure-identity: pip install 'durable-fx[azure]'"
            ) from error
        if self.managed_identity:
            if self.client_id:
                return ManagedIdentityCredential(client_id=self.client_id)
            return ManagedIdentityCredential()
        return DefaultAzureCredential(managed_identity_client_id=self.client_id)

    def describe(self) -> str:
        """Where this is, without secrets (for errors and logs)."""
        auth = "key" if self.account_key else "SAS" if self.sas_token else "identity"
        return (
            f"account {self.account!r} ({auth} auth), task hub {self.hub!r}, "
            f"{self.partitions} partitions"
        )


def sync_credential(settings: AzureSettings) -> Any:
    """A credential for the synchronous SDK clients (the store's are asynchronous)."""
    if settings.account_key is not None:
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(settings.account, settings.account_key)
    if settings.sas_token is not None:
        from azure.core.credentials import AzureSasCredential

        return AzureSasCredential(settings.sas_token)
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if settings.managed_identity:
        return ManagedIdentityCredential(client_id=settings.client_id)
    return DefaultAzureCredential(managed_identity_client_id=settings.client_id)


def settings_from_url(
    url: str,
    *,
    hub: str | None = None,
    partitions: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> AzureSettings:
    """Parse a connection string or ``azure://`` URL into settings (no network).

    Raises ``ValueError`` naming what is missing or malformed.
    """
    env = os.environ if environ is None else environ
    if url.startswith("azure://"):
        settings, options = _from_azure_url(url, env)
    else:
        settings, options = _from_connection_string(url)
    chosen = hub or options.hub or env.get(HUB_ENV, "").strip() or DEFAULT_HUB
    count = partition_count(partitions, options.partitions, env)
    names = HubNames.of(chosen, count)
    return replace(settings, hub=names.hub, partitions=names.partitions)


@dataclass(frozen=True, slots=True)
class _HubOptions:
    """What a store URL says about the hub (``TaskHub=``/``?hub=``, ``Partitions=``/...)."""

    hub: str | None = None
    partitions: str | None = None


# -- connection strings ---------------------------------------------------------


def _parse_pairs(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for segment in text.split(";"):
        segment = segment.strip()
        if not segment:
            continue
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"malformed connection string segment {_redact_segment(segment)!r}: "
                "expected Key=Value pairs separated by ';'"
            )
        pairs[key.strip().lower()] = value.strip()
    return pairs


def _redact_segment(segment: str) -> str:
    key = segment.partition("=")[0]
    if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
        return f"{key}=***"
    return segment[:60]


def _from_connection_string(text: str) -> tuple[AzureSettings, _HubOptions]:
    pairs = _parse_pairs(text)
    hub = _HubOptions(pairs.pop("taskhub", None), pairs.pop("partitions", None))
    if pairs.get("usedevelopmentstorage", "").lower() == "true":
        return _development_settings(pairs.get("developmentstorageproxyuri")), hub
    account = pairs.get("accountname")
    if not account:
        raise ValueError("the connection string has no AccountName=; copy it from the portal")
    protocol = pairs.get("defaultendpointsprotocol", "https")
    if protocol not in ("http", "https"):
        raise ValueError(f"DefaultEndpointsProtocol must be http or https, not {protocol!r}")
    suffix = pairs.get("endpointsuffix", "core.windows.net")
    endpoints = {
        service: pairs.get(f"{service}endpoint") or f"{protocol}://{account}.{service}.{suffix}"
        for service in _SERVICES
    }
    key = pairs.get("accountkey")
    sas = pairs.get("sharedaccesssignature")
    if not key and not sas:
        raise ValueError(
            f"the connection string for account {account!r} has neither AccountKey= nor "
            "SharedAccessSignature=; for identity auth use azure://<account>"
        )
    return (
        AzureSettings(
            account=account,
            endpoints={s: e.rstrip("/") for s, e in endpoints.items()},
            account_key=key or None,
            sas_token=None if key else sas,
        ),
        hub,
    )


def _development_settings(proxy: str | None) -> AzureSettings:
    base = (proxy or "http://127.0.0.1").rstrip("/")
    endpoints = {s: f"{base}:{port}/{_DEV_ACCOUNT}" for s, port in _DEV_PORTS.items()}
    return AzureSettings(account=_DEV_ACCOUNT, endpoints=endpoints, account_key=_DEV_KEY)


# -- identity -------------------------------------------------------------------


def _from_azure_url(url: str, env: Mapping[str, str]) -> tuple[AzureSettings, _HubOptions]:
    parts = urlsplit(url)
    query = {k.lower(): v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"hub", "partitions", "credential", "client_id", "connection"}
    if unknown:
        raise ValueError(
            f"unknown azure:// parameters {sorted(unknown)}; "
            "use hub, partitions, credential, client_id, connection"
        )
    account = parts.netloc
    if account:
        settings = _identity_settings(
            account, {}, query.get("credential"), query.get("client_id"), source=url
        )
    else:
        # ?connection=MyConn: a custom connection's <MyConn>__accountName... settings.
        prefix = query.get("connection") or IDENTITY_PREFIX
        settings = identity_settings_from_environment(env, prefix)
        if "credential" in query or "client_id" in query:
            settings = _identity_settings(
                settings.account,
                settings.endpoints,
                query.get("credential"),
                query.get("client_id"),
                source=url,
            )
    return settings, _HubOptions(query.get("hub"), query.get("partitions"))


def identity_settings_from_environment(
    env: Mapping[str, str], prefix: str = IDENTITY_PREFIX
) -> AzureSettings:
    """Settings from the Functions identity variables ``<prefix>__accountName`` and friends."""
    values = {
        k[len(prefix) + 2 :].lower(): v for k, v in env.items() if k.startswith(prefix + "__")
    }
    uris = {s: values[f"{s}serviceuri"] for s in _SERVICES if values.get(f"{s}serviceuri")}
    account = values.get("accountname") or _account_from_uris(uris)
    if not account:
        raise ValueError(
            f"azure:// without an account needs {prefix}__accountName (or "
            f"{prefix}__queueServiceUri, __tableServiceUri and __blobServiceUri) in the environment"
        )
    return _identity_settings(
        account, uris, values.get("credential"), values.get("clientid"), source=f"{prefix}__*"
    )


def has_identity_settings(env: Mapping[str, str], prefix: str = IDENTITY_PREFIX) -> bool:
    """Whether the Functions identity variables are set (``AzureWebJobsStorage__...``)."""
    return any(k.startswith(prefix + "__") and v for k, v in env.items())


def _account_from_uris(uris: Mapping[str, str]) -> str | None:
    for uri in uris.values():
        host = urlsplit(uri).hostname or ""
        if "." in host:
            return host.split(".", 1)[0]
    return None


def _identity_settings(
    account: str,
    uris: Mapping[str, str],
    credential: str | None,
    client_id: str | None,
    *,
    source: str,
) -> AzureSettings:
    if not re.fullmatch(r"[a-z0-9]{3,24}", account):
        raise ValueError(
            f"invalid storage account name {account!r} in {source}: 3-24 lowercase letters "
            "and digits"
        )
    kind = (credential or "").strip().lower()
    if kind not in ("", "managedidentity"):
        raise ValueError(f"credential must be 'managedidentity' (or unset), not {credential!r}")
    endpoints = {
        s: (uris.get(s) or f"https://{account}.{s}.core.windows.net").rstrip("/") for s in _SERVICES
    }
    return AzureSettings(
        account=account,
        endpoints=endpoints,
        use_identity=True,
        managed_identity=kind == "managedidentity",
        client_id=client_id or None,
    )


def client_kwargs(service: str, policies: Sequence[Any]) -> dict[str, Any]:
    """Options for one SDK client: our per-attempt policies and short timeouts.

    The Tables client takes extra policies as ``per_retry_policies``; the
    Storage (queue, blob) clients only as ``_additional_pipeline_policies``,
    which they also place after their retry policy. The SDKs retry idempotent
    calls themselves; the store retries the others and interprets an
    ambiguous outcome (see ``_transient``).
    """
    key = "per_retry_policies" if service == "table" else "_additional_pipeline_policies"
    return {key: list(policies), "connection_timeout": 10, "read_timeout": 30, "retry_total": 0}
