"""The gRPC sidecar: the Durable Task protocol on durable_fx stores.

``SidecarServer`` serves ``TaskHubSidecarService`` of the Durable Task
protobuf, so the official SDKs' clients and workers (``durabletask`` for
Python, and the .NET, Java and JavaScript SDKs) run on a durable_fx store:
the orchestrator code runs in the SDK's process, and every episode it
completes is committed through the same Store protocol and storage contract
as durable_fx's own worker. ``durable-fx sidecar`` runs one from the command
line. Needs the ``sidecar`` extra (``pip install 'durable-fx[sidecar]'``).
"""

from ._server import SidecarServer

__all__ = ["SidecarServer"]
