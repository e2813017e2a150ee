"""The ``durable-fx`` command line (needs ``typer`` and ``rich``).

``main`` is the console script; ``python -m durable_fx.cli`` runs it too.
"""

from ._app import app, main

__all__ = ["app", "main"]
