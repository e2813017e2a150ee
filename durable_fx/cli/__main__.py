"""``python -m durable_fx.cli``: the ``durable-fx`` command."""

from ._app import main

main()
