"""Names and limits a ``DurableApp`` takes from app settings, with their defaults.

Functions app settings reach the worker as environment variables, so they are
read when the app object is built (at indexing): the queue names the triggers
bind to must be known then, and must be the names the Azure store uses.

=================================  =====================  =======================================
setting                            default                what it decides
=================================  =====================  =======================================
``DURABLE_FX_HUB``                 ``durablefx``          task hub: ``<hub>-control-NN``,
                                                          ``<hub>-workitems``, table ``<hub>state``
``DURABLE_FX_PARTITIONS``          ``4``                  control queue partitions (1 to 16; one
                                                          ``dfx_control_NN`` function each; fixed
                                                          per hub)
``DURABLE_FX_CONNECTION``          ``AzureWebJobsStorage`` the connection setting the durable
                                                          queue triggers (and the store) use
``DURABLE_FX_STORE``               the connection's value  store URL (SQLite, memory, Azure)
``DURABLE_FX_MANAGEMENT_AUTH``     ``FUNCTION``           auth level of the HTTP management API
``DURABLE_FX_MAX_REQUEST_BYTES``   ``1048576``            largest request body, every route (413)
``DURABLE_FX_BODY_TIMEOUT_SECONDS`` ``30``                 ``serve``: time to send a body (408)
``DURABLE_FX_PUBLIC_URL``          see below              ``https://host`` of generated URLs
``DURABLE_FX_DEFAULT_VERSION``     none                   the version orchestrations the app starts
                                                          get when the start names none
=================================  =====================  =======================================

The URLs the management API writes (check-status bodies, ``Location``) start
with ``DURABLE_FX_PUBLIC_URL``, else ``https://$WEBSITE_HOSTNAME`` (the
Functions host sets it; ``http`` for ``localhost``), else
``https://$CONTAINER_APP_NAME.$CONTAINER_APP_ENV_DNS_SUFFIX`` (Azure Container
Apps sets both), else the address ``durable-fx serve`` listens on, else
``http://localhost:7071``. Never with the request's ``Host``: a caller could
point the links at their own server.

A custom ``DURABLE_FX_CONNECTION`` works like ``AzureWebJobsStorage``: its
value is a connection string, or ``<name>__accountName`` (and the other
identity settings) select identity auth on that account.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from ..storage import default_store_url
from ..storage._partitions import DEFAULT_PARTITIONS, partition_count

__all__ = ["AuthLevelName", "FunctionsSettings"]

AuthLevelName = Literal["ANONYMOUS", "FUNCTION", "ADMIN"]

DEFAULT_HUB = "durablefx"
DEFAULT_CONNECTION = "AzureWebJobsStorage"
DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
SERVE_URL_SETTING = "DURABLE_FX_SERVE_URL"
"""Set by ``durable-fx serve`` to the address it listens on (the last origin fallback)."""
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_HUB = re.compile(r"[a-z][a-z0-9]{2,39}")
_AUTH_LEVELS: tuple[AuthLevelName, ...] = ("ANONYMOUS", "FUNCTION", "ADMIN")
DEFAULT_DASHBOARD_ROUTE = "dashboard"
_ROUTE = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
_TAKEN_ROUTES = ("instances", "orchestrators")  # the management API's


@dataclass(frozen=True, slots=True)
class FunctionsSettings:
    """What a ``DurableApp`` binds to and how its HTTP functions behave.

    Attributes:
        hub: The task hub; it names the control and work-item queues.
        partitions: How many control queues (``<hub>-control-00`` ...) the hub has.
        connection: The app setting holding the storage connection.
        store_url: The store to open (``None``: decided when first needed).
        management_auth_level: Auth level of the HTTP management API.
        max_request_bytes: Largest request body any route reads (``serve`` enforces it
            while reading; the management API and webhooks also check it themselves).
        body_timeout_seconds: How long ``serve`` waits for a whole request body.
        public_url: ``DURABLE_FX_PUBLIC_URL``: the origin of the URLs the app writes.
        lease: How long an invocation owns an instance or a work item.
        default_version: The orchestration version the app's starts record
            when they name none (``ctx.version``, the instance's state).
        dashboard_route: Where the web dashboard is served, under the route prefix
            (``DURABLE_FX_DASHBOARD_ROUTE``; only when ``DURABLE_FX_DASHBOARD_KEY`` is set).
    """

    hub: str = DEFAULT_HUB
    partitions: int = DEFAULT_PARTITIONS
    connection: str = DEFAULT_CONNECTION
    store_url: str | None = None
    management_auth_level: AuthLevelName = "FUNCTION"
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    public_url: str | None = None
    lease: timedelta = timedelta(seconds=30)
    default_version: str | None = None
    dashboard_route: str = DEFAULT_DASHBOARD_ROUTE

    @property
    def control_queues(self) -> tuple[str, ...]:
        """The queues of orchestration wake-ups, one per partition (the Azure store's names)."""
        return tuple(f"{self.hub}-control-{i:02d}" for i in range(self.partitions))

    @property
    def legacy_control_queue(self) -> str:
        """The one control queue of hubs made before partitions (still drained)."""
        return f"{self.hub}-control"

    @property
    def work_queue(self) -> str:
        """The queue of activity work items (the Azure store's name for it)."""
        return f"{self.hub}-workitems"

    def resolved_store_url(self, env: Mapping[str, str] | None = None) -> str:
        """The store URL: the explicit one, else ``DURABLE_FX_STORE``, else the connection's."""
        environ = os.environ if env is None else env
        if self.store_url:
            return self.store_url
        explicit = environ.get("DURABLE_FX_STORE", "").strip()
        if explicit:
            return explicit
        if self.connection != DEFAULT_CONNECTION:
            value = environ.get(self.connection, "").strip()
            if value:
                return value
            prefix = f"{self.connection}__"
            if any(k.startswith(prefix) and v.strip() for k, v in environ.items()):
                # Identity settings of this connection, not AzureWebJobsStorage's account.
                return f"azure://?connection={self.connection}"
        return default_store_url()

    def public_origin(self, env: Mapping[str, str] | None = None) -> str:
        """``scheme://host[:port]`` of the URLs the app writes (see the module docstring)."""
        if self.public_url:
            return self.public_url
        environ = os.environ if env is None else env
        website = environ.get("WEBSITE_HOSTNAME", "").strip()
        if website:
            scheme = "http" if website.lower().startswith(_LOOPBACK_HOSTS) else "https"
            return f"{scheme}://{website}"
        container_app = environ.get("CONTAINER_APP_NAME", "").strip()
        dns_suffix = environ.get("CONTAINER_APP_ENV_DNS_SUFFIX", "").strip()
        if container_app and dns_suffix:
            return f"https://{container_app}.{dns_suffix}"
        return environ.get(SERVE_URL_SETTING, "").strip() or "http://localhost:7071"

    @classmethod
    def from_environment(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        hub: str | None = None,
        partitions: int | None = None,
        connection: str | None = None,
        store_url: str | None = None,
        management_auth_level: str | None = None,
        max_request_bytes: int | None = None,
        default_version: str | None = None,
    ) -> FunctionsSettings:
        """Settings from arguments, else app settings (environment), else defaults.

        Raises ``ValueError`` naming the setting that is malformed.
        """
        environ = os.environ if env is None else env
        url = store_url or environ.get("DURABLE_FX_STORE", "").strip() or None
        chosen_hub = hub or _hub_in_url(url) or environ.get("DURABLE_FX_HUB", "").strip()
        count = partition_count(partitions, _option_in_url(url, "partitions"), environ)
        level = management_auth_level or environ.get("DURABLE_FX_MANAGEMENT_AUTH", "FUNCTION")
        limit = max_request_bytes or _int_setting(
            environ, "DURABLE_FX_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES
        )
        body_timeout = _seconds_setting(
            environ, "DURABLE_FX_BODY_TIMEOUT_SECONDS", DEFAULT_BODY_TIMEOUT_SECONDS
        )
        return cls(
            hub=_valid_hub(chosen_hub or DEFAULT_HUB),
            partitions=count,
            connection=connection
            or environ.get("DURABLE_FX_CONNECTION", "").strip()
            or DEFAULT_CONNECTION,
            store_url=store_url,
            management_auth_level=_auth_level(level),
            max_request_bytes=limit,
            body_timeout_seconds=body_timeout,
            public_url=_public_url(environ.get("DURABLE_FX_PUBLIC_URL", "")),
            default_version=default_version
            or environ.get("DURABLE_FX_DEFAULT_VERSION", "").strip()
            or None,
            dashboard_route=_dashboard_route(
                environ.get("DURABLE_FX_DASHBOARD_ROUTE", "").strip() or DEFAULT_DASHBOARD_ROUTE
            ),
        )


def _valid_hub(hub: str) -> str:
    name = hub.strip().lower()
    if not _HUB.fullmatch(name):
        raise ValueError(
            f"invalid task hub name {hub!r} (DURABLE_FX_HUB): use 3-40 letters and digits, "
            "starting with a letter; it names queues, a table and a blob container"
        )
    return name


def _dashboard_route(route: str) -> str:
    trimmed = route.strip("/")
    if not _ROUTE.fullmatch(trimmed) or trimmed.split("/")[0] in _TAKEN_ROUTES:
        raise ValueError(
            f"invalid dashboard route {route!r} (DURABLE_FX_DASHBOARD_ROUTE): use path "
            "segments of letters, digits, '-' and '_' (like ops/dashboard), not under "
            + " or ".join(f"{taken}/" for taken in _TAKEN_ROUTES)
        )
    return trimmed


def _auth_level(value: str) -> AuthLevelName:
    upper = value.strip().upper()
    for level in _AUTH_LEVELS:
        if level == upper:
            return level
    raise ValueError(
        f"invalid auth level {value!r} (DURABLE_FX_MANAGEMENT_AUTH): use " + ", ".join(_AUTH_LEVELS)
    )


def _int_setting(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of bytes, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def _seconds_setting(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def _public_url(raw: str) -> str | None:
    """``DURABLE_FX_PUBLIC_URL`` as ``scheme://host[:port][/path]``, without a final slash."""
    text = raw.strip().rstrip("/")
    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"DURABLE_FX_PUBLIC_URL must look like https://app.example.com, not {raw.strip()!r}"
        )
    return text


def _hub_in_url(url: str | None) -> str | None:
    """The task hub a store URL names (``TaskHub=`` or ``?hub=``), as the Azure store reads it."""
    return _option_in_url(url, "hub")


def _option_in_url(url: str | None, option: str) -> str | None:
    """``hub`` (``?hub=``, ``TaskHub=``) or ``partitions`` of a store URL, as the store reads it."""
    if not url:
        return None
    if url.startswith("azure://"):
        return parse_qs(urlsplit(url).query).get(option, [None])[-1]
    key_name = "taskhub" if option == "hub" else option
    for segment in url.split(";"):
        key, _, value = segment.partition("=")
        if key.strip().lower() == key_name and value.strip():
            return value.strip()
    return None
