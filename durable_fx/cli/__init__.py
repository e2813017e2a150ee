"""The ``durable-fx`` command line (needs ``typer`` and ``rich``).

``main`` is the console script; ``python -m durable_fx.cli`` runs it too.
``render_timeline`` draws an instance's history as ``durable-fx history`` does.
"""

from ._app import app, main
from ._timeline import render_timeline

__all__ = ["app", "main", "render_timeline"]
