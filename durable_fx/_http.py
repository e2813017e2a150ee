"""Durable HTTP: what ``ctx.call_http`` sends, what it gets back, and the rules in between.

The request runs as the built-in activity ``durable_fx.http``
(``_http_activity``); the orchestration side (``_replay/http.py``) follows a
``202 Accepted`` + ``Location`` answer with durable timers between polls. The
types here travel between the two as JSON: they are the activity's input and
output, so their fields are part of what history records.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from ._retry import RetryPolicy

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "HTTP_ACTIVITY",
    "METHODS",
    "PERMANENT_ERRORS",
    "SECRET_HEADERS",
    "DurableHttpResponse",
    "HttpCallOptions",
    "HttpRequestSpec",
    "ManagedIdentity",
    "check_method",
    "check_url",
    "http_options",
    "poll_location",
    "retry_after",
    "same_origin",
    "split_secrets",
]

HTTP_ACTIVITY = "durable_fx.http"
"""The built-in activity that sends one request (registered by every Registry)."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization"})
"""Headers whose values history never records (lower case)."""
DEFAULT_POLL_INTERVAL = timedelta(seconds=30)
"""Wait between polls when a 202 has no ``Retry-After`` (Durable Functions' default too)."""
DEFAULT_REQUEST_TIMEOUT = timedelta(seconds=100)
"""Bound of one request (the original or a poll) when the call has no ``timeout``."""
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""Largest response body a call accepts: the response is saved in history."""
PERMANENT_ERRORS = frozenset({"HttpResponseTooLargeError", "HttpSecretUnavailableError"})
"""The activity's failures (``error_type``) that no retry can fix: a RetryPolicy skips them."""
_LONGEST_WAIT_S = 366 * 24 * 3600
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ManagedIdentity(BaseModel):
    """Attach an Azure AD token for ``resource`` to the request (``Authorization: Bearer``).

    The token is fetched where and when the request runs (the activity), with
    azure-identity's ``ManagedIdentityCredential`` (or ``DefaultAzureCredential``
    with ``default_credential=True``); it is never saved in history.

    Args:
        resource: The resource's App ID URI, e.g. ``https://management.azure.com``
            (or a scope ending in ``/.default``).
        client_id: A user-assigned identity's client id (``None``: the system-assigned one).
        default_credential: Use ``DefaultAzureCredential`` (environment, workload
            identity, managed identity, Azure CLI...), handy on a developer machine.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    resource: str = Field(min_length=1)
    client_id: str | None = None
    default_credential: bool = False

    def __init__(
        self, resource: str, *, client_id: str | None = None, default_credential: bool = False
    ) -> None:
        # Positional resource, as in Durable Functions' ManagedIdentityTokenSource(resource).
        super().__init__(
            resource=resource, client_id=client_id, default_credential=default_credential
        )

    @property
    def scope(self) -> str:
        """The scope azure-identity asks a token for."""
        if self.resource.endswith("/.default"):
            return self.resource
        return self.resource.rstrip("/") + "/.default"


class DurableHttpResponse(BaseModel):
    """What ``yield ctx.call_http(...)`` returns: the final response (after any polling).

    ``headers`` has lower-case names; a header sent several times is joined
    with ``", "``. ``content`` is the body decoded as text (the response's
    charset, else UTF-8).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    status_code: int
    headers: dict[str, str] = Field(default_factory=dict)
    content: str = ""

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), if it was sent."""
        return self.headers.get(name.lower())

    def json_body(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not)."""
        import json

        return json.loads(self.content)

    @property
    def is_success(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status_code < 300


class HttpRequestSpec(BaseModel):
    """One request the built-in activity sends: the activity's input."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    content: str | None = None
    token_source: ManagedIdentity | None = None
    redacted: list[str] = Field(default_factory=list)
    """Headers whose values were left out: set only in the copy history records."""
    timeout: float
    """Seconds this one request may take."""
    max_response_bytes: int
    fail_on_server_error: bool = False
    """Raise on 5xx (so that a RetryPolicy sees a failure) instead of returning it."""


@dataclass(frozen=True, slots=True)
class HttpCallOptions:
    """One ``call_http``, checked: what to send and how to follow it up."""

    method: str
    url: str
    headers: dict[str, str]
    """Headers history may record."""
    secrets: dict[str, str]
    """Headers it may not (Authorization): the work item only."""
    content: str | None
    token_source: ManagedIdentity | None
    retry: RetryPolicy | None
    timeout: timedelta | None
    poll: bool
    poll_interval: timedelta
    request_timeout: timedelta
    max_response_bytes: int


def http_options(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None,
    content: str | None,
    retry: RetryPolicy | None,
    timeout: timedelta | None,
    token_source: ManagedIdentity | None,
    poll: bool,
    poll_interval: timedelta,
    max_response_bytes: int,
) -> HttpCallOptions:
    """The options of one ``call_http``, checked (``ValueError`` or ``TypeError`` saying why)."""
    kept, secret_names = split_secrets(headers or {})
    secrets = {name: (headers or {})[name] for name in secret_names}
    if content is not None and not isinstance(content, str):
        raise TypeError(
            f"call_http: content must be text (str), not {type(content).__name__}; "
            "encode JSON yourself (json.dumps) and set Content-Type"
        )
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"call_http: retry must be a RetryPolicy, not {type(retry).__name__}")
    if token_source is not None and not isinstance(token_source, ManagedIdentity):
        raise TypeError(
            f"call_http: token_source must be a ManagedIdentity, not {type(token_source).__name__}"
        )
    for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
        if value is not None and value <= timedelta(0):
            raise ValueError(f"call_http: {name} must be positive, not {value}")
    if isinstance(max_response_bytes, bool) or max_response_bytes < 1:
        raise ValueError(
            f"call_http: max_response_bytes must be positive, not {max_response_bytes}"
        )
    return HttpCallOptions(
        method=check_method(method),
        url=check_url(url),
        headers=kept,
        secrets=secrets,
        content=content,
        token_source=token_source,
        retry=retry,
        timeout=timeout,
        poll=poll,
        poll_interval=poll_interval,
        request_timeout=DEFAULT_REQUEST_TIMEOUT,
        max_response_bytes=max_response_bytes,
    )


def check_method(method: str) -> str:
    """``method`` upper-cased; ``ValueError`` naming the methods allowed."""
    if not isinstance(method, str) or not _TOKEN.match(method):
        raise ValueError(f"call_http: {method!r} is not an HTTP method")
    upper = method.upper()
    if upper not in METHODS:
        allowed = ", ".join(sorted(METHODS))
        raise ValueError(f"call_http: method {method!r} is not supported (one of {allowed})")
    return upper


def check_url(url: str, *, what: str = "url") -> str:
    """``url`` if it is an absolute http(s) URL with a host; ``ValueError`` saying why not."""
    if not isinstance(url, str):
        raise ValueError(f"call_http: {what} must be a string, not {type(url).__name__}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError(f"call_http: {what} {url[:200]!r} contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"call_http: {what} {url[:200]!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"call_http: {what} {url[:200]!r} has no host")
    return url


def split_secrets(headers: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """``headers`` without the secret ones, and the names of those left out."""
    kept: dict[str, str] = {}
    secret: list[str] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"call_http: header {name!r} must map a string to a string")
        if not _TOKEN.match(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"call_http: header {name!r} has a bad name or a line break")
        if not value.isascii():  # HTTP sends header values as bytes: say so here, not later
            raise ValueError(f"call_http: header {name!r} has non-ASCII characters")
        if name.lower() in SECRET_HEADERS:
            secret.append(name)
        else:
            kept[name] = value
    return kept, secret


def poll_location(response: DurableHttpResponse, request_url: str) -> str:
    """The absolute URL a 202's ``Location`` points to; ``ValueError`` if it has none usable."""
    location = response.header("location")
    if not location:
        raise ValueError(
            f"{request_url[:200]} answered 202 Accepted without a Location header, so there "
            "is nothing to poll; pass poll=False to get the 202 response itself"
        )
    return check_url(urljoin(request_url, location.strip()), what="the 202's Location")


def retry_after(response: DurableHttpResponse, now: datetime) -> timedelta | None:
    """The wait a ``Retry-After`` header asks for (``None``: no header); ``ValueError`` if bad.

    It is either whole seconds or an HTTP-date; a date in the past means now.
    """
    value = response.header("retry-after")
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        wait = timedelta(seconds=min(int(text), _LONGEST_WAIT_S + 1))
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            when = None
        if when is None or when.tzinfo is None:
            raise ValueError(
                f"the 202's Retry-After {text[:100]!r} is neither whole seconds nor an HTTP-date"
            )
        wait = max(when - now, timedelta(0))
    if wait.total_seconds() > _LONGEST_WAIT_S:  # a typo or hostile: not worth a year's timer
        raise ValueError(f"the 202's Retry-After {text[:100]!r} asks to wait over a year")
    return wait


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs have the same scheme, host and port (credentials may go to both)."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.hostname, _port(pa.scheme, pa.port)) == (
        pb.scheme.lower(),
        pb.hostname,
        _port(pb.scheme, pb.port),
    )


def _port(scheme: str, port: int | None) -> int:
    if port is not None:
        return port
    return 443 if scheme.lower() == "https" else 80
