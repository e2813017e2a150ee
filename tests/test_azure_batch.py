"""Entity-group transactions written as text (``_batch``): what the SDK would have sent.

Round trips on Azurite check the wire format against the service; a synthetic
answer with CRLF line ends (as Azure sends) checks the parser on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode

from durable_fx.storage.azure import AzureStore, open_azure_store
from durable_fx.storage.azure._batch import _results, encode_entity, submit_transaction
from tests.support.azurite import Azurite, new_hub

T = TypeVar("T")

PK = "it's ä:x"  # a quote, a space, non-ASCII and a colon: all escaped in entity URLs


@pytest.fixture
def store(azurite: Azurite) -> Iterator[AzureStore]:
    store = open_azure_store(azurite.connection_string(new_hub()))
    yield store
    asyncio.run(store.close())


def _on_store_loop(store: AzureStore, make: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        await store._hub.resources.ensure()
        return await make()

    return asyncio.run_coroutine_threadsafe(run(), store._portal.loop).result()


@pytest.mark.azurite
def test_operations_round_trip_with_the_sdk_reading_them_back(store: AzureStore) -> None:
    table = store._hub.resources.table
    row: dict[str, Any] = {
        "PartitionKey": PK,
        "RowKey": "w~1:0000000007",
        "Text": "é" * 3,
        "Small": 7,
        "Big": 2**40,
        "Flag": True,
        "Ratio": 2.0,
        "Gone": None,
    }

    async def scenario() -> tuple[list[dict[str, Any]], Any, Any]:
        first = await submit_transaction(
            table,
            [
                ("create", row),
                ("upsert", {"PartitionKey": PK, "RowKey": "m'2", "Text": "a"}),
            ],
        )
        merged = {"PartitionKey": PK, "RowKey": "w~1:0000000007", "Text": "b"}
        etag = first[0]["etag"]
        options = {
            "mode": UpdateMode.MERGE,
            "etag": etag,
            "match_condition": MatchConditions.IfNotModified,
        }
        second = await submit_transaction(
            table, [("update", merged, options), ("delete", {"PartitionKey": PK, "RowKey": "m'2"})]
        )
        entity = await table.get_entity(PK, "w~1:0000000007")
        gone = [e async for e in table.query_entities("RowKey eq 'm''2'")]
        return [*first, *second], entity, gone

    results, entity, gone = _on_store_loop(store, scenario)
    assert all(r["etag"] for r in results[:3]) and results[3]["etag"] is None
    assert results[2]["etag"] == entity.metadata["etag"]
    assert entity["Text"] == "b" and entity["Small"] == 7 and entity["Flag"] is True
    assert entity["Big"].value == 2**40 and entity["Ratio"] == 2.0
    assert "Gone" not in entity and gone == []


@pytest.mark.azurite
def test_a_failed_operation_raises_the_sdks_error_with_its_index_and_status(
    store: AzureStore,
) -> None:
    table = store._hub.resources.table
    row = {"PartitionKey": PK, "RowKey": "i", "Text": "x"}

    async def failures() -> list[tuple[int | None, int]]:
        await submit_transaction(table, [("create", row)])
        stale = {"mode": UpdateMode.REPLACE, "etag": 'W/"datetime\'2000-01-01T00%3A00%3A00Z\'"',
                 "match_condition": MatchConditions.IfNotModified}  # fmt: skip
        attempts: list[list[tuple[Any, ...]]] = [
            [("upsert", {**row, "RowKey": "a"}), ("create", row)],
            [("update", row, stale)],
            [("upsert", {**row, "RowKey": "b"}), ("delete", {**row, "RowKey": "nope"})],
        ]
        seen = []
        for ops in attempts:
            with pytest.raises(TableTransactionError) as error:
                await submit_transaction(table, ops)
            seen.append((error.value.status_code, error.value.index))
        return seen

    assert _on_store_loop(store, failures) == [(409, 1), (412, 0), (404, 1)]


def test_answers_with_crlf_line_ends_are_read() -> None:
    etag = "W/\"datetime'2024-01-01T00%3A00%3A00.1Z'\""
    part = (
        "--changesetresponse_x\r\nContent-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\nHTTP/1.1 204 No Content\r\n"
        "Content-ID: {n}\r\nX-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-cache\r\nDataServiceVersion: 1.0;\r\nETag: {etag}\r\n\r\n\r\n"
    )
    text = (
        "--batchresponse_y\r\nContent-Type: multipart/mixed; boundary=changesetresponse_x\r\n\r\n"
        + part.format(n=0, etag=etag)
        + "--changesetresponse_x\r\nContent-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n\r\n"
        "HTTP/1.1 204 No Content\r\nContent-ID: 1\r\n\r\n\r\n"
        + "--changesetresponse_x--\r\n--batchresponse_y--\r\n"
    )
    assert _results(text, 2) == [{"etag": etag}, {"etag": None}]
    failed = (
        "--changesetresponse_x\r\nContent-Type: application/http\r\n\r\n"
        "HTTP/1.1 412 Precondition Failed\r\nContent-ID: 3\r\n"
        "Content-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8\r\n\r\n"
        '{"odata.error":{"code":"UpdateConditionNotSatisfied","message":{"lang":"en-US",'
        '"value":"2:The update condition specified in the request was not satisfied."}}}\r\n'
        "--changesetresponse_x--\r\n"
    )
    with pytest.raises(TableTransactionError) as error:
        _results(failed, 3)
    assert (error.value.status_code, error.value.index) == (412, 2)


def test_entities_need_types_only_where_json_is_ambiguous() -> None:
    text = encode_entity({"A": "s", "B": 3, "C": 2**33, "D": 1.5, "E": False, "F": None})
    assert text == (
        '{"A":"s","B":3,"C":"8589934592","C@odata.type":"Edm.Int64",'
        '"D":1.5,"D@odata.type":"Edm.Double","E":false}'
    )
    with pytest.raises(TypeError, match="unsupported type bytes"):
        encode_entity({"X": b"raw"})
