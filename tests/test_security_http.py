"""Issue 11, HTTP side: the security review's probes against a real ``durable-fx serve``.

Bounded bodies (finding 2, 14), no key in generated URLs and no trust in
``Host`` (finding 4), no key in logs (finding 5), 503 rather than 500 when
the store is busy (item 6), and the Functions review's configuration nits
(its finding 8). Probe names (A1, D40, V6...) are the review's.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from durable_fx import DurableApp, open_store
from durable_fx.storage.azure import AzureStore
from email_pipeline.localsmtp import LocalSmtp
from tests.support.instances import wait_until
from tests.support.serve import (
    HOST_JSON,
    REPO,
    Server,
    awaiting_receipt,
    new_id,
    server_env,
    signed,
    start_server,
)

pytestmark = pytest.mark.slow

FUNCTION_KEY = "fkey-123"
MASTER_KEY = "mkey-456"
SECRET = "s3cret"
MIB = 1024 * 1024
EMAIL = {"from": "shop@example.com", "to": ["ada@example.com"], "subject": "s", "text": "t"}


def email_app_env(smtp: LocalSmtp, **extra: str) -> dict[str, str]:
    """The review's setup: both keys, the webhook secret, a local SMTP server."""
    return server_env(
        DURABLE_FX_FUNCTION_KEYS=FUNCTION_KEY,
        DURABLE_FX_MASTER_KEY=MASTER_KEY,
        DELIVERY_WEBHOOK_SECRET=SECRET,
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        **extra,
    )


def serve_email_app(workdir: Path, env: dict[str, str], args: list[str] | None = None) -> Server:
    """``durable-fx serve function_app:app`` on a SQLite file in ``workdir``."""
    shutil.copy(REPO / "host.json", workdir)
    url = f"sqlite:///{workdir / 'app.db'}"
    running = start_server(workdir, "function_app:app", env, ["--store", url, *(args or [])])
    running.store_url = url
    return running


@pytest.fixture(scope="module")
def smtp() -> Iterator[LocalSmtp]:
    with LocalSmtp() as server:
        yield server


@pytest.fixture(scope="module")
def email_app(tmp_path_factory: pytest.TempPathFactory, smtp: LocalSmtp) -> Iterator[Server]:
    env = email_app_env(smtp, DURABLE_FX_BODY_TIMEOUT_SECONDS="3")
    running = serve_email_app(tmp_path_factory.mktemp("security-email"), env)
    yield running
    assert running.stop() == 0, running.logs()


def keyed(server: Server, key: str | None = FUNCTION_KEY) -> httpx.Client:
    return server.client(key=key)


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory (``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    block = b"x" * size
    for _ in range(total // size):
        yield block


def serve_memory_app(workdir: Path, env: dict[str, str], args: list[str] | None = None) -> Server:
    """``tests/apps/serve_app.py`` on the memory store: for checks that need no durability."""
    (workdir / "host.json").write_text(json.dumps(HOST_JSON))
    return start_server(workdir, "serve_app:app", env, ["--store", "memory://", *(args or [])])


# -- finding 2 and 14: bodies are bounded while they are read ---------------------------------


def test_a_60_mib_anonymous_chunked_body_is_refused_before_it_is_buffered(
    tmp_path: Path, smtp: LocalSmtp
) -> None:
    """D49/V6: the signed webhook is ANONYMOUS, so nothing else stands before the body."""
    running = serve_email_app(tmp_path, email_app_env(smtp))
    try:
        before = vm_hwm_kib(running.process.pid)
        with keyed(running, key=None) as anonymous:
            chunked = anonymous.post("webhooks/delivery", content=chunks(60 * MIB))
            declared = anonymous.post("webhooks/delivery", content=b"x" * (60 * MIB))
        grown_mib = (vm_hwm_kib(running.process.pid) - before) / 1024
    finally:
        running.stop()
    assert chunked.status_code == 413, chunked.text
    assert grown_mib < 20, f"peak RSS grew by {grown_mib:.1f} MiB for a 60 MiB body"
    assert "1048576" in chunked.json()["error"]
    assert "DURABLE_FX_MAX_REQUEST_BYTES" in chunked.json()["error"]
    assert chunked.json()["fields"][0]["field"] == "body"
    assert chunked.headers["connection"] == "close"  # the rest is never read
    assert declared.status_code == 413  # Content-Length: refused before reading at all
    assert "62914560 bytes" in declared.json()["error"]


def test_a_3_mib_email_request_is_413(email_app: Server) -> None:
    """D48: the app's own route takes the same limit as the management API."""
    with keyed(email_app) as client:
        big = client.post("emails", json={**EMAIL, "text": "x" * (3 * MIB)})
        assert big.status_code == 413
        assert "DURABLE_FX_MAX_REQUEST_BYTES" in big.json()["error"]


def test_the_email_route_checks_the_limit_itself_under_the_functions_host() -> None:
    """Under Azure the host's limit is 100 MB: ``emails`` must refuse a 3 MiB body itself."""
    script = (
        "import asyncio, json, function_app\n"
        "from durable_fx.hosting import http_request\n"
        "fn = {f.get_function_name(): f.get_user_function()\n"
        "      for f in function_app.app.get_functions()}['emails']\n"
        "body = json.dumps({'from': 'a@b.c', 'to': ['d@e.f'], 'subject': 's',\n"
        "                   'text': 'x' * (3 * 1024 * 1024)}).encode()\n"
        "req = http_request('POST', 'http://localhost:7071/api/emails', {}, {}, {}, body)\n"
        "response = asyncio.run(fn(req=req))\n"
        "print(response.status_code, response.get_body().decode())\n"
    )
    env = server_env(DURABLE_FX_STORE="memory://")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.strip().splitlines()[-1].partition(" ")
    assert status == "413"
    assert "DURABLE_FX_MAX_REQUEST_BYTES" in json.loads(body)["error"]


def test_a_slow_body_gets_408_and_the_connection_closes(email_app: Server) -> None:
    """A client that never finishes its body cannot hold a connection (and its buffer) forever."""
    with socket.create_connection(("127.0.0.1", email_app.port), timeout=60) as conn:
        conn.sendall(
            b"POST /api/webhooks/delivery HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"{" * 10
        )
        answer = b""
        while chunk := conn.recv(65536):  # until the server closes
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"DURABLE_FX_BODY_TIMEOUT_SECONDS" in body


# -- finding 4: no key in generated URLs, and the request's Host is not trusted ----------------


def start_email(client: httpx.Client, **kwargs: Any) -> httpx.Response:
    response = client.post("emails", json=EMAIL, **kwargs)
    assert response.status_code == 202, response.text
    return response


def assert_no_key_and_our_origin(response: httpx.Response, origin: str) -> None:
    text = response.text + json.dumps(dict(response.headers))
    assert "code=" not in text
    assert FUNCTION_KEY not in text
    assert MASTER_KEY not in text
    payload = response.json()
    urls = [v for k, v in payload.items() if k.endswith("Uri")] if "id" in payload else []
    for url in [*urls, response.headers["location"]]:
        assert url.startswith(f"{origin}/api/instances/"), url


def test_status_urls_carry_no_key(email_app: Server) -> None:
    """A1 (header key), A2/V4 (master key in ?code=): neither is echoed anywhere."""
    with keyed(email_app) as client, keyed(email_app, key=None) as anonymous:
        a1 = start_email(client)
        assert_no_key_and_our_origin(a1, email_app.base)
        assert len([k for k in a1.json() if k.endswith("Uri")]) == 8
        a2 = start_email(anonymous, params={"code": MASTER_KEY})
        assert_no_key_and_our_origin(a2, email_app.base)
        # The URLs work with the caller's own key, sent as a header.
        assert client.get(a1.headers["location"]).status_code in (200, 202)
        assert anonymous.get(a1.headers["location"]).status_code == 401


def test_the_202_location_of_a_running_instance_carries_no_key(email_app: Server) -> None:
    with keyed(email_app, key=None) as anonymous:
        instance_id = start_email(anonymous, params={"code": MASTER_KEY}).json()["id"]
        running = anonymous.get(f"instances/{instance_id}", params={"code": MASTER_KEY})
    assert running.status_code == 202, running.text
    assert MASTER_KEY not in running.headers["location"]
    assert running.headers["location"] == f"{email_app.base}/api/instances/{instance_id}"


@pytest.mark.parametrize(
    "header", [{"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"}], ids=["D38", "D39"]
)
def test_the_request_host_does_not_choose_the_url_host(
    email_app: Server, header: dict[str, str]
) -> None:
    """D38/V3: absolute URLs come from configuration, never from the caller's headers."""
    with keyed(email_app) as client:
        response = start_email(client, headers=header)
    assert "evil.example" not in response.text
    assert_no_key_and_our_origin(response, email_app.base)


@pytest.mark.parametrize(
    ("settings", "origin"),
    [
        ({"WEBSITE_HOSTNAME": "mail-app.azurewebsites.net"}, "https://mail-app.azurewebsites.net"),
        (
            {
                "WEBSITE_HOSTNAME": "mail-app.azurewebsites.net",
                "DURABLE_FX_PUBLIC_URL": "https://mail.example.com/",
            },
            "https://mail.example.com",
        ),
        (
            {
                "CONTAINER_APP_NAME": "email",
                "CONTAINER_APP_ENV_DNS_SUFFIX": "calm-sea-1.westeurope.azurecontainerapps.io",
            },
            "https://email.calm-sea-1.westeurope.azurecontainerapps.io",
        ),
    ],
    ids=["WEBSITE_HOSTNAME", "DURABLE_FX_PUBLIC_URL", "container-app"],
)
def test_urls_use_the_configured_origin(
    tmp_path: Path, settings: dict[str, str], origin: str
) -> None:
    running = serve_memory_app(tmp_path, server_env(**settings))
    try:
        with running.client() as client:
            response = client.post(
                "orchestrators/fulfil", json={"order_id": "o", "quantity": 1}, headers={"Host": "x"}
            )
    finally:
        running.stop()
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"{origin}/api/instances/{response.json()['id']}"
    assert response.json()["purgeHistoryDeleteUri"].startswith(f"{origin}/api/instances/")


# -- finding 5: no key in any log line ---------------------------------------------------------


def test_a_management_500_logs_the_path_without_the_key(email_app: Server) -> None:
    """D40/V5: the 500's log line names method and path, never the query (it held ?code=)."""
    with keyed(email_app, key=None) as anonymous:
        instance_id = start_email(anonymous, params={"code": MASTER_KEY}).json()["id"]
        with keyed(email_app) as client:  # then nothing writes its row until a receipt comes
            wait_until(lambda: awaiting_receipt(client, instance_id))
        with sqlite3.connect(email_app.store_url.removeprefix("sqlite:///"), timeout=30) as db:
            # A row no code wrote: reading it fails inside the handler, a genuine 500.
            db.execute("UPDATE instances SET status = 'bogus' WHERE instance_id = ?", [instance_id])
        failed = anonymous.get(f"instances/{instance_id}", params={"code": MASTER_KEY})
        assert failed.status_code == 500
        token = "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAsICJ4Il0="  # [10**30, "x"]
        d40 = anonymous.get("instances", params={"code": MASTER_KEY, "continuationToken": token})
        assert d40.status_code == 400
    lines = wait_until(
        lambda: [line for line in email_app.logs().splitlines() if f"{instance_id}" in line]
    )
    assert MASTER_KEY not in email_app.logs()
    assert any(f"GET /api/instances/{instance_id} failed" in line for line in lines)
    assert FUNCTION_KEY not in email_app.logs()


_TOKEN = re.compile(r"(?<![\w-])[\w-]{32}(?![\w-])")  # secrets.token_urlsafe(24)


def test_the_generated_key_is_printed_once_and_never_logged(tmp_path: Path) -> None:
    """A0: text format prints it once on the terminal, outside any log record."""
    env = server_env()
    del env["DURABLE_FX_FUNCTION_KEYS"]
    running = serve_memory_app(tmp_path, env)
    try:
        # Printed just after serve starts listening: the first answer can come before it.
        lines = wait_until(
            lambda: [line for line in running.logs().splitlines() if "this run's key" in line],
            what="the key's line",
        )
        assert len(lines) == 1
        key = re.findall(r"this run's key (\S+)", lines[0])[0]
        assert lines[0].startswith("durable-fx serve:")  # not a timestamped log record
        with running.client(key=key) as client:
            assert client.get("instances").status_code == 200
        with running.client(key=None) as anonymous:
            assert anonymous.get("instances").status_code == 401
    finally:
        running.stop()
    assert running.logs().count(key) == 1


def test_json_logs_hold_no_key_and_anonymous_management_warns(tmp_path: Path) -> None:
    """A0 in the Dockerfile's format; L2: ANONYMOUS management auth is announced."""
    env = server_env(DURABLE_FX_MANAGEMENT_AUTH="ANONYMOUS")
    del env["DURABLE_FX_FUNCTION_KEYS"]
    running = serve_memory_app(tmp_path, env, ["--log-format", "json"])
    try:
        with running.client(key=None) as anonymous:
            assert anonymous.get("instances").status_code == 200  # opted in
            assert anonymous.post("orchestrators/fulfil", json={}).status_code == 400
    finally:
        running.stop()
    records = [json.loads(line) for line in running.logs().splitlines()]  # every line is JSON
    warnings = [r["message"] for r in records if r["level"] == "WARNING"]
    assert any("DURABLE_FX_MANAGEMENT_AUTH=ANONYMOUS" in w for w in warnings)
    assert any("DURABLE_FX_FUNCTION_KEYS" in w for w in warnings)
    leaked = [t for r in records for t in _TOKEN.findall(json.dumps(r))]
    assert leaked == []


# -- item 6: a busy store is a 503 with Retry-After, and the loop keeps serving -----------------


def test_a_locked_store_answers_503_and_the_server_keeps_answering(tmp_path: Path) -> None:
    """E1/E2 for the management API: another process holds the SQLite write lock."""
    (tmp_path / "host.json").write_text(json.dumps(HOST_JSON))
    url = f"sqlite:///{tmp_path / 'app.db'}?busy_timeout=1"  # the budget: 1 s of waiting
    running = start_server(tmp_path, "serve_app:app", server_env(), ["--store", url])
    holder = sqlite3.connect(tmp_path / "app.db", isolation_level=None, timeout=30)
    answers: dict[str, httpx.Response] = {}
    try:
        holder.execute("BEGIN IMMEDIATE")

        def start() -> None:
            with running.client() as client:
                answers["start"] = client.post(
                    f"orchestrators/fulfil/{new_id()}", json={"order_id": "o", "quantity": 1}
                )

        waiting = threading.Thread(target=start)
        waiting.start()
        time.sleep(0.5)  # let the start reach the lock; the order of the answers is the check
        health = httpx.get(running.base + "/", timeout=60)
        start_pending = waiting.is_alive()
        waiting.join(timeout=300)
        with running.client() as client:  # an app's own route that starts an instance
            answers["user route"] = client.put(f"orders/{new_id()}")
    finally:
        holder.rollback()
        holder.close()
        running.stop()
    assert health.status_code == 200
    assert start_pending, "GET / should answer while the start waits for the lock"
    for busy in answers.values():
        assert busy.status_code == 503, busy.text
        assert int(busy.headers["retry-after"]) >= 1
        assert "busy" in busy.json()["error"]


# -- the Functions review's finding 8 ----------------------------------------------------------


def test_the_example_settings_make_a_working_webhook(tmp_path: Path) -> None:
    """Copied to local.settings.json, the example names the secret the app reads."""
    values = json.loads((REPO / "local.settings.json.example").read_text())["Values"]
    assert "DELIVERY_WEBHOOK_SECRET" in values
    shutil.copy(REPO / "function_app.py", tmp_path)
    shutil.copy(REPO / "local.settings.json.example", tmp_path / "local.settings.json")
    env = server_env()
    running = serve_email_app(tmp_path, env)
    try:
        receipt = {"message_id": "<nobody@x>", "status": "delivered", "event_id": "e1"}
        raw, headers = signed(receipt, values["DELIVERY_WEBHOOK_SECRET"])
        with running.client(key=None) as anonymous:
            answer = anonymous.post("webhooks/delivery", content=raw, headers=headers)
    finally:
        running.stop()
    assert answer.status_code == 404, answer.text  # signature accepted; no such message yet


def test_a_custom_identity_connection_names_the_store_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``DURABLE_FX_CONNECTION=MyConn`` with ``MyConn__accountName``: that account, not
    ``AzureWebJobsStorage``'s, holds the store the triggers listen on."""
    for name in ("AzureWebJobsStorage", "DURABLE_FX_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DURABLE_FX_CONNECTION", "MyConn")
    monkeypatch.setenv("MyConn__accountName", "triggeraccount")
    monkeypatch.setenv("MyConn__credential", "managedidentity")
    monkeypatch.setenv("AzureWebJobsStorage__accountName", "hostaccount")
    app = DurableApp()
    store = open_store(app.settings.resolved_store_url(), hub=app.settings.hub)
    assert isinstance(store, AzureStore)
    settings = store.settings
    assert settings.account == "triggeraccount"
    assert settings.endpoint("queue") == "https://triggeraccount.queue.core.windows.net"
    assert settings.managed_identity


# -- finding 17 and probe I1: fields that would break the mail's headers ------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"to": ["a,victim2@evil.example"]}, "to.0"),  # I2: one header, two recipients
        ({"cc": ["a@example.com\r\nBcc: victim@evil.example"]}, "cc.0"),
        ({"from": "shop@example.com;victim@evil.example"}, "from"),
        ({"subject": "hello\r\nBcc: victim@evil.example"}, "subject"),  # I1: was a 202
        ({"subject": "hello\u2028Bcc: victim@evil.example"}, "subject"),
    ],
    ids=["comma", "crlf-cc", "semicolon-from", "crlf-subject", "line-separator"],
)
def test_header_breaking_email_fields_are_400(
    email_app: Server, change: dict[str, Any], field: str
) -> None:
    with keyed(email_app) as client:
        answer = client.post("emails", json={**EMAIL, **change})
    assert answer.status_code == 400, answer.text
    assert [f["field"] for f in answer.json()["fields"]] == [field]


def test_a_malformed_public_url_stops_serve_naming_the_setting(tmp_path: Path) -> None:
    """A URL without a scheme would make every generated link relative to nothing."""
    shutil.copy(REPO / "host.json", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "durable_fx.cli", "serve", "function_app:app"],
        cwd=tmp_path,
        env=server_env(DURABLE_FX_PUBLIC_URL="mail.example.com"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "DURABLE_FX_PUBLIC_URL must look like https://" in result.stderr
    assert "a bug in durable-fx" not in result.stderr
