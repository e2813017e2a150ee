"""Timer-triggered functions for ``tests/test_timer_triggers.py`` under ``durable-fx serve``.

Each run appends one JSON line to the file ``TIMER_LOG`` names: which
function, which process, and what its ``func.TimerRequest`` said. ``app`` is
a ``DurableApp``, ``plain`` a plain ``func.FunctionApp``, ``broken`` an app
whose schedule cannot be read.
"""

from __future__ import annotations

import json
import os

import azure.functions as func

from durable_fx import DurableApp

app = DurableApp()
plain = func.FunctionApp()
broken = func.FunctionApp()


def _record(function: str, timer: func.TimerRequest) -> None:
    line = {
        "function": function,
        "pid": os.getpid(),
        "past_due": timer.past_due,
        "status": timer.schedule_status,
        "schedule": timer.schedule,
    }
    # One short O_APPEND write per run: lines from several processes do not interleave.
    with open(os.environ["TIMER_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


# Every second, with a monitor asked for: its status's Next names each occurrence.
@app.timer_trigger(schedule="00:00:01", arg_name="timer", use_monitor=True)
def every_second(timer: func.TimerRequest) -> None:
    _record("every_second", timer)


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
def on_startup(timer: func.TimerRequest) -> None:
    _record("on_startup", timer)


@plain.timer_trigger(schedule="*/1 * * * * *", arg_name="timer")
def plain_tick(timer: func.TimerRequest) -> None:
    _record("plain_tick", timer)


@broken.timer_trigger(schedule="every five minutes", arg_name="timer")
def nightly_report(timer: func.TimerRequest) -> None:
    _record("nightly_report", timer)
