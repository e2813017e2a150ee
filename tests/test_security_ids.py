"""Issue 11: bad input is a 4xx naming the problem, on SQLite and on Azure (Azurite).

The review's findings 13, 16 and 18 against ``durable-fx serve``'s management
API: forged continuation tokens (D33, D34), data that cannot be stored (D45),
paths that are not UTF-8 (D13, D17), ids that display as something else (D14)
or that are path steps (D10, D11), and ``instanceIdPrefix`` at the top of
Unicode. Requests go through ``http.client`` so the exact bytes reach the
server (no client-side normalisation of ``%2E%2E`` or of invalid escapes).
"""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any

import pytest

from tests.support.serve import KEY, Server, new_id, start_order
from tests.support.serve import server as server  # the module's sqlite + azure servers

pytestmark = pytest.mark.slow


def raw(
    server: Server, method: str, target: str, body: bytes | None = None, key: str | None = KEY
) -> tuple[int, Any]:
    """Send ``target`` byte for byte; the status and the JSON body (``None`` if empty)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers={"x-functions-key": key} if key else {})
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    return response.status, json.loads(text) if text else None


def field_of(answer: Any) -> str:
    field: str = answer["fields"][0]["field"]
    return field


def token(value: str) -> str:
    """A continuation token holding ``value`` (JSON text), as a client could forge one."""
    return base64.urlsafe_b64encode(value.encode()).decode()


# -- finding 13: continuation tokens ------------------------------------------------------------


@pytest.mark.parametrize(
    "forged",
    [
        '[1000000000000000000000000000000, "x"]',  # D33: past SQLite's 64 bits
        '[true, "x"]',  # D34: a boolean is not a position
        '[1, "\\ud800"]',  # an id that is not text
        '["x", "y"]',
        '{"a": 1}',
        "not json",
    ],
    ids=["huge", "boolean", "surrogate", "strings", "object", "text"],
)
def test_a_forged_continuation_token_is_400(server: Server, forged: str) -> None:
    status, answer = raw(server, "GET", f"/api/instances?continuationToken={token(forged)}")
    assert status == 400, answer
    assert field_of(answer) == "continuationToken"


def test_issued_continuation_tokens_still_page_through(server: Server) -> None:
    prefix = new_id()
    with server.client() as client:
        for n in range(3):
            started = client.post(
                f"orchestrators/fulfil/{prefix}-{n}", json={"order_id": "o", "quantity": 1}
            )
            assert started.status_code == 202
        seen: list[str] = []
        params = {"instanceIdPrefix": prefix, "top": "1"}
        while True:
            page = client.get("instances", params=params)
            assert page.status_code == 200, page.text
            seen += [i["instanceId"] for i in page.json()]
            following = page.headers.get("x-ms-continuation-token")
            if not following:
                break
            params["continuationToken"] = following
    assert sorted(seen) == [f"{prefix}-{n}" for n in range(3)]


# -- finding 13: data that parses but cannot be stored -------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"order_id": "x", "carrier": "\\ud800"}', "body.carrier"),  # D45
        (b'{"order_id": "x", "carrier": NaN}', "body"),
        (b'{"order_id": "x", "carrier": 1e999}', "body"),  # read as inf, written as Infinity
        (b'{"order_id": "x", "\\udc00": 1}', "body.\\udc00"),
        # Not escaped: UTF-8 bytes of U+D800, and a UTF-16 body (json.loads reads both).
        (b'{"order_id": "x", "carrier": "\xed\xa0\x80"}', "body.carrier"),
        ('{"carrier": "\ud800"}'.encode("utf-16-le", "surrogatepass"), "body.carrier"),
    ],
    ids=["lone-surrogate", "nan", "overflow", "surrogate-key", "raw-bytes", "utf-16"],
)
def test_event_data_that_cannot_be_stored_is_400_naming_the_field(
    server: Server, body: bytes, field: str
) -> None:
    order_id = new_id()
    with server.client() as client:
        start_order(client, order_id)
    status, answer = raw(server, "POST", f"/api/instances/{order_id}/raiseEvent/Shipped", body)
    assert status == 400, answer
    assert field_of(answer) == field


# -- finding 16: instance ids ----------------------------------------------------------------------


def test_invalid_utf8_in_a_path_is_400_not_a_replacement_character(server: Server) -> None:
    """D13/D17: %ED%A0%80 used to become U+FFFD x3, the same id as other invalid bytes."""
    status, answer = raw(server, "GET", "/api/instances/%ED%A0%80")
    assert (status, field_of(answer)) == (400, "path")
    order = json.dumps({"order_id": "o", "quantity": 1}).encode()
    status, answer = raw(server, "POST", "/api/orchestrators/fulfil/x%ED%B0%80", order)
    assert (status, field_of(answer)) == (400, "path")
    status, _ = raw(server, "GET", "/api/instances/x%EF%BF%BD%EF%BF%BD%EF%BF%BD")
    assert status == 404  # nothing was started under a replaced id
    status, answer = raw(server, "GET", "/api/instances?instanceIdPrefix=%ED%A0%80")
    assert (status, field_of(answer)) == (400, "query")


@pytest.mark.parametrize(
    ("escaped", "shown"),
    [
        ("abc%E2%80%AEfdp.exe", "U+202E"),  # D14: right-to-left override
        ("a%E2%81%A6b", "U+2066"),  # left-to-right isolate
        ("a%E2%80%8Fb", "U+200F"),  # right-to-left mark
        ("a%D8%9Cb", "U+061C"),  # Arabic letter mark
        ("a%E2%80%8Bb", "U+200B"),  # zero-width space: two ids that look the same
        ("%EF%BB%BFa", "U+FEFF"),
        ("%2E%2E", "path step"),  # D11: a blob name ".." is the container
        ("%2E", "path step"),
    ],
)
def test_deceptive_instance_ids_are_400(server: Server, escaped: str, shown: str) -> None:
    order = json.dumps({"order_id": "o", "quantity": 1}).encode()
    status, answer = raw(server, "POST", f"/api/orchestrators/fulfil/{escaped}", order)
    assert status == 400, answer
    assert field_of(answer) == "instanceId"
    assert shown in answer["error"]
    status, answer = raw(server, "GET", f"/api/instances/{escaped}")
    assert status == 400, answer


def test_joiners_stay_allowed_in_instance_ids(server: Server) -> None:
    """U+200D joins emoji and some scripts: not refused with the invisible characters."""
    order = json.dumps({"order_id": "o", "quantity": 1}).encode()
    instance_id = f"{new_id()}%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB"
    status, answer = raw(server, "POST", f"/api/orchestrators/fulfil/{instance_id}", order)
    assert status == 202, answer


# -- finding 18: instanceIdPrefix at the top of Unicode --------------------------------------------


@pytest.mark.parametrize(
    "last",
    ["%F4%8F%BF%BF", "%ED%9F%BF", "%EF%BF%BF", "%F0%9F%98%80"],
    ids=["10FFFF", "D7FF", "FFFF", "1F600"],
)
def test_an_instance_id_prefix_ending_high_in_unicode_finds_its_instances(
    server: Server, last: str
) -> None:
    prefix = f"{new_id()}{last}"
    order = json.dumps({"order_id": "o", "quantity": 1}).encode()
    status, answer = raw(server, "POST", f"/api/orchestrators/fulfil/{prefix}x", order)
    assert status == 202, answer
    status, found = raw(server, "GET", f"/api/instances?instanceIdPrefix={prefix}")
    assert status == 200, found
    assert [i["instanceId"] for i in found] == [answer["id"]]
