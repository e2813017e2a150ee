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
=====================================  ==============  ======================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .models import DeliveryPolicy

__all__ = ["policy_from_environment"]


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
