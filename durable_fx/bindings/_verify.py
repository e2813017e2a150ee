"""Webhook verification: signatures, replay windows and Event Grid's handshake.

A verifier looks at a request before anything is parsed or raised. It either
lets it through (returns ``None``), answers it itself (returns a response: a
handshake), or refuses it (raises ``WebhookRejected``, which becomes a 401 with
nothing raised). Verifiers compose in order: the first to answer or refuse wins.

A webhook needs no function key only when every verifier ``authenticates``
everything it lets through or answers. ``event_grid_handshake()`` answers the
validation handshakes without proof of the sender, so
``verify=[event_grid_handshake(), hmac_sha256("SECRET")]`` keeps the route's
key (FUNCTION): Event Grid calls it with ``?code=``, and notifications need the
signature as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Literal, Protocol

import azure.functions as func

__all__ = [
    "WebhookRejected",
    "WebhookVerifier",
    "event_grid_handshake",
    "github_signature",
    "hmac_sha256",
]


class WebhookRejected(Exception):
    """The request is not from the provider (or is a replay): answer 401, raise nothing."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class WebhookVerifier(Protocol):
    """Checks a webhook request; see the module docstring for the three outcomes."""

    methods: tuple[str, ...]
    """HTTP methods the verifier answers itself (added to the webhook's methods)."""
    authenticates: bool
    """Whether everything it lets through or answers comes from a proven sender.

    A webhook is ANONYMOUS by default only when all its verifiers authenticate.
    """

    def __call__(self, req: func.HttpRequest, body: bytes) -> func.HttpResponse | None: ...


class _HmacSha256:
    """HMAC-SHA256 of the body (or ``<timestamp>.<body>``) with a secret from app settings."""

    methods: tuple[str, ...] = ()
    authenticates = True

    def __init__(
        self,
        secret_setting: str,
        *,
        signature_header: str,
        prefix: str,
        encoding: Literal["hex", "base64"],
        timestamp_header: str | None,
        tolerance: timedelta,
        now: Callable[[], float],
    ) -> None:
        self._setting = secret_setting
        self._header = signature_header.lower()
        self._prefix = prefix
        self._encoding = encoding
        self._timestamp_header = timestamp_header.lower() if timestamp_header else None
        self._tolerance = tolerance.total_seconds()
        self._now = now

    def __call__(self, req: func.HttpRequest, body: bytes) -> func.HttpResponse | None:
        secret = os.environ.get(self._setting, "")
        if not secret:
            # A missing secret is our misconfiguration, not the caller's fault: fail closed, loudly.
            raise RuntimeError(
                f"the webhook secret setting {self._setting} is not set; "
                "add it to the app settings (local.settings.json locally)"
            )
        signed = body
        if self._timestamp_header is not None:
            signed = self._timestamp(req).encode() + b"." + body
        digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
        expected = digest.hex() if self._encoding == "hex" else base64.b64encode(digest).decode()
        offered = str(req.headers.get(self._header, ""))
        if not offered:
            raise WebhookRejected(f"missing signature header {self._header}")
        # Several signatures may be offered (secret rotation): any one valid one will do.
        for candidate in offered.replace(" ", ",").split(","):
            value = candidate.strip().removeprefix(self._prefix)
            if self._encoding == "hex":
                value = value.lower()  # hex is case-insensitive; some senders write it upper case
            if value and hmac.compare_digest(value.encode(), expected.encode()):
                return None
        raise WebhookRejected(f"invalid signature in {self._header}")

    def _timestamp(self, req: func.HttpRequest) -> str:
        assert self._timestamp_header is not None
        raw = str(req.headers.get(self._timestamp_header, "")).strip()
        try:
            sent = float(raw)
        except ValueError:
            sent = math.nan
        if not math.isfinite(sent):
            # nan compares false with everything, so it would pass any window check.
            problem = f"missing or malformed timestamp {self._timestamp_header}"
            raise WebhookRejected(problem)
        if abs(self._now() - sent) > self._tolerance:
            raise WebhookRejected(
                f"timestamp {raw} is outside the {self._tolerance:g} s window (a replay?)"
            )
        return raw


def hmac_sha256(
    secret_setting: str,
    *,
    signature_header: str = "X-Signature",
    prefix: str = "sha256=",
    encoding: Literal["hex", "base64"] = "hex",
    timestamp_header: str | None = "X-Timestamp",
    tolerance: timedelta = timedelta(minutes=5),
    now: Callable[[], float] = time.time,
) -> WebhookVerifier:
    """Verify an HMAC-SHA256 signature made with the secret in app setting ``secret_setting``.

    With ``timestamp_header`` (Unix seconds) the signed content is
    ``<timestamp>.<body>`` and requests outside ``tolerance`` are refused, so a
    captured request cannot be replayed later; ``None`` signs the body alone.
    The header may carry several comma-separated signatures (secret rotation).
    Comparisons are constant-time.
    """
    return _HmacSha256(
        secret_setting,
        signature_header=signature_header,
        prefix=prefix,
        encoding=encoding,
        timestamp_header=timestamp_header,
        tolerance=tolerance,
        now=now,
    )


def github_signature(secret_setting: str) -> WebhookVerifier:
    """GitHub's ``X-Hub-Signature-256: sha256=<hex>`` over the body (GitHub signs no time).

    With no timestamp a captured delivery stays valid; its event id is the
    body's digest, so a replay is a duplicate (``X-GitHub-Delivery`` is not signed).
    """
    return hmac_sha256(
        secret_setting,
        signature_header="X-Hub-Signature-256",
        prefix="sha256=",
        timestamp_header=None,
    )


class _EventGridHandshake:
    """Answers Event Grid's subscription validation; lets ordinary deliveries through."""

    methods: tuple[str, ...] = ("OPTIONS",)
    authenticates = False

    def __call__(self, req: func.HttpRequest, body: bytes) -> func.HttpResponse | None:
        if req.method.upper() == "OPTIONS":
            return self._cloud_events(req)
        if req.headers.get("aeg-event-type", "").lower() != "subscriptionvalidation":
            return None
        try:
            events = json.loads(body)
        except ValueError:
            raise WebhookRejected("malformed subscription validation request", 400) from None
        for event in events if isinstance(events, list) else [events]:
            if not isinstance(event, dict):
                continue
            kind = str(event.get("eventType") or event.get("type") or "")
            data = event.get("data")
            if kind.endswith("SubscriptionValidationEvent") and isinstance(data, dict):
                code = data.get("validationCode")
                if isinstance(code, str) and code:
                    answer = json.dumps({"validationResponse": code})
                    return func.HttpResponse(answer, mimetype="application/json")
        raise WebhookRejected("subscription validation without a validationCode", 400)

    @staticmethod
    def _cloud_events(req: func.HttpRequest) -> func.HttpResponse:
        """CloudEvents 1.0 abuse protection: echo the origin that asks to deliver."""
        origin = req.headers.get("webhook-request-origin", "")
        if not origin:
            raise WebhookRejected("OPTIONS without WebHook-Request-Origin", 400)
        headers = {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"}
        return func.HttpResponse(status_code=200, headers=headers)


def event_grid_handshake() -> WebhookVerifier:
    """Complete Event Grid's validation handshakes (Event Grid and CloudEvents schemas).

    Event Grid authenticates deliveries with the function key in the
    subscription's URL (``?code=``), so keep the webhook's auth level FUNCTION.
    """
    return _EventGridHandshake()
