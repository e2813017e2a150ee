"""Exposing the sidecar: a bearer token, TLS, and the warning for open binds.

The sidecar lets whoever reaches its port start, read, terminate and purge
instances and take work items, so off loopback it wants a token (checked on
every call, in constant time, before any handler runs) and TLS (so the token
and the payloads do not travel in clear text).
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._proto import grpc

__all__ = ["TOKEN_ENV", "BearerTokenInterceptor", "TlsFiles", "exposure_warning"]

TOKEN_ENV = "DURABLE_FX_SIDECAR_TOKEN"
"""The environment variable the CLI reads the token from (kept out of ``ps``)."""

# -- the bearer token --------------------------------------------------------------------------


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call without ``authorization: Bearer <token>`` as UNAUTHENTICATED.

    The check runs before the handler, so a refused call does nothing; the
    comparison takes the same time whatever the caller sent.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the sidecar's auth token must not be empty")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or self._authorized(handler_call_details):
            return handler
        return _refusing(handler, handler_call_details)

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        sent = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        if len(sent) != 1:
            return False
        value = sent[0]
        given = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(given, self._expected)


def _refusing(
    handler: grpc.RpcMethodHandler[Any, Any], details: grpc.HandlerCallDetails
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as ``handler`` that answers UNAUTHENTICATED."""
    sent = any(key == "authorization" for key, _ in details.invocation_metadata or ())
    message = (
        "the token in the 'authorization' metadata is not this sidecar's"
        if sent
        else "this sidecar needs 'authorization: Bearer <token>' metadata on every call"
    )

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A PEM certificate chain and its unencrypted private key, read and checked."""

    cert: bytes
    key: bytes

    @classmethod
    def load(cls, cert: str | Path, key: str | Path) -> TlsFiles:
        """Read both files; ValueError says which one is unreadable or why they do not fit.

        gRPC would only say "Failed to bind" for a bad pair, so ``ssl`` checks
        them first: both PEM, and the key the certificate's.
        """
        cert_pem = _read(cert, "certificate")
        key_pem = _read(key, "private key")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                cert, key, password=_no_password
            )
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(
                f"the TLS certificate {str(cert)!r} and key {str(key)!r} cannot be used: they "
                "must be PEM files, the key unencrypted and belonging to the certificate "
                f"({error})"
            ) from None
        return cls(cert_pem, key_pem)

    def credentials(self) -> grpc.ServerCredentials:
        """The server credentials gRPC's ``add_secure_port`` takes."""
        return grpc.ssl_server_credentials([(self.key, self.cert)])


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the TLS {what} {str(path)!r}: {error.strerror}") from None


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    return b""


# -- the warning for open binds ----------------------------------------------------------------


def exposure_warning(host: str, *, tls: bool, token: bool) -> str | None:
    """What is missing when ``host`` is reachable from other machines; None on loopback."""
    if _is_loopback(host) or (tls and token):
        return None
    missing = [
        *([] if token else [f"no token (set {TOKEN_ENV} or --auth-token)"]),
        *([] if tls else ["no TLS (--tls-cert and --tls-key)"]),
    ]
    return (
        f"the sidecar listens on {host}, beyond loopback, with {' and '.join(missing)}: "
        "anyone who reaches the port can start, read, terminate and purge instances and "
        "take work items"
        + ("" if tls else ", and everything (the token too) crosses the network in clear text")
    )


def _is_loopback(host: str) -> bool:
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
