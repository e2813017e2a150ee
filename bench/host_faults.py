"""The host-mode fault soak at full size: what it costs to survive faults, kills and an outage.

    python bench/host_faults.py [--outage 120] [--orchestrations 100] [--out FILE]

Runs ``tests/support/host_faults.soak`` on a private Azurite (the scenario of
``tests/test_host_faults.py``, whose outage is 10 s): two app instances under a
host that follows the Functions host's queue rules, 7 % of the app's storage
requests failing (half after they applied), one request in 250 killing its
instance, 2 % of the host's deletes lost, and storage unreachable for
``--outage`` seconds from 4 s after the start. Prints the soak's figures: jobs
completed with the right result, faults, kills by the request they hit, host
failures and poisoned messages (both must be 0), activity re-runs, and how long
the queues took to run empty once the faults stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from _report import dump, header  # noqa: E402

from tests.support.azurite import AzuriteProcess  # noqa: E402
from tests.support.host_faults import soak  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage", type=float, default=120.0, help="seconds")
    parser.add_argument("--orchestrations", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds")
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="durable_fx-azurite-") as workdir:
        process = AzuriteProcess(Path(workdir))
        try:
            figures = asyncio.run(
                soak(
                    process.azurite,
                    orchestrations=args.orchestrations,
                    outage_seconds=args.outage,
                    timeout=args.timeout,
                )
            )
        finally:
            process.stop()
    document = {
        **header("host mode under storage faults, killed instances and an outage"),
        "figures": figures.summary(),
        "met": not figures.stuck
        and not figures.wrong_outputs
        and figures.completed == figures.orchestrations
        and not figures.host_poisoned
        and not figures.store_poisoned
        and figures.seconds_to_settle is not None,
    }
    print(dump(document, args.out))


if __name__ == "__main__":
    main()
