"""Test kit for durable_fx apps and stores.

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
from ._store_conformance import STORE_CHECKS, check_store
from ._store_harness import StoreCheck, StoreFactory

__all__ = ["STORE_CHECKS", "ManualClock", "StoreCheck", "StoreFactory", "check_store"]

# Show the public path in reprs, docs and tracebacks, not the private module.
for _exported in (ManualClock, check_store):
    _exported.__module__ = __name__
del _exported
