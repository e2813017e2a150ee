"""The email app under ``durable-fx serve function_app:app``, and talking to it over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from email_pipeline.eventgrid import EMAIL_DELIVERY_REPORT
from email_pipeline.localrun import AppProcess, wait_until
from tests.support.azurite import Azurite, new_hub


@contextmanager
def served_email_app(
    request: pytest.FixtureRequest,
    workdir_name: str,
    store_kind: str,
    settings: dict[str, str],
    sqlite_query: str = "",
) -> Iterator[AppProcess]:
    """Serve the email app on a new SQLite file or Azurite hub; it must stop cleanly."""
    tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    workdir = tmp_path_factory.mktemp(workdir_name)
    if store_kind == "sqlite":
        url = f"sqlite:///{workdir / 'app.db'}{sqlite_query}"
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        url = azurite.connection_string(new_hub())
    process = AppProcess(url, settings, workdir / "serve.log")
    process.start()
    try:
        yield process
    except BaseException:
        # A failed test still stops its server: left running, its Popen is collected
        # in a later test and fails that one with an unraisable-exception warning.
        process.stop()
        raise
    assert process.stop() == 0


def email(to: str, **changes: Any) -> dict[str, Any]:
    return {"from": "shop@example.com", "to": [to], "subject": "s", "text": "t", **changes}


def awaiting(client: httpx.Client, instance_id: str, attempt: int = 1) -> str:
    def check() -> str | None:
        status = client.get(f"instances/{instance_id}").json().get("customStatus") or {}
        if status.get("stage") == "awaiting receipt" and status.get("attempt") == attempt:
            return str(status["message_id"])
        return None

    return wait_until(check, 30, f"{instance_id} to await receipt {attempt}")


def output(client: httpx.Client, instance_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        answer = client.get(f"instances/{instance_id}")
        return answer.json() if answer.status_code == 200 else None

    state = wait_until(check, 30, f"{instance_id} to finish")
    assert state["runtimeStatus"] == "Completed", state
    assert state["customStatus"]["stage"] == "done"
    found: dict[str, Any] = state["output"]
    return found


def acs_report(message_id: str, status: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "eventType": EMAIL_DELIVERY_REPORT,
        "subject": f"sender/shop@example.com/message/{message_id}",
        "eventTime": "2026-01-01T00:00:00Z",
        "dataVersion": "1.0",
        "data": {"messageId": message_id, "status": status, "recipient": "x@example.com"},
    }
