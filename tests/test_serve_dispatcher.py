"""The standalone host's queue dispatcher follows the Functions host's queue rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import azure.functions as func

from durable_fx.bindings import QueueOptions
from durable_fx.hosting import Dispatcher, Invoker, index_app
from durable_fx.queues import MemoryQueues, decode_body, encode_body

OPTIONS = QueueOptions(
    batch_size=4,
    max_polling_interval=timedelta(milliseconds=50),
    visibility_timeout=timedelta(0),
    max_dequeue_count=2,
)


def run_dispatcher(
    app: func.FunctionApp,
    queues: MemoryQueues,
    until: Callable[[], Awaitable[bool]],
    options: QueueOptions = OPTIONS,
) -> None:
    """Dispatch ``app``'s queue functions until ``until()`` is true (or 10 s pass)."""

    async def scenario() -> None:
        functions, problems = index_app(app)
        assert problems == []
        with ThreadPoolExecutor(4) as threads:
            dispatcher = Dispatcher(functions, queues, options, Invoker(threads, queues, "base64"))
            dispatcher.start()
            deadline = time.monotonic() + 10
            while not await until():
                assert time.monotonic() < deadline, "the dispatcher did not get there"
                await asyncio.sleep(0.02)
            await dispatcher.stop(grace=2)

    asyncio.run(scenario())


async def texts(queues: MemoryQueues, queue: str) -> list[str]:
    return [m.text for m in await queues.receive(queue, limit=32, visibility=timedelta(0))]


def test_messages_reach_functions_as_the_worker_builds_them() -> None:
    app = func.FunctionApp()
    seen: list[Any] = []

    @app.queue_trigger(arg_name="msg", queue_name="orders", connection="AzureWebJobsStorage")
    def take(msg: func.QueueMessage) -> None:
        seen.append(msg)

    @app.queue_trigger(arg_name="text", queue_name="notes", connection="AzureWebJobsStorage")
    async def note(text: str, context: func.Context) -> None:
        seen.append((text, context.function_name))

    queues = MemoryQueues()

    async def until() -> bool:
        return len(seen) == 2

    asyncio.run(queues.send("orders", encode_body(b'{"id": 1}')))
    asyncio.run(queues.send("notes", encode_body("hello")))
    run_dispatcher(app, queues, until)
    message = next(m for m in seen if isinstance(m, func.QueueMessage))
    assert message.get_json() == {"id": 1}
    assert message.dequeue_count == 1
    assert message.id and message.pop_receipt
    assert message.insertion_time is not None and message.insertion_time.tzinfo is not None
    assert ("hello", "note") in seen
    assert asyncio.run(texts(queues, "orders")) == []  # deleted after success


def test_a_failing_message_is_retried_then_poisoned() -> None:
    app = func.FunctionApp()
    attempts: list[int] = []

    @app.queue_trigger(arg_name="msg", queue_name="fragile", connection="AzureWebJobsStorage")
    def fragile(msg: func.QueueMessage) -> None:
        attempts.append(msg.dequeue_count or 0)
        raise ValueError("broken")

    queues = MemoryQueues()
    asyncio.run(queues.send("fragile", encode_body("payload")))

    async def until() -> bool:
        return bool(await queues.receive("fragile-poison", limit=1, visibility=timedelta(0)))

    run_dispatcher(app, queues, until)
    assert attempts == [1, 2]
    (poisoned,) = asyncio.run(queues.receive("fragile-poison", limit=1, visibility=timedelta(0)))
    assert decode_body(poisoned.text) == b"payload"  # the host copies the message as it was
    assert poisoned.reason == "ValueError: broken"


def test_a_message_that_is_not_base64_is_poisoned_without_an_invocation() -> None:
    app = func.FunctionApp()
    calls: list[str] = []

    @app.queue_trigger(arg_name="msg", queue_name="strict", connection="AzureWebJobsStorage")
    def strict(msg: func.QueueMessage) -> None:
        calls.append("called")

    queues = MemoryQueues()
    asyncio.run(queues.send("strict", "{not base64}"))

    async def until() -> bool:
        return bool(await queues.receive("strict-poison", limit=1, visibility=timedelta(0)))

    run_dispatcher(app, queues, until)
    assert calls == []


def test_queue_outputs_are_sent_after_success() -> None:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="inbox", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="outbox", connection="AzureWebJobsStorage")
    def relay(msg: func.QueueMessage, out: func.Out[str]) -> None:
        out.set(msg.get_body().decode().upper())

    queues = MemoryQueues()
    asyncio.run(queues.send("inbox", encode_body("shout")))
    relayed: list[str] = []

    async def until() -> bool:
        relayed.extend(await texts(queues, "outbox"))
        return bool(relayed)

    run_dispatcher(app, queues, until)
    assert [decode_body(t) for t in relayed] == [b"SHOUT"]


def test_unsupported_triggers_are_reported_not_served() -> None:
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="blob", path="uploads/{name}", connection="AzureWebJobsStorage")
    def uploaded(blob: func.InputStream) -> None:
        pass

    @app.timer_trigger(schedule="0 */5 * * * *", arg_name="timer")
    def tick(timer: func.TimerRequest) -> None:
        pass

    functions, problems = index_app(app)
    assert [f.name for f in functions] == ["tick"]  # timer triggers run as durable schedules
    assert problems == ["uploaded: durable-fx serve does not run blobTrigger functions"]
