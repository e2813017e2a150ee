"""Azure Functions bindings: ``DurableApp``, the HTTP management API and event sources.

Needs the ``functions`` extra (``pip install 'durable-fx[functions]'``), which
brings ``azure-functions``. ``DurableApp`` is also importable as
``durable_fx.DurableApp``.
"""

from __future__ import annotations

from ._app import DurableApp, is_durable_trigger
from ._host_json import HostConfig, QueueOptions
from ._http import FieldProblem, HttpProblem, problem_response, read_body
from ._ledger import EventLedger
from ._management import check_status_payload, status_json
from ._runtime import AppRuntime, MessageRejected
from ._settings import FunctionsSettings
from ._verify import (
    WebhookRejected,
    WebhookVerifier,
    event_grid_handshake,
    github_signature,
    hmac_sha256,
)

__all__ = [
    "AppRuntime",
    "DurableApp",
    "EventLedger",
    "FieldProblem",
    "FunctionsSettings",
    "HostConfig",
    "HttpProblem",
    "MessageRejected",
    "QueueOptions",
    "WebhookRejected",
    "WebhookVerifier",
    "check_status_payload",
    "event_grid_handshake",
    "github_signature",
    "hmac_sha256",
    "is_durable_trigger",
    "problem_response",
    "read_body",
    "status_json",
]
