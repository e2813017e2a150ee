"""Retrying what a flaky network breaks, and telling the outcomes apart.

The SDKs retry idempotent requests themselves; a POST whose response was lost
(an entity-group transaction, a queue put) is not retried by them, so every
store operation runs under ``retrying``. A retry of a call the service had
already applied then fails in its own way (409 exists, 412 changed, 404 gone);
the callers resolve those by reading back what they wrote (every conditional
write of an instance row carries a unique ``Token``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

__all__ = ["TRANSIENT_STATUS", "is_transient", "maybe_applied", "retrying", "status_of"]

log = logging.getLogger("durable_fx.storage.azure")

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_ATTEMPTS = 8
_FIRST_DELAY = 0.05
_MAX_DELAY = 4.0


def status_of(error: BaseException) -> int | None:
    """The HTTP status of an SDK error, if it has one."""
    status = getattr(error, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(error: BaseException) -> bool:
    """Throttling, server errors, timeouts and broken connections: worth another try."""
    if isinstance(error, ServiceRequestError | ServiceResponseError | TimeoutError):
        return True
    if isinstance(error, HttpResponseError):
        return status_of(error) in TRANSIENT_STATUS
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with the azure extra
        return False
    return isinstance(error, aiohttp.ClientError)


def maybe_applied(error: BaseException) -> bool:
    """A transient failure after the request may have reached the service."""
    return is_transient(error) and not isinstance(error, ServiceRequestError)


async def retrying(call: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Await ``call()``, retrying transient failures with jittered exponential back-off."""
    delay = _FIRST_DELAY
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await call()
        except Exception as error:
            if attempt == _ATTEMPTS or not is_transient(error):
                raise
            log.debug("%s failed (%s); retry %d in %.2f s", what, error, attempt, delay)
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, _MAX_DELAY)
    raise AssertionError("unreachable")  # pragma: no cover
