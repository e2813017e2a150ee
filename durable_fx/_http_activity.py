"""The built-in activity behind ``ctx.call_http``: send one request with httpx.

It runs where activities run, so it is the only place that does I/O: it
fetches a managed-identity token when asked (never saved anywhere), sends the
request, and reads at most ``max_response_bytes`` of the body. Every failure
is an exception with a name that says what went wrong (its ``error_type`` at
the yield); none takes the worker down.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ._http import HTTP_ACTIVITY, DurableHttpResponse, HttpRequestSpec, ManagedIdentity

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = [
    "HttpResponseTooLargeError",
    "HttpSecretUnavailableError",
    "HttpServerError",
    "HttpTokenError",
    "HttpTransportError",
    "register_builtins",
    "send_request",
]


class HttpTransportError(Exception):
    """The request did not get a response: connection refused, reset, timed out..."""


class HttpServerError(Exception):
    """The server answered 5xx (raised only under a RetryPolicy, so that it retries)."""


class HttpResponseTooLargeError(Exception):
    """The response body is over the call's ``max_response_bytes``."""


class HttpTokenError(Exception):
    """azure-identity could not get a token for the call's ``token_source``."""


class HttpSecretUnavailableError(Exception):
    """The request came from history, which holds no Authorization value (a rewind)."""


async def send_request(spec: HttpRequestSpec) -> DurableHttpResponse:
    """Send ``spec`` and return the response (the activity ``durable_fx.http``)."""
    if spec.redacted:
        raise HttpSecretUnavailableError(
            f"{spec.method} {spec.url[:200]}: the request was rebuilt from history, which "
            f"does not keep {', '.join(spec.redacted)}; call it again from the orchestration "
            "(rewinding a durable HTTP call that carried credentials is not supported)"
        )
    headers = dict(spec.headers)
    if spec.token_source is not None:
        token = await _token(spec.token_source)
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {token}"
    try:
        import httpx
    except ImportError as error:  # an optional extra: say which
        raise ImportError(
            f"ctx.call_http needs httpx: pip install 'durable-fx[http]' ({error})"
        ) from error
    try:
        response = await _send(httpx, spec, headers)
    except httpx.HTTPError as error:
        # Only the error's type and the URL: the request (and its headers) stays out.
        raise HttpTransportError(
            f"{spec.method} {spec.url[:200]}: {type(error).__name__}: {error}"
        ) from None
    if spec.fail_on_server_error and response.status_code >= 500:
        raise HttpServerError(
            f"{spec.method} {spec.url[:200]} answered {response.status_code}: "
            f"{response.content[:200]!r}"
        )
    return response


async def _send(httpx: Any, spec: HttpRequestSpec, headers: dict[str, str]) -> DurableHttpResponse:
    """The request over a fresh client, reading the body up to the limit."""
    content = None if spec.content is None else spec.content.encode()
    async with (
        httpx.AsyncClient(timeout=spec.timeout, follow_redirects=False) as client,
        client.stream(spec.method, spec.url, headers=headers, content=content) as response,
    ):
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > spec.max_response_bytes:
                raise HttpResponseTooLargeError(
                    f"{spec.method} {spec.url[:200]}: the response body is over the "
                    f"{spec.max_response_bytes}-byte limit (call_http(max_response_bytes=...)); "
                    "responses are saved in history, so fetch large content in an activity "
                    "of your own and store it elsewhere"
                )
        # The raw bytes, decoded as the response says (raw: so the limit counts what
        # came over the wire, and a small gzip body cannot expand past it unseen).
        decoded = httpx.Response(
            response.status_code, headers=response.headers, content=bytes(body)
        )
        if len(decoded.content) > spec.max_response_bytes:
            raise HttpResponseTooLargeError(
                f"{spec.method} {spec.url[:200]}: the decompressed response body is over the "
                f"{spec.max_response_bytes}-byte limit (call_http(max_response_bytes=...))"
            )
        return DurableHttpResponse(
            status_code=response.status_code,
            headers={k: ", ".join(decoded.headers.get_list(k)) for k in decoded.headers},
            content=decoded.text,
        )


async def _token(source: ManagedIdentity) -> str:
    """A token for ``source``'s resource, from azure-identity (sync client, in a thread)."""
    try:
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
    except ImportError as error:
        raise ImportError(
            f"ManagedIdentity tokens need azure-identity: pip install 'durable-fx[azure]' ({error})"
        ) from error

    def fetch() -> str:
        credential: Any = (
            DefaultAzureCredential(managed_identity_client_id=source.client_id)
            if source.default_credential
            else ManagedIdentityCredential(client_id=source.client_id)
        )
        with credential:
            return str(credential.get_token(source.scope).token)

    try:
        return await asyncio.to_thread(fetch)
    except Exception as error:
        raise HttpTokenError(
            f"no token for {source.resource!r}: {type(error).__name__}: {str(error)[:500]}"
        ) from None


def register_builtins(registry: Registry) -> None:
    """Register the activity ``durable_fx.http`` that ``ctx.call_http`` schedules."""
    registry.activity(name=HTTP_ACTIVITY)(send_request)
