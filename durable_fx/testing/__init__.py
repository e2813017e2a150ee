"""Test kit for durable_fx apps and stores.

``TestEnvironment`` runs an app on a memory store and a worker whose clock
skips ahead to the next timer whenever nothing can run, so a test of a
24-hour timeout takes milliseconds; ``override`` swaps an activity for a
fake::

    from durable_fx.testing import TestEnvironment

    with TestEnvironment(app) as env:
        env.override(send_email, lambda command: SendResult(...))
        instance_id = env.sync_client.start(email_delivery, job)
        assert env.sync_client.wait(instance_id).output["status"] == "escalated"

``HistoryBuilder`` writes histories by hand for golden replay tests of the
``Replayer``. The pytest plugin (``durable_fx.pytest_plugin``,
registered as a ``pytest11`` entry point) gives tests a ``durable_env``
fixture.

``ManualClock`` moves time only when told to, so leases, timers and retries
expire exactly when a test says. ``check_store(factory)`` runs the store
conformance suite, the guarantees of the storage contract, against any Store
implementation::

    import asyncio
    from durable_fx.storage.memory import MemoryStore
    from durable_fx.testing import check_store

    asyncio.run(check_store(lambda clock: MemoryStore(clock=clock)))

``STORE_CHECKS`` lists the individual checks, for running them as separate
(parametrized) tests.
"""

from __future__ import annotations

from ._clock import ManualClock
from ._environment import TestEnvironment
from ._history_builder import HistoryBuilder
from ._store_conformance import STORE_CHECKS, check_store
from ._store_harness import StoreCheck, StoreFactory

__all__ = [
    "STORE_CHECKS",
    "HistoryBuilder",
    "ManualClock",
    "StoreCheck",
    "StoreFactory",
    "TestEnvironment",
    "check_store",
]

# Show the public path in reprs, docs and tracebacks, not the private module.
for _exported in (HistoryBuilder, ManualClock, TestEnvironment, check_store):
    _exported.__module__ = __name__
del _exported
