"""A local SMTP server (aiosmtpd) that keeps what it receives: for the demo and tests."""

from __future__ import annotations

import asyncio
import email
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["LocalSmtp", "free_port"]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Inbox:
    """aiosmtpd handler: stores messages; ``refuse`` answers chosen RCPT addresses with a code."""

    messages: list[Message] = field(default_factory=list)
    refuse: dict[str, tuple[str, int]] = field(default_factory=dict)
    delay: float = 0.0
    started: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        with self.lock:
            answer, times = self.refuse.get(address, ("", 0))
            if times:
                self.refuse[address] = (answer, times - 1)
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.started += 1
        if self.delay:
            # A slow server. aiosmtpd cancels this handler if the client goes away
            # meanwhile, so a message whose sender died before the 250 is not kept.
            await asyncio.sleep(self.delay)
        with self.lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"


@dataclass(frozen=True)
class _Authenticator:
    """aiosmtpd authenticator: LOGIN/PLAIN against a dict of users."""

    users: dict[str, str]

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(login) == password:
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class LocalSmtp:
    """An SMTP server on ``127.0.0.1:<port>`` in a background thread (a context manager)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        delay: float = 0.0,
        tls_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        """With ``tls_context`` STARTTLS is required; with ``users`` so is a login."""
        self.port = port or free_port()
        self._inbox = _Inbox(delay=delay)
        options: dict[str, Any] = {}
        if tls_context is not None:
            options.update(tls_context=tls_context, require_starttls=True)
        if users is not None:
            options.update(auth_required=True, authenticator=_Authenticator(users))
        self._controller = Controller(self._inbox, hostname="127.0.0.1", port=self.port, **options)

    @property
    def messages(self) -> list[Message]:
        """Every message received so far."""
        with self._inbox.lock:
            return list(self._inbox.messages)

    @property
    def started(self) -> int:
        """How many messages reached DATA (kept or not)."""
        with self._inbox.lock:
            return self._inbox.started

    def refuse(self, address: str, answer: str, times: int = 1_000_000) -> None:
        """Answer RCPT TO ``address`` with ``answer`` (``"550 no such user"``), ``times`` times."""
        with self._inbox.lock:
            self._inbox.refuse[address] = (answer, times)

    def start(self) -> LocalSmtp:
        """Start listening."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._controller.stop()

    def __enter__(self) -> LocalSmtp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
