"""Route templates, function keys and host.json, as the Functions host reads them."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta

import pytest

from durable_fx.bindings import HostConfig, WebhookRejected, github_signature, hmac_sha256
from durable_fx.hosting import FunctionKeys, RouteTable, RouteTemplate, http_request

GUID = "0b9f3d1e-8f2a-4b4e-9a1d-2f0c6b7e5d41"


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("instances", "instances", {}),
        ("instances", "INSTANCES", {}),
        ("instances/{id}", "instances/abc", {"id": "abc"}),
        ("instances/{id}", "instances", None),
        ("instances/{id}", "instances/a/b", None),
        ("orchestrators/{name}/{instanceId?}", "orchestrators/hello", {"name": "hello"}),
        ("orchestrators/{name}/{id?}", "orchestrators/hello/x1", {"name": "hello", "id": "x1"}),
        ("items/{n:int}", "items/42", {"n": "42"}),
        ("items/{n:int}", "items/forty", None),
        ("items/{n:range(1,9)}", "items/10", None),
        ("items/{word:alpha}", "items/abc", {"word": "abc"}),
        ("items/{code:regex(^[a-z]{{2}}$)}", "items/ab", {"code": "ab"}),
        ("items/{id:guid}", f"items/{GUID}", {"id": GUID}),
        ("files/{*rest}", "files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("files/{*rest}", "files", {}),
        ("files/{name}.{ext}", "files/report.pdf", {"name": "report", "ext": "pdf"}),
        ("pages/{page=1}", "pages", {"page": "1"}),
        ("", "", {}),
    ],
)  # fmt: skip
def test_templates_match_as_aspnet_does(
    template: str, path: str, expected: dict[str, str] | None
) -> None:
    segments = [s for s in path.split("/") if s]
    assert RouteTemplate.parse(template).match(segments) == expected


@pytest.mark.parametrize("template", ["a/{*rest}/b", "a/{b?}/c", "a/{b:nonsense}", "a/{b"])
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(ValueError, match="route"):
        RouteTemplate.parse(template)


def test_the_most_specific_route_wins_and_methods_filter() -> None:
    table: RouteTable[str] = RouteTable("api")
    table.add("users/{id}", ["GET"], "user")
    table.add("users/recent", ["GET"], "recent")
    table.add("users/{*rest}", None, "rest")
    table.add("users/{id:int}", ["GET"], "numbered")
    table.add("users/{id}", ["DELETE"], "delete")

    def target(method: str, path: str) -> str | None:
        found = table.match(method, path)
        return found.target if found else None

    assert target("GET", "/api/users/recent") == "recent"
    assert target("GET", "/api/users/7") == "numbered"
    assert target("GET", "/api/users/ann") == "user"
    assert target("DELETE", "/api/users/ann") == "delete"
    assert target("POST", "/api/users/ann/x") == "rest"
    assert target("GET", "/users/ann") is None  # outside the prefix
    found = table.match("GET", "/api/users/a%20b")
    assert found is not None
    assert found.route_params == {"id": "a b"}
    assert RouteTable("").match("GET", "/users/7") is None


def test_function_keys_follow_auth_levels() -> None:
    keys = FunctionKeys.from_environment(
        {"DURABLE_FX_FUNCTION_KEYS": "k1, k2", "DURABLE_FX_MASTER_KEY": "master"}
    )
    assert keys.allows("anonymous", None)
    assert keys.allows("FUNCTION", "k2")
    assert keys.allows("FUNCTION", "master")
    assert not keys.allows("FUNCTION", None)
    assert not keys.allows("FUNCTION", "k3")
    assert not keys.allows("ADMIN", "k1")
    assert keys.allows("ADMIN", "master")
    made_up = FunctionKeys.from_environment({})
    assert made_up.generated
    assert made_up.allows("FUNCTION", made_up.function_keys[0])


def test_host_json_gives_the_prefix_and_queue_rules() -> None:
    config = HostConfig.from_json(
        {
            "version": "2.0",
            "extensions": {
                "http": {"routePrefix": ""},
                "queues": {
                    "batchSize": 4,
                    "maxDequeueCount": 2,
                    "visibilityTimeout": "00:00:30",
                    "maxPollingInterval": "00:00:00.250",
                    "messageEncoding": "none",
                },
            },
        }
    )
    assert config.route_prefix == ""
    assert config.queues.batch_size == 4
    assert config.queues.max_dequeue_count == 2
    assert config.queues.visibility_timeout == timedelta(seconds=30)
    assert config.queues.max_polling_interval == timedelta(milliseconds=250)
    assert config.queues.message_encoding == "none"
    defaults = HostConfig.from_json({"version": "2.0"})
    assert (defaults.route_prefix, defaults.queues.max_dequeue_count) == ("api", 5)
    assert defaults.queues.max_polling_interval == timedelta(minutes=1)
    for bad in [{"batchSize": 64}, {"visibilityTimeout": "soon"}, {"messageEncoding": "hex"}]:
        with pytest.raises(ValueError, match=r"host\.json"):
            HostConfig.from_json({"extensions": {"queues": bad}})


# -- webhook signatures ---------------------------------------------------------------------


def _request(headers: dict[str, str], body: bytes) -> object:
    return http_request("POST", "http://localhost/api/hook", headers, {}, {}, body)


def test_hmac_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    now = 1_700_000_000.0
    verify = hmac_sha256("HOOK_SECRET", now=lambda: now)
    body = b'{"a": 1}'
    digest = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    good = {"x-timestamp": "1700000000", "x-signature": f"sha256={digest}"}
    assert verify(_request(good, body), body) is None  # type: ignore[arg-type]
    rotated = {**good, "x-signature": f"sha256={'0' * 64}, sha256={digest}"}
    assert verify(_request(rotated, body), body) is None  # type: ignore[arg-type]
    for headers, reason in [
        ({**good, "x-signature": "sha256=" + "0" * 64}, "invalid signature"),
        ({"x-timestamp": "1700000000"}, "missing signature"),
        ({**good, "x-timestamp": "soon"}, "timestamp"),
        ({**good, "x-timestamp": "1699990000"}, "window"),
    ]:
        with pytest.raises(WebhookRejected, match=reason):
            verify(_request(headers, body), body)  # type: ignore[arg-type]
    with pytest.raises(WebhookRejected):
        verify(_request(good, body + b" "), body + b" ")  # type: ignore[arg-type]


def test_github_signatures_sign_the_body_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_SECRET", "gh")
    body = b'{"action": "opened"}'
    digest = hmac.new(b"gh", body, hashlib.sha256).hexdigest()
    verify = github_signature("GH_SECRET")
    headers = {"x-hub-signature-256": f"sha256={digest}"}
    assert verify(_request(headers, body), body) is None  # type: ignore[arg-type]
    assert verify.authenticates


def test_base64_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("B64_SECRET", "k")
    body = b"{}"
    stamp = str(int(time.time()))
    raw = hmac.new(b"k", stamp.encode() + b"." + body, hashlib.sha256).digest()
    verify = hmac_sha256(
        "B64_SECRET", signature_header="webhook-signature", prefix="v1,", encoding="base64",
        timestamp_header="webhook-timestamp",
    )  # fmt: skip
    headers = {
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(raw).decode(),
    }
    assert verify(_request(headers, body), body) is None  # type: ignore[arg-type]
