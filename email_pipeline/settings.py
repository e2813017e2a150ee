"""The pipeline's app settings (environment variables), with their defaults.

=====================================  ==============  ======================================
setting                                default         what it decides
=====================================  ==============  ======================================
``EMAIL_PROVIDER``                     ``smtp``        ``smtp`` or ``acs``
``SMTP_HOST`` / ``SMTP_PORT``          localhost / 25  the SMTP server
``SMTP_SECURITY``                      ``none``        ``none``, ``starttls`` or ``ssl``
``SMTP_USERNAME`` / ``SMTP_PASSWORD``                  login, when set
``SMTP_CA_FILE``                                       extra CA bundle to trust for TLS
``EMAIL_MESSAGE_ID_DOMAIN``            durable-fx.local right-hand side of our Message-IDs
``ACS_EMAIL_CONNECTION_STRING``                        the ACS resource (``acs``)
``EMAIL_RECEIPT_TIMEOUT_SECONDS``      ``86400``       wait for a receipt before escalating
``EMAIL_MAX_SENDS``                    ``3``           sends in all (soft bounces resend)
``EMAIL_RESEND_BACKOFF_SECONDS``       ``300``         first wait before a resend (doubles)
``EMAIL_SEND_RETRY_SECONDS``           ``5``           first wait after a transient error
``EMAIL_SEND_RETRY_ATTEMPTS``          ``5``           tries of one send on transient errors
``EMAIL_OPERATIONS_ADDRESS``           ops@example.com who hears about escalations
``DELIVERY_WEBHOOK_SECRET``                            HMAC secret of the delivery webhook
``EMAIL_DIGEST_SCHEDULE``              0 0 7 * * *     when the daily digest goes (NCRONTAB)
``EMAIL_SWEEP_INTERVAL_MINUTES``       ``15``          how often the stuck-delivery sweep runs
``EMAIL_STUCK_AFTER_SECONDS``          ``3600``        a receipt wait this long is overdue
=====================================  ==============  ======================================

The two schedules are read when ``function_app.py`` is imported (the host's
indexing, ``serve``'s start), so a malformed one stops the app at startup
with a ``ValueError`` naming the setting, rather than failing at 07:00.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import ValidationError

from durable_fx import ScheduleSpec

from .models import DeliveryPolicy

__all__ = [
    "DEFAULT_DIGEST_SCHEDULE",
    "digest_schedule",
    "policy_from_environment",
    "stuck_after_seconds",
    "sweep_schedule",
]

DEFAULT_DIGEST_SCHEDULE = "0 0 7 * * *"
"""07:00:00 UTC every day."""
_SWEEP_MINUTES = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440)
"""Intervals a timer trigger's NCRONTAB can keep evenly (steps of minutes or hours that
divide the hour or the day); the host takes a TimeSpan only on dedicated plans, not on
Flex Consumption, so the interval is written as a cron expression."""


def policy_from_environment(env: Mapping[str, str] | None = None) -> DeliveryPolicy:
    """The delivery policy from app settings; a malformed value is a ``ValueError``."""
    environ = os.environ if env is None else env
    fields = {
        "receipt_timeout_seconds": "EMAIL_RECEIPT_TIMEOUT_SECONDS",
        "max_sends": "EMAIL_MAX_SENDS",
        "resend_backoff_seconds": "EMAIL_RESEND_BACKOFF_SECONDS",
        "send_retry_first_seconds": "EMAIL_SEND_RETRY_SECONDS",
        "send_retry_attempts": "EMAIL_SEND_RETRY_ATTEMPTS",
        "operations_address": "EMAIL_OPERATIONS_ADDRESS",
    }
    values = {field: environ[name] for field, name in fields.items() if environ.get(name)}
    return DeliveryPolicy.model_validate(values)


def digest_schedule(env: Mapping[str, str] | None = None) -> str:
    """``EMAIL_DIGEST_SCHEDULE``: six-field NCRONTAB (seconds first), checked here."""
    environ = os.environ if env is None else env
    value = (environ.get("EMAIL_DIGEST_SCHEDULE") or DEFAULT_DIGEST_SCHEDULE).strip()
    # Six fields only: both the Functions host and serve read them the same way.
    if len(value.split()) != 6:
        raise ValueError(
            f"EMAIL_DIGEST_SCHEDULE must be six-field NCRONTAB (second minute hour day month "
            f"day-of-week, UTC), e.g. {DEFAULT_DIGEST_SCHEDULE!r}; got {value[:100]!r}"
        )
    try:
        ScheduleSpec(cron=value)
    except ValidationError as error:
        reason = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"EMAIL_DIGEST_SCHEDULE {value[:100]!r} is not valid: {reason}") from None
    return value


def sweep_schedule(env: Mapping[str, str] | None = None) -> str:
    """``EMAIL_SWEEP_INTERVAL_MINUTES`` as the NCRONTAB of a timer trigger."""
    environ = os.environ if env is None else env
    text = (environ.get("EMAIL_SWEEP_INTERVAL_MINUTES") or "15").strip()
    minutes = int(text) if text.isdigit() and len(text) < 6 else -1
    if minutes not in _SWEEP_MINUTES:
        raise ValueError(
            f"EMAIL_SWEEP_INTERVAL_MINUTES must be one of {', '.join(map(str, _SWEEP_MINUTES))} "
            f"(steps a timer schedule can keep evenly); got {text[:100]!r}"
        )
    if minutes < 60:
        return f"0 */{minutes} * * * *"
    hours = minutes // 60
    if hours == 24:
        return "0 0 0 * * *"
    return "0 0 * * * *" if hours == 1 else f"0 0 */{hours} * * *"


def stuck_after_seconds(env: Mapping[str, str] | None = None) -> float:
    """``EMAIL_STUCK_AFTER_SECONDS``: how long a receipt wait may last before it is overdue."""
    environ = os.environ if env is None else env
    text = (environ.get("EMAIL_STUCK_AFTER_SECONDS") or "3600").strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10 * 365 * 86400:  # NaN fails too
        raise ValueError(
            f"EMAIL_STUCK_AFTER_SECONDS must be a number of seconds above 0; got {text[:100]!r}"
        )
    return seconds
