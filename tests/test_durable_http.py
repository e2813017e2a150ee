"""Durable HTTP: ``ctx.call_http`` against a real HTTP server on loopback, on every store.

The server (tests/support/http_server.py) answers each path from a script and
records what it received, so the tests see what was really sent: how many
times, with which headers. Waits between polls are durable timers: the
history shows them, and the time-skipping environment passes hours of them.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from durable_fx import (
    DurableClient,
    DurableHttpResponse,
    HistoryEvent,
    ManagedIdentity,
    OrchestrationContext,
    OrchestrationStatus,
    Orchestrator,
    Registry,
    RetryPolicy,
    TaskFailedError,
    Worker,
    history_to_json,
)
from durable_fx.testing import TestEnvironment
from tests.support.http_server import IDENTITY_HEADER, TOKEN, Reply, ScriptedServer, scripted_server
from tests.support.instances import wait_until

WAIT = 30.0
MS = timedelta(milliseconds=1)
SECRET = "Bearer caller-s3cret-value"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with scripted_server() as running:
        yield running


def _history(client: DurableClient, iid: str) -> list[HistoryEvent]:
    state = client.get(iid, history=True)
    assert state is not None and state.history is not None
    return list(state.history)


def _poll_waits(history: list[HistoryEvent]) -> list[timedelta]:
    """The wait of each poll timer (fire_at minus when it was created)."""
    return [
        e.fire_at - e.timestamp
        for e in history
        if e.kind == "TimerCreated" and e.purpose == "http-poll"
    ]


def _failure_of(client: DurableClient, iid: str) -> Any:
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.FAILED, state.output
    assert state.failure is not None
    return state.failure


def _returns_response(registry: Registry, **call: Any) -> Callable[..., Any]:
    """Register an orchestrator that makes the call ``(method, url)`` given as input."""

    @registry.orchestrator(name="http_call")
    def http_call(ctx: OrchestrationContext, request: list[str]) -> Orchestrator[dict[str, Any]]:
        method, url = request
        response: DurableHttpResponse = yield ctx.call_http(method, url, **call)
        return response.model_dump()

    return http_call


# -- one request ---------------------------------------------------------------------------


def test_a_request_returns_status_headers_and_body(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script(
        "/hello", Reply(201, {"content-type": "application/json", "x-id": "7"}, '{"ok": 1}')
    )

    @registry.orchestrator()
    def create(ctx: OrchestrationContext) -> Orchestrator[list[Any]]:
        response: DurableHttpResponse = yield ctx.call_http(
            "post", url, headers={"X-Trace": "abc"}, content='{"name": "Ada"}'
        )
        return [response.status_code, response.header("X-Id"), response.json_body()]

    state = client.wait(client.start(create), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == [201, "7", {"ok": 1}]
    (seen,) = server.seen("/hello")
    assert (seen.method, seen.body) == ("POST", b'{"name": "Ada"}')
    assert seen.headers["x-trace"] == "abc"


def test_a_4xx_is_a_response_not_a_failure(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/missing", Reply(404, body="nope"))
    _returns_response(registry)
    state = client.wait(client.start("http_call", ["GET", url]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert (state.output["status_code"], state.output["content"]) == (404, "nope")


# -- 202 Accepted + Location: polled on durable timers ---------------------------------------


def test_a_202_is_polled_at_its_location_until_it_is_done(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/jobs", Reply(202, {"location": "/jobs/1", "retry-after": "1"}))
    server.script(
        "/jobs/1",
        Reply(202, {"location": "/jobs/1", "retry-after": "1"}),
        Reply(200, body="done"),
    )
    _returns_response(registry)
    iid = client.start("http_call", ["POST", url])
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert (state.output["status_code"], state.output["content"]) == (200, "done")
    assert [r.method for r in server.seen("/jobs")] == ["POST"]
    assert [r.method for r in server.seen("/jobs/1")] == ["GET", "GET"]
    # Retry-After: 1 → a durable timer of 1 s before each poll.
    assert _poll_waits(_history(client, iid)) == [timedelta(seconds=1)] * 2


def test_poll_false_returns_the_202_itself(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/accepted", Reply(202, {"location": "/elsewhere"}))
    _returns_response(registry, poll=False)
    state = client.wait(client.start("http_call", ["POST", url]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["status_code"] == 202
    assert server.seen("/elsewhere") == []


def test_a_worker_restart_mid_polling_resumes_without_sending_the_request_again(
    registry: Registry,
    make_worker: Callable[..., Worker],
    client: DurableClient,
    server: ScriptedServer,
) -> None:
    url = server.script("/orders", Reply(202, {"location": "/orders/9", "retry-after": "1"}))
    server.script(
        "/orders/9",
        Reply(202, {"location": "/orders/9", "retry-after": "2"}),
        Reply(200, body="shipped"),
    )
    _returns_response(registry)
    first = make_worker()
    iid = client.start("http_call", ["POST", url])
    # Stop while waiting for the second poll: the first poll's 202 is in history.
    wait_until(lambda: len(_poll_waits(_history(client, iid))) == 2, WAIT, what="second poll wait")
    first.stop()
    make_worker()
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["content"] == "shipped"
    assert len(server.seen("/orders")) == 1
    assert len(server.seen("/orders/9")) == 2


def test_a_202_without_location_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/lost", Reply(202))
    _returns_response(registry)
    failure = _failure_of(client, client.start("http_call", ["POST", url]))
    assert "HttpPollingError" in failure.message
    assert "without a Location header" in failure.message


@pytest.mark.parametrize(
    "value", ["soon", "-5", "1.5", "Fri, 99 Foo 2024 25:61:00 GMT", "9" * 40, "31536000000"]
)
def test_a_malformed_retry_after_fails_clearly(
    value: str,
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    server: ScriptedServer,
) -> None:
    url = server.script("/odd", Reply(202, {"location": "/odd/1", "retry-after": value}))
    _returns_response(registry)
    failure = _failure_of(client, client.start("http_call", ["POST", url]))
    assert "HttpPollingError" in failure.message
    assert "Retry-After" in failure.message and value in failure.message
    assert server.seen("/odd/1") == []


def test_a_location_that_is_not_http_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/elsewhere", Reply(202, {"location": "file:///etc/passwd"}))
    _returns_response(registry)
    failure = _failure_of(client, client.start("http_call", ["POST", url]))
    assert "HttpPollingError" in failure.message and "file:///etc/passwd" in failure.message


# -- retries and the timeout -----------------------------------------------------------------


def test_server_errors_are_retried_until_one_succeeds(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/flaky", Reply(503), Reply(502), Reply(200, body="fine"))
    _returns_response(registry, retry=RetryPolicy(first_interval=50 * MS, max_attempts=5))
    state = client.wait(client.start("http_call", ["GET", url]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["content"] == "fine"
    assert len(server.seen("/flaky")) == 3


def test_server_errors_that_outlast_the_retries_fail_the_call(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/down", Reply(500, body="broken"))
    _returns_response(registry, retry=RetryPolicy(first_interval=50 * MS, max_attempts=3))
    failure = _failure_of(client, client.start("http_call", ["GET", url]))
    assert "HttpServerError" in failure.message and "answered 500" in failure.message
    assert len(server.seen("/down")) == 3


def test_without_a_retry_policy_a_5xx_is_returned(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/down", Reply(503, body="later"))
    _returns_response(registry)
    state = client.wait(client.start("http_call", ["GET", url]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output["status_code"] == 503
    assert len(server.seen("/down")) == 1


def test_a_transport_error_is_retried_then_fails_clearly(
    registry: Registry, worker: Worker, client: DurableClient
) -> None:
    from tests.support.serve import free_port

    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    _returns_response(registry, retry=RetryPolicy(first_interval=50 * MS, max_attempts=2))
    iid = client.start("http_call", ["GET", url])
    failure = _failure_of(client, iid)
    assert "HttpTransportError" in failure.message and "ConnectError" in failure.message
    scheduled = [e for e in _history(client, iid) if e.kind == "TaskScheduled"]
    assert len(scheduled) == 2


def test_the_timeout_bounds_the_whole_call_polling_included(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/forever", Reply(202, {"location": "/forever", "retry-after": "1"}))

    @registry.orchestrator()
    def bounded(ctx: OrchestrationContext) -> Orchestrator[str]:
        try:
            yield ctx.call_http("GET", url, timeout=timedelta(seconds=2))
        except TaskFailedError as error:
            return f"{error.error_type}: {error.message}"
        return "finished?"

    iid = client.start(bounded)
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output.startswith("HttpTimeoutError: GET ")
    assert "did not finish within 0:00:02" in state.output
    # The call is over: no poll is left waiting to wake the instance.
    history = _history(client, iid)
    timeout = next(e for e in history if e.kind == "TimerCreated" and e.purpose == "http-timeout")
    assert timeout.fire_at - timeout.timestamp == timedelta(seconds=2)


def test_the_timeout_ends_a_request_still_in_flight(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    url = server.script("/slow", Reply(200, body="late", delay=3.0))
    _returns_response(registry, timeout=timedelta(seconds=1))
    failure = _failure_of(client, client.start("http_call", ["GET", url]))
    assert "HttpTimeoutError" in failure.message


# -- credentials stay out of history ---------------------------------------------------------


def test_authorization_reaches_the_server_and_its_polls_but_never_history(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    server: ScriptedServer,
    store_kind: str,
    store_url: str,
) -> None:
    url = server.script("/secure", Reply(202, {"location": "/secure/1", "retry-after": "1"}))
    server.script("/secure/1", Reply(200, body="ok"))
    _returns_response(registry, headers={"Authorization": SECRET, "X-Trace": "t-1"})
    iid = client.start("http_call", ["POST", url])
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    for seen in server.seen("/secure") + server.seen("/secure/1"):
        assert seen.headers["authorization"] == SECRET
    saved = history_to_json(_history(client, iid))
    assert "caller-s3cret-value" not in saved
    assert "X-Trace" in saved and "redacted" in saved  # the rest of the request is recorded
    if store_kind == "sqlite":  # what the CLI shows, from the store on disk
        from durable_fx.cli import app as cli

        result = CliRunner().invoke(cli, ["--store", store_url, "history", iid, "--episodes"])
        assert result.exit_code == 0, result.output
        assert "durable_fx.http" in result.stdout
        assert "caller-s3cret-value" not in result.stdout


def test_credentials_do_not_follow_a_location_to_another_origin(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    other = server.url.replace("127.0.0.1", "localhost") + "/other/1"
    url = server.script("/hop", Reply(202, {"location": other, "retry-after": "0"}))
    server.script("/other/1", Reply(200, body="ok"))
    _returns_response(registry, headers={"Authorization": SECRET, "X-Trace": "t-2"})
    state = client.wait(client.start("http_call", ["POST", url]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    (poll,) = server.seen("/other/1")
    assert "authorization" not in poll.headers
    assert poll.headers["x-trace"] == "t-2"


def test_a_managed_identity_token_reaches_the_server_but_never_history(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # azure-identity's App Service protocol, served by the test's own server.
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    url = server.script("/vault", Reply(202, {"location": "/vault/1", "retry-after": "0"}))
    server.script("/vault/1", Reply(200, body="secret-list"))
    _returns_response(registry, token_source=ManagedIdentity("https://vault.azure.net"))
    iid = client.start("http_call", ["GET", url])
    state = client.wait(iid, timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    for seen in server.seen("/vault") + server.seen("/vault/1"):
        assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert {r["resource"] for r in server.token_requests} == {"https://vault.azure.net"}
    saved = history_to_json(_history(client, iid))
    assert TOKEN not in saved
    assert "https://vault.azure.net" in saved  # which resource is recorded, not the token


def test_a_token_that_cannot_be_had_fails_the_call_clearly(
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "the-wrong-header")
    url = server.script("/vault", Reply(200))
    _returns_response(registry, token_source=ManagedIdentity("https://vault.azure.net"))
    failure = _failure_of(client, client.start("http_call", ["GET", url]))
    assert "HttpTokenError" in failure.message and "https://vault.azure.net" in failure.message
    assert server.seen("/vault") == []


# -- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GE T", "http://127.0.0.1/", "is not an HTTP method"),
        ("CONNECT", "http://127.0.0.1/", "is not supported"),
        ("GET", "file:///etc/passwd", "is not an http:// or https:// URL"),
        ("GET", "ftp://example.com/x", "is not an http:// or https:// URL"),
        ("GET", "http:///no-host", "has no host"),
        ("GET", "http://127.0.0.1/a b", "spaces or control characters"),
        ("GET", "http://127.0.0.1/?header=bad", "has a bad name or a line break"),
        ("GET", "http://127.0.0.1/?header=accent", "non-ASCII"),
    ],
)
def test_a_bad_method_url_or_header_fails_at_the_call(
    method: str, url: str, expected: str, registry: Registry, worker: Worker, client: DurableClient
) -> None:
    bad = {"bad": {"X-Injected": "a\r\nEvil: 1"}, "accent": {"X-Name": "Zoë"}}
    _returns_response(registry, headers=bad.get(url.rpartition("=")[2], {}))
    failure = _failure_of(client, client.start("http_call", [method, url]))
    assert failure.error_type == "ValueError"
    assert expected in failure.message


def test_a_huge_body_fails_naming_the_limit_and_the_worker_carries_on(
    registry: Registry, worker: Worker, client: DurableClient, server: ScriptedServer
) -> None:
    big = server.script("/big", Reply(200, body=b"x" * (2 * 1024 * 1024)))
    small = server.script("/small", Reply(200, body="fine"))
    retry = RetryPolicy(first_interval=50 * MS, max_attempts=3)
    _returns_response(registry, max_response_bytes=1024 * 1024, retry=retry)
    failure = _failure_of(client, client.start("http_call", ["GET", big]))
    assert "HttpResponseTooLargeError" in failure.message
    assert "1048576-byte limit" in failure.message
    assert len(server.seen("/big")) == 1  # a retry cannot make it smaller
    state = client.wait(client.start("http_call", ["GET", small]), timeout=WAIT)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure


# -- time skipping: hours of polling in milliseconds ------------------------------------------


@pytest.fixture
def http_app() -> Registry:
    app = Registry()

    @app.orchestrator()
    def long_job(ctx: OrchestrationContext, url: str) -> Orchestrator[str]:
        response: DurableHttpResponse = yield ctx.call_http("POST", url)
        return response.content

    return app


def test_retry_after_as_an_http_date_and_the_default_interval_are_durable_timers(
    http_app: Registry, server: ScriptedServer
) -> None:
    with TestEnvironment(http_app) as env:
        began = env.now()
        in_two_hours = email.utils.format_datetime(began + timedelta(hours=2), usegmt=True)
        url = server.script("/report", Reply(202, {"location": "/report/1"}))
        server.script(
            "/report/1",
            Reply(202, {"location": "/report/1", "retry-after": in_two_hours}),
            Reply(202, {"location": "/report/1", "retry-after": "3600"}),
            Reply(200, body="ready"),
        )
        iid = env.sync_client.start("long_job", url)
        state = env.sync_client.wait(iid)
        history = env.sync_client.get(iid, history=True)
    assert state.status is OrchestrationStatus.COMPLETED, state.failure
    assert state.output == "ready"
    assert history is not None and history.history is not None
    # No Retry-After: the 30 s default; then the HTTP-date; then 3600 seconds.
    waits = _poll_waits(list(history.history))
    assert waits == [
        timedelta(seconds=30),
        timedelta(hours=2) - timedelta(seconds=30),
        timedelta(hours=1),
    ]
    assert env.now() - began == timedelta(hours=3)


# -- rewind: history has no Authorization to send again --------------------------------------


@pytest.mark.parametrize("with_secret", [False, True], ids=["plain", "authorization"])
def test_a_rewound_call_is_sent_again_unless_it_carried_authorization(
    with_secret: bool,
    registry: Registry,
    worker: Worker,
    client: DurableClient,
    server: ScriptedServer,
) -> None:
    url = server.script("/outage", Reply(500), Reply(200, body="back"))
    headers = {"Authorization": SECRET} if with_secret else {}
    _returns_response(
        registry, headers=headers, retry=RetryPolicy(first_interval=MS, max_attempts=1)
    )
    iid = client.start("http_call", ["GET", url])
    assert "HttpServerError" in _failure_of(client, iid).message
    client.rewind(iid, "the provider is back")
    # The store set it RUNNING as it took the rewind: this wait sees the new outcome.
    state = client.wait(iid, timeout=WAIT)
    if not with_secret:
        assert state.status is OrchestrationStatus.COMPLETED, state.failure
        assert state.output["content"] == "back"
        return
    # The request is not sent without its Authorization: it fails, saying why.
    assert state.status is OrchestrationStatus.FAILED
    assert state.failure is not None
    assert "HttpSecretUnavailableError" in state.failure.message
    assert len(server.seen("/outage")) == 1
