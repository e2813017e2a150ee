"""A durable client for user functions, like Durable Functions' ``durable_client_input``.

The host has no binding for durable_fx's client, so none is declared: the
decorator hides the client parameter from the signature the worker indexes
(``__signature__``) and passes the app's client in at each call. An
``async def`` gets an ``AsyncDurableClient``, a plain function a
``DurableClient``; an annotation, if any, must agree. The invocation's
``context`` is asked for too, for the host's trace context (``_host_trace``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import azure.functions as func

from ..client._async import AsyncDurableClient
from ..client._sync import DurableClient
from ._host_trace import host_trace
from ._runtime import AppRuntime

__all__ = ["with_durable_client"]

R = TypeVar("R")


def with_durable_client(
    fn: Callable[..., R], client_name: str, runtime: AppRuntime
) -> Callable[..., R]:
    """``fn`` without its ``client_name`` parameter, which each call fills with the app's client."""
    if not callable(fn) or not hasattr(fn, "__code__"):
        raise TypeError(
            "durable_client_input() must decorate the function itself: put it directly above "
            "`def`, below @app.route() or any other trigger decorator"
        )
    signature = inspect.signature(fn)
    if client_name not in signature.parameters:
        raise TypeError(
            f"{fn.__qualname__} has no parameter {client_name!r} for the durable client; "
            f"add one or pass client_name=..."
        )
    is_async = inspect.iscoroutinefunction(fn)
    _check_annotation(fn, client_name, is_async)
    remaining = [p for p in signature.parameters.values() if p.name != client_name]
    annotations = {k: v for k, v in fn.__annotations__.items() if k != client_name}
    # The invocation's context carries the host's trace, the parent of the starts the call
    # makes: asked for even when fn does not take it, and then not passed on.
    wants_context = _CONTEXT in signature.parameters
    if not wants_context:
        keyword = inspect.Parameter.KEYWORD_ONLY
        has_kwargs = bool(remaining) and remaining[-1].kind is inspect.Parameter.VAR_KEYWORD
        at = len(remaining) - has_kwargs  # a keyword-only parameter goes before **kwargs
        remaining.insert(at, inspect.Parameter(_CONTEXT, keyword, annotation=func.Context))
        annotations[_CONTEXT] = func.Context

    def invocation_context(kwargs: dict[str, Any]) -> Any:
        return kwargs.get(_CONTEXT) if wants_context else kwargs.pop(_CONTEXT, None)

    if is_async:

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            kwargs[client_name] = runtime.client
            with host_trace(invocation_context(kwargs)):
                return await fn(*args, **kwargs)  # type: ignore[misc]

        wrapper: Callable[..., Any] = call_async
    else:

        @functools.wraps(fn)
        def call_sync(*args: Any, **kwargs: Any) -> Any:
            kwargs[client_name] = runtime.sync_client()
            with host_trace(invocation_context(kwargs)):
                return fn(*args, **kwargs)

        wrapper = call_sync
    # The worker matches parameters to bindings by the signature it sees: hide the client.
    wrapper.__signature__ = signature.replace(parameters=remaining)  # type: ignore[attr-defined]
    wrapper.__annotations__ = annotations
    return wrapper


_CONTEXT = "context"


def _check_annotation(fn: Callable[..., Any], client_name: str, is_async: bool) -> None:
    try:
        annotation = inspect.signature(fn, eval_str=True).parameters[client_name].annotation
    except NameError:
        return  # annotated with a name only importable for type checkers: nothing to check
    expected = AsyncDurableClient if is_async else DurableClient
    if annotation in (inspect.Parameter.empty, Any, expected):
        return
    kind = "an async" if is_async else "a synchronous"
    raise TypeError(
        f"{fn.__qualname__} is {kind} function, so its {client_name!r} parameter receives "
        f"a {expected.__name__}; annotate it {expected.__name__} (or leave it unannotated)"
    )
