"""Process death and two worker processes, on Azurite: the SQLite durability tests, reused.

The tests of ``test_crash_recovery`` and ``test_multiprocess`` are imported and
run again here with ``store_url`` naming a fresh task hub on the session's
Azurite, so both stores are held to the very same assertions.
"""

from __future__ import annotations

import pytest

from tests.support.azurite import Azurite, new_hub
from tests.test_crash_recovery import (  # noqa: F401 (fixtures and tests, collected here)
    client,
    ledger,
    test_a_long_activity_killed_mid_run_resumes_from_its_last_saved_heartbeat,
    test_worker_killed_mid_activity_loses_nothing_and_reruns_only_unrecorded_work,
    test_worker_killed_while_orchestrations_wait_on_timers_and_events,
    workers,
)
from tests.test_multiprocess import (  # noqa: F401
    test_two_worker_processes_share_one_file_without_losing_or_doubling_work,
)

pytestmark = [pytest.mark.slow, pytest.mark.azurite]


@pytest.fixture
def store_url(azurite: Azurite) -> str:
    return azurite.connection_string(new_hub())
