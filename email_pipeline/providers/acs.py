"""Azure Communication Services Email (``azure-communication-email``).

The send's operation id is a UUID derived from the idempotency key, so a repeat
of a send names the same operation, and the ``messageId`` of the
``EmailDeliveryReportReceived`` events (the operation id) is known at send time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from ..models import EmailRequest, SendResult
from .base import PermanentProviderError, TransientProviderError

__all__ = ["AcsProvider", "acs_message", "operation_id_for"]

_NAMESPACE = uuid.UUID("5f6b2c1e-0d8a-4d43-9a5e-1f7c3e2b9a10")


def operation_id_for(idempotency_key: str) -> str:
    """The ACS operation id (also its message id) of a send."""
    return str(uuid.uuid5(_NAMESPACE, idempotency_key))


def acs_message(request: EmailRequest) -> dict[str, Any]:
    """The request as the ACS ``EmailMessage`` JSON."""
    content: dict[str, str] = {"subject": request.subject}
    if request.text:
        content["plainText"] = request.text
    if request.html:
        content["html"] = request.html
    recipients: dict[str, Any] = {"to": [{"address": a} for a in request.to]}
    if request.cc:
        recipients["cc"] = [{"address": a} for a in request.cc]
    return {"senderAddress": request.from_, "content": content, "recipients": recipients}


class AcsProvider:
    """Sends through ACS Email; ``client_factory`` builds the ``EmailClient`` (tests: a fake)."""

    name = "acs"

    def __init__(
        self, connection_string: str, *, client_factory: Callable[[str], Any] | None = None
    ) -> None:
        self._connection_string = connection_string
        self._factory = client_factory or _email_client

    def send(self, request: EmailRequest, idempotency_key: str) -> SendResult:
        """Start the send and wait for ACS to accept it; 429/5xx/network are transient."""
        from azure.core.exceptions import HttpResponseError, ServiceRequestError

        operation_id = operation_id_for(idempotency_key)
        client = self._factory(self._connection_string)
        try:
            poller = client.begin_send(acs_message(request), operation_id=operation_id)
            answer = poller.result()
        except ServiceRequestError as error:
            raise TransientProviderError(f"ACS unreachable: {error}") from None
        except HttpResponseError as error:
            status = error.status_code or 0
            if status == 429 or status >= 500:
                raise TransientProviderError(f"ACS {status}: {error.message}") from None
            raise PermanentProviderError(f"ACS {status}: {error.message}") from None
        state = str((answer or {}).get("status", "")).lower()
        if state not in ("succeeded", "running", "notstarted"):
            raise PermanentProviderError(f"ACS send {operation_id} ended {state}: {answer}")
        message_id = str((answer or {}).get("id") or operation_id)
        return SendResult(
            message_id=message_id, provider=self.name, idempotency_key=idempotency_key
        )


def _email_client(connection_string: str) -> Any:
    from azure.communication.email import EmailClient

    return EmailClient.from_connection_string(connection_string)
