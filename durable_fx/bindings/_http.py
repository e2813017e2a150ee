r"""HTTP plumbing for the management API and webhooks: JSON bodies, problems, base URLs.

Every error a caller can fix is a 4xx with a JSON body
``{"error": "<what happened and what to do>", "fields": [...]}``, where
``fields`` names each offending field (``{"field": "input.to", "message": ...}``).

JSON bodies must also be storable: a lone surrogate (``"\ud800"``) parses
in Python but cannot be written as UTF-8, and ``NaN``, ``Infinity`` or
``1e999`` are not JSON numbers once written back; all are refused here
(naming the field) rather than failing or changing meaning later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import azure.functions as func
from pydantic import ValidationError

__all__ = [
    "FieldProblem",
    "HttpProblem",
    "base_url",
    "instance_url",
    "json_response",
    "parse_json",
    "parse_json_body",
    "problem_response",
    "read_body",
    "validation_problems",
]


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One field that made a request invalid."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(slots=True)
class HttpProblem(Exception):
    """A request the caller must change: becomes a 4xx JSON response."""

    status: int
    message: str
    fields: list[FieldProblem] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> func.HttpResponse:
    """A JSON response (``body`` must be JSON-ready)."""
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":"), default=str),
        status_code=status,
        headers=dict(headers or {}),
        mimetype="application/json",
    )


def problem_response(problem: HttpProblem) -> func.HttpResponse:
    """The JSON response for a problem."""
    body: dict[str, Any] = {"error": problem.message}
    if problem.fields:
        body["fields"] = [f.as_json() for f in problem.fields]
    return json_response(body, problem.status)


def read_body(req: func.HttpRequest, limit: int) -> bytes:
    """The request body, or a 413 problem when it is over ``limit`` bytes."""
    body = req.get_body() or b""
    if len(body) > limit:
        raise HttpProblem(
            413,
            f"the request body is {len(body)} bytes; at most {limit} are accepted "
            "(DURABLE_FX_MAX_REQUEST_BYTES)",
        )
    return body


def parse_json_body(req: func.HttpRequest, limit: int) -> Any:
    """The JSON value of the body (``None`` for an empty body); 400/413 problems otherwise."""
    body = read_body(req, limit)
    if not body.strip():
        return None
    return parse_json(body, "body")


def parse_json(body: bytes, where: str) -> Any:
    """Parse JSON bytes, or raise a 400 problem naming ``where`` (or the field inside it)."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, UnicodeDecodeError) as error:
        raise HttpProblem(
            400,
            f"the request {where} is not valid JSON: {error}",
            [FieldProblem(where, "not valid JSON")],
        ) from None
    field_name = _lone_surrogate(value, where) if _may_hold_surrogates(body) else None
    if field_name is not None:
        message = "contains a lone surrogate (an escape such as \\ud800), which is not text"
        raise HttpProblem(400, f"{field_name} {message}", [FieldProblem(field_name, message)])
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON, but Python reads it as inf
        raise ValueError(f"{text[:40]} is too large for a number")
    return value


def _may_hold_surrogates(body: bytes) -> bool:
    r"""Whether ``json.loads(body)`` can have made a surrogate: else the walk is skipped.

    From UTF-8, ``json.loads`` makes them only out of ``\u`` escapes or (it decodes
    with ``surrogatepass``) raw ED A0-BF bytes; UTF-16 and UTF-32 bodies are walked.
    """
    if not json.detect_encoding(body).startswith("utf-8"):
        return True
    return b"\\u" in body or b"\xed" in body


def _lone_surrogate(value: Any, root: str) -> str | None:
    """The path (``body.items.0.name``) of the first string or key that is not UTF-8 text."""
    # Iterative: json.loads accepts nesting deeper than a recursive walk could follow.
    pending: list[tuple[Any, str]] = [(value, root)]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _is_text(key):
                    return f"{path}.{key.encode('utf-8', 'backslashreplace').decode()}"
                pending.append((child, f"{path}.{key}"))
        elif isinstance(item, list):
            pending.extend((child, f"{path}.{index}") for index, child in enumerate(item))
    return None


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validation_problems(error: ValidationError, root: str) -> list[FieldProblem]:
    """Each pydantic error as a field named from ``root`` (``input.to.address``)."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in (root, *item["loc"]))
        problems.append(FieldProblem(path, item["msg"]))
    return problems


def base_url(origin: str, route_prefix: str) -> str:
    """``scheme://host[/prefix]``: where the app's routes live, from its configured origin.

    ``origin`` comes from configuration (``FunctionsSettings.public_origin``),
    never from the request: its ``Host`` header is whatever the caller wrote.
    """
    prefix = f"/{route_prefix.strip('/')}" if route_prefix.strip("/") else ""
    return f"{origin.rstrip('/')}{prefix}"


def instance_url(
    base: str, instance_id: str, suffix: str = "", query: Mapping[str, str] | None = None
) -> str:
    """The management URL of an instance (``suffix``: ``/terminate``...), with a query."""
    url = f"{base}/instances/{quote(instance_id, safe='')}{suffix}"
    if query:
        # Placeholders such as {text} stay readable, as Durable Functions writes them.
        url += "?" + urlencode(dict(query), safe="{}")
    return url
