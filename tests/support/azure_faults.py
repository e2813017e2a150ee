"""Failing Azure SDK requests on purpose: an HTTP pipeline policy and what it matches."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import AsyncHTTPPolicy
from azure.core.rest import HttpRequest

Match = Callable[[HttpRequest, bytes], bool]


_DELETES_WORK_ROW = re.compile(rb"DELETE [^\n]*RowKey='w")


class Fail(AsyncHTTPPolicy[Any, Any]):
    """Fails the first ``times`` requests that ``match`` (request, response body).

    ``after=True`` sends the request first and loses the response (the service
    applied it); otherwise the request never leaves. A response-based match
    only makes sense with ``after``.
    """

    def __init__(self, match: Match, *, after: bool, times: int = 1) -> None:
        self.match = match
        self.after = after
        self.left = times
        self.hits = 0

    async def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        http = request.http_request
        if not self.after and self.left > 0 and self.match(http, b""):
            self.left -= 1
            self.hits += 1
            raise ServiceRequestError("test: connection dropped before sending")
        response = await self.next.send(request)
        if self.after and self.left > 0:
            try:
                body = response.http_response.body()  # loaded already, unless streamed
            except Exception:
                body = b""
            if self.match(http, body):
                self.left -= 1
                self.hits += 1
                raise ServiceResponseError("test: response lost after the service applied it")
        return response


def _body(request: HttpRequest) -> bytes:
    body = request.body
    return body if isinstance(body, bytes) else b""


def result_transaction(request: HttpRequest, _: bytes) -> bool:
    """The entity-group transaction recording activity results (it deletes a work row)."""
    return request.url.endswith("$batch") and _DELETES_WORK_ROW.search(_body(request)) is not None
