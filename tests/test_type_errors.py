"""The type checker sees user types end to end: misuse is reported, right use is not.

Each case is a small program checked by mypy (``mypy.api``, strict) against this
checkout's durable_fx. One limit is by design: the value of ``x = yield task``
is the generator's send type, ``Any``, for every task, so mypy cannot check
``x: str = yield ctx.call_activity(returns_int, 1)``; it checks the task
(``Task[int]``), the input, and what ``client.run``/``handle().result()`` return.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

import durable_fx

pytestmark = pytest.mark.slow

PRELUDE = """\
from __future__ import annotations

from durable_fx import (
    ActivityContext, AsyncDurableClient, DurableClient, OrchestrationContext, Orchestrator,
    Registry, Task,
)

registry = Registry()


@registry.activity()
def returns_int(x: int) -> int:
    return x


@registry.activity()
async def fetch(url: str) -> bytes:
    return url.encode()


@registry.activity()
def with_context(context: ActivityContext, x: int) -> str:
    return str(x)


@registry.orchestrator()
def orch_taking_int(ctx: OrchestrationContext, x: int) -> Orchestrator[str]:
    doubled: int = yield ctx.call_activity(returns_int, x)
    return str(doubled)


def check(ctx: OrchestrationContext, client: DurableClient) -> None:
"""

ASYNC_PRELUDE = """
async def check_async(client: AsyncDurableClient) -> None:
"""

# (name, code, the error mypy must report or None for none)
CASES = [
    ("activity_task", "t: Task[int] = ctx.call_activity(returns_int, 1)", None),
    (
        "activity_wrong_result",
        "t: Task[str] = ctx.call_activity(returns_int, 1)",
        # mypy infers from the declared type, then finds the activity does not fit it
        'Argument 1 to "call_activity" of "OrchestrationContext" has incompatible type '
        '"Callable[[int], int]"',
    ),
    (
        "activity_wrong_input",
        'ctx.call_activity(returns_int, "one")',
        'Argument 1 to "call_activity" of "OrchestrationContext" has incompatible type',
    ),
    ("async_activity_task", 't: Task[bytes] = ctx.call_activity(fetch, "u")', None),
    (
        "async_activity_wrong_result",
        't: Task[str] = ctx.call_activity(fetch, "u")',
        'incompatible type "Callable[[str], Coroutine[Any, Any, bytes]]"',
    ),
    ("context_activity_task", "t: Task[str] = ctx.call_activity(with_context, 1)", None),
    (
        "context_activity_wrong_input",
        'ctx.call_activity(with_context, "one")',
        'Argument 1 to "call_activity"',
    ),
    (
        "activity_by_name",
        't: Task[int] = ctx.call_activity("returns_int", 1, result_type=int)',
        None,
    ),
    (
        "activity_by_name_wrong_result",
        't: Task[str] = ctx.call_activity("returns_int", 1, result_type=int)',
        'Argument "result_type" to "call_activity" of "OrchestrationContext" has incompatible '
        'type "type[int]"; expected "type[str]"',
    ),
    ("sub_orchestrator_task", "t: Task[str] = ctx.call_sub_orchestrator(orch_taking_int, 1)", None),
    (
        "sub_orchestrator_wrong_result",
        "t: Task[int] = ctx.call_sub_orchestrator(orch_taking_int, 1)",
        # its Orchestrator[str] does not fit Task[int]; mypy names the last overload tried
        'Incompatible types in assignment (expression has type "Task[object]", variable has '
        'type "Task[int]")',
    ),
    (
        "sub_orchestrator_wrong_input",
        'ctx.call_sub_orchestrator(orch_taking_int, "one")',
        'Argument 1 to "call_sub_orchestrator"',
    ),
    ("event_task", 't: Task[int] = ctx.wait_for_event("e", result_type=int)', None),
    (
        "event_wrong_result",
        't: Task[str] = ctx.wait_for_event("e", result_type=int)',
        'Argument "result_type" to "wait_for_event" of "OrchestrationContext" has incompatible '
        'type "type[int]"; expected "type[str]"',
    ),
    ("start", "i: str = client.start(orch_taking_int, 1)", None),
    ("start_wrong_input", 'client.start(orch_taking_int, "one")', 'Argument 1 to "start"'),
    ("run", "r: str = client.run(orch_taking_int, 1)", None),
    (
        "run_wrong_input",
        'client.run(orch_taking_int, "s")',
        'Argument 1 to "run" of "DurableClient" has incompatible type',
    ),
    (
        "run_wrong_result",
        "r: int = client.run(orch_taking_int, 1)",
        'Incompatible types in assignment (expression has type "str", variable has type "int")',
    ),
    ("run_by_name", 'r: int = client.run("orch", 1, result_type=int)', None),
    ("handle", 'r: str = client.handle(orch_taking_int, "id").result()', None),
    (
        "handle_wrong_result",
        'r: int = client.handle(orch_taking_int, "id").result()',
        'expression has type "str", variable has type "int"',
    ),
    ("decorated_call", "n: int = returns_int(1)", None),
    ("decorated_wrong_input", 'returns_int("one")', 'Argument 1 to "returns_int"'),
    ("async_run", "r: str = await client.run(orch_taking_int, 1)", None),
    ("async_run_wrong_input", 'await client.run(orch_taking_int, "s")', 'Argument 1 to "run"'),
    (
        "async_handle_wrong_result",
        'r: int = await client.handle(orch_taking_int, "id").result()',
        'expression has type "str", variable has type "int"',
    ),
]


def _program(name: str, code: str) -> str:
    body = textwrap.indent(code, "    ") + "\n"
    if name.startswith("async_") and "client." in code:
        return PRELUDE + "    pass\n" + ASYNC_PRELUDE + body
    return PRELUDE + body


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy's errors per case, from one run over every case's program."""
    directory = tmp_path_factory.mktemp("type_errors")
    root = Path(durable_fx.__file__).resolve().parents[1]
    config = directory / "mypy.ini"
    # This checkout's durable_fx, not whichever one the interpreter has installed.
    config.write_text(f"[mypy]\nstrict = true\nmypy_path = {root}\n")
    files = []
    for name, code, _expected in CASES:
        path = directory / f"case_{name}.py"
        path.write_text(_program(name, code))
        files.append(str(path))
    cache = directory / "cache"
    stdout, stderr, _status = api.run(
        ["--config-file", str(config), "--cache-dir", str(cache), "--no-error-summary", *files]
    )
    assert not stderr, stderr
    errors: dict[str, list[str]] = {name: [] for name, _code, _expected in CASES}
    for line in stdout.splitlines():
        found = re.match(r".*case_(\w+)\.py:\d+: error: (.*)", line)
        assert found or ": note:" in line, line
        if found:
            errors[found[1]].append(found[2])
    return errors


@pytest.mark.parametrize(("name", "code", "expected"), CASES, ids=[c[0] for c in CASES])
def test_mypy_reports_misuse_and_only_misuse(
    reported: dict[str, list[str]], name: str, code: str, expected: str | None
) -> None:
    errors = reported[name]
    if expected is None:
        assert errors == [], f"{code!r}: {errors}"
    else:
        assert any(expected in error for error in errors), f"{code!r}: {errors}"
