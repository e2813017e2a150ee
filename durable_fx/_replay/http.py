"""``ctx.call_http``: one request, then polling a ``202 Accepted`` with durable timers.

The whole call is orchestration code, replayed like the rest: each request
(the original, each poll) is a task of the built-in activity
``durable_fx.http``, and each wait between polls is a durable timer, so a
worker that stops mid-poll resumes at the next poll and never sends the
original request again. ``timeout`` is one more timer racing them all.

Secrets: the values of ``Authorization`` and ``Proxy-Authorization`` go to
the activity's work item only; the ``TaskScheduled`` that history records
holds the request without them (``ScheduleTask.recorded_input``). Orchestrator
code passes them again on every replay, so a poll or retry scheduled in a
later episode carries them too.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from .._errors import TaskError, TaskFailedError
from .._history import HistoryEvent
from .._http import (
    HTTP_ACTIVITY,
    PERMANENT_ERRORS,
    DurableHttpResponse,
    HttpCallOptions,
    HttpRequestSpec,
    poll_location,
    retry_after,
    same_origin,
)
from .._retry import RetryPolicy
from .._serialization import PayloadCodec, encode
from .actions import ScheduleTask
from .context import ResultHandler, _Attempts, _Started
from .tasks import CompletableTask, Task

if TYPE_CHECKING:
    from .context import OrchestrationContext

__all__ = ["start_http_call"]

_RESPONSE: PayloadCodec[DurableHttpResponse] = PayloadCodec(DurableHttpResponse)
_TASK_NAME = "call_http"
_GRACE = timedelta(seconds=5)


def start_http_call(
    ctx: OrchestrationContext, options: HttpCallOptions
) -> Task[DurableHttpResponse]:
    """Schedule the request; the task completes with the final response."""
    task: CompletableTask[DurableHttpResponse] = CompletableTask()
    _HttpCall(ctx, task, options).begin()
    return task


class _HttpCall:
    """Drives one call: request, then (on 202) timer and poll until another status comes."""

    def __init__(
        self,
        ctx: OrchestrationContext,
        task: CompletableTask[DurableHttpResponse],
        options: HttpCallOptions,
    ) -> None:
        self._ctx = ctx
        self._task = task
        self._options = options
        self._retry = _without_permanent(options.retry)
        self._url = options.url
        self._next_poll = options.url
        self._deadline_at: datetime | None = None
        self._deadline: int | None = None
        self._poll_timer: int | None = None
        self._current: _Attempts | None = None
        self._timed_out = False

    def begin(self) -> None:
        timeout = self._options.timeout
        if timeout is not None:
            self._deadline_at = self._ctx.current_utc_datetime + timeout
            self._deadline = self._ctx._create_timer(
                self._deadline_at, "http-timeout", self._on_deadline
            )
        self._send(self._options.method, self._options.url, self._options.content)

    # -- one request ------------------------------------------------------------------

    def _send(self, method: str, url: str, content: str | None) -> None:
        self._url = url
        sent, recorded = self._payloads(method, url, content)
        inner: CompletableTask[DurableHttpResponse] = CompletableTask()

        def start(attempt: int, on_result: ResultHandler, carried: str | None) -> _Started:
            task_id = self._ctx._next_id()
            action = ScheduleTask(
                task_id, HTTP_ACTIVITY, sent, attempt, None, carried, recorded_input=recorded
            )
            self._ctx._record(action, on_result)
            return _Started(task_id)

        self._current = _Attempts(self._ctx, inner, _TASK_NAME, _RESPONSE, start, self._retry)
        self._current.begin()
        inner._add_listener(self._on_response)

    def _payloads(self, method: str, url: str, content: str | None) -> tuple[str, str | None]:
        """The activity's input, and the copy history records (``None``: the same)."""
        options = self._options
        trusted = same_origin(url, options.url)  # credentials go to the first origin only
        secrets = options.secrets if trusted else {}
        spec = HttpRequestSpec(
            method=method,
            url=url,
            headers=options.headers | secrets,
            content=content,
            token_source=options.token_source if trusted else None,
            timeout=self._request_timeout().total_seconds(),
            max_response_bytes=options.max_response_bytes,
            fail_on_server_error=options.retry is not None,
        )
        sent = encode(spec)
        assert sent is not None
        if not secrets:
            return sent, None
        hidden = spec.model_copy(update={"headers": options.headers, "redacted": sorted(secrets)})
        return sent, encode(hidden)

    def _request_timeout(self) -> timedelta:
        """One request's bound: the default, or less if the call's deadline is nearer.

        A little past the deadline, so that the deadline's timer decides and the
        call fails with ``HttpTimeoutError`` rather than a transport timeout.
        """
        bound = self._options.request_timeout
        if self._deadline_at is not None:
            left = self._deadline_at - self._ctx.current_utc_datetime + _GRACE
            bound = max(min(bound, left), _GRACE)
        return bound

    # -- what came back ---------------------------------------------------------------

    def _on_response(self, finished: Task[DurableHttpResponse]) -> None:
        if self._task.is_complete:
            return
        if finished.is_failed:
            error = finished.error
            assert error is not None
            if self._timed_out:
                self._fail("HttpTimeoutError", self._timeout_message())
            else:
                self._end(error=error)
            return
        response = finished.get_result()
        if response.status_code != 202 or not self._options.poll:
            self._end(response=response)
            return
        try:
            location = poll_location(response, self._url)
            wait = retry_after(response, self._ctx.current_utc_datetime)
        except ValueError as error:
            self._fail("HttpPollingError", str(error))
            return
        self._next_poll = location
        fire_at = self._ctx.current_utc_datetime + (
            wait if wait is not None else self._options.poll_interval
        )
        self._poll_timer = self._ctx._create_timer(fire_at, "http-poll", self._on_poll_timer)

    def _on_poll_timer(self, _event: HistoryEvent) -> None:
        self._poll_timer = None
        self._send("GET", self._next_poll, None)

    def _on_deadline(self, _event: HistoryEvent) -> None:
        self._deadline = None
        if self._task.is_complete:
            return
        self._timed_out = True
        if self._poll_timer is not None:  # waiting to poll: nothing is in flight
            self._ctx._cancel_timer(self._poll_timer)
            self._poll_timer = None
            self._fail("HttpTimeoutError", self._timeout_message())
        elif self._current is not None:  # a request (or its retry wait) is open: drop it
            self._current.give_up(self._timeout_message())

    def _timeout_message(self) -> str:
        options = self._options
        return (
            f"{options.method} {options.url[:200]} did not finish within {options.timeout} "
            "(call_http(timeout=...), polling and retries included)"
        )

    # -- the end ----------------------------------------------------------------------

    def _fail(self, error_type: Literal["HttpTimeoutError", "HttpPollingError"], text: str) -> None:
        self._end(error=TaskFailedError(_TASK_NAME, error_type, text))

    def _end(
        self, *, response: DurableHttpResponse | None = None, error: TaskError | None = None
    ) -> None:
        for timer in (self._deadline, self._poll_timer):
            if timer is not None:
                self._ctx._cancel_timer(timer)
        self._deadline = self._poll_timer = None
        if error is not None:
            self._task.fail(error)
        elif response is not None:
            self._task.complete(response)


def _without_permanent(policy: RetryPolicy | None) -> RetryPolicy | None:
    """``policy``, except that it never retries a failure no retry can fix (body too large)."""
    if policy is None:
        return None
    handle = policy.handle

    def worth_retrying(error: TaskFailedError) -> bool:
        if error.error_type in PERMANENT_ERRORS:
            return False
        return handle is None or handle(error)

    return dataclasses.replace(policy, handle=worth_retrying)
