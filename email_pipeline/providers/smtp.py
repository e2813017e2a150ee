"""SMTP (smtplib): plain, STARTTLS or implicit TLS, with optional login."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

from ..models import EmailRequest, SendResult
from .base import PermanentProviderError, TransientProviderError, message_id_for

__all__ = ["SmtpProvider", "build_message"]

Security = Literal["none", "starttls", "ssl"]


def build_message(request: EmailRequest, message_id: str) -> EmailMessage:
    """The MIME message: text and/or html alternatives, with our Message-ID."""
    message = EmailMessage()
    message["From"] = request.from_
    message["To"] = ", ".join(request.to)
    if request.cc:
        message["Cc"] = ", ".join(request.cc)
    message["Subject"] = request.subject
    message["Message-ID"] = message_id
    if request.text:
        message.set_content(request.text)
        if request.html:
            message.add_alternative(request.html, subtype="html")
    else:
        message.set_content(request.html or "", subtype="html")
    return message


@dataclass(frozen=True, slots=True)
class SmtpProvider:
    """Sends through an SMTP server; the message id is the Message-ID header."""

    host: str = "localhost"
    port: int = 25
    security: Security = "none"
    username: str | None = None
    password: str | None = None
    timeout: float = 30.0
    ca_file: str | None = None
    domain: str = "durable-fx.local"
    name: str = "smtp"

    def send(self, request: EmailRequest, idempotency_key: str) -> SendResult:
        """Send one message; SMTP 4xx and network errors are transient, 5xx permanent."""
        message_id = message_id_for(idempotency_key, self.domain)
        message = build_message(request, message_id)
        try:
            with self._connect() as smtp:
                if self.security == "starttls":
                    smtp.starttls(context=self._tls())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as error:
            raise PermanentProviderError(f"SMTP login refused: {error}") from None
        except smtplib.SMTPNotSupportedError as error:
            # Typically AUTH offered only after STARTTLS: a configuration error, not bad luck.
            raise PermanentProviderError(
                f"SMTP {self.host}:{self.port}: {error} (check SMTP_SECURITY)"
            ) from None
        except smtplib.SMTPResponseException as error:
            raise _classify(error.smtp_code, str(error)) from None
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise _classify(min(codes, default=550), str(error)) from None
        except (OSError, smtplib.SMTPException) as error:
            raise TransientProviderError(f"SMTP {self.host}:{self.port}: {error}") from None
        return SendResult(
            message_id=message_id, provider=self.name, idempotency_key=idempotency_key
        )

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            context = self._tls()
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout)

    def _tls(self) -> ssl.SSLContext:
        # Certificates are always verified; ca_file adds a private CA (or a self-signed server).
        return ssl.create_default_context(cafile=self.ca_file)


def _classify(code: int, text: str) -> Exception:
    if 400 <= code < 500:
        return TransientProviderError(f"SMTP {code}: {text}")
    return PermanentProviderError(f"SMTP {code}: {text}")
