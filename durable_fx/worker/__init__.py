"""The runtime: a ``Worker`` locks work from a store, replays orchestrators and runs activities.

The pieces it is built from (the orchestration and activity runners, the pure
episode planner, result batches, back-off) are shared with the Functions
bindings and the gRPC sidecar.
"""

from ._worker import Worker

__all__ = ["Worker"]
