"""pytest plugin: a ``durable_env`` fixture, a ``TestEnvironment`` running your app.

Installed with durable-fx (a ``pytest11`` entry point), so there is nothing to
configure but the app: define a ``durable_app`` fixture that returns it::

    # conftest.py
    @pytest.fixture
    def durable_app():
        return app

    # test_orders.py
    def test_an_unpaid_order_is_cancelled_after_a_day(durable_env):
        instance_id = durable_env.sync_client.start(order, {"id": 7})
        state = durable_env.sync_client.wait(instance_id)  # the day passes in milliseconds
        assert state.output == "cancelled"

``@pytest.mark.durable_env(time_skipping=False, start=...)`` passes options
to the environment. Without the entry point (a source checkout), load the
plugin with ``-p durable_fx.pytest_plugin``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import TestEnvironment

__all__ = ["durable_app", "durable_env", "pytest_configure"]


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``durable_env`` marker (``--strict-markers`` accepts it then)."""
    config.addinivalue_line(
        "markers",
        "durable_env(**options): options for the durable_env fixture's TestEnvironment "
        "(time_skipping=False, start=datetime(...))",
    )


@pytest.fixture
def durable_app() -> Any:
    """The app ``durable_env`` runs: override this fixture to return yours."""
    pytest.fail(
        "the durable_env fixture runs your app: define a durable_app fixture "
        "(in conftest.py, say) that returns your DurableApp or Registry",
        pytrace=False,
    )


@pytest.fixture
def durable_env(request: pytest.FixtureRequest, durable_app: Any) -> Iterator[TestEnvironment]:
    """A started ``TestEnvironment`` for ``durable_app`` (time skipping on unless marked)."""
    # Imported here, not with the plugin (which pytest loads before any conftest):
    # a conftest may still register durable_fx.testing for assertion rewriting.
    from .testing import TestEnvironment

    marker = request.node.get_closest_marker("durable_env")
    options = dict(marker.kwargs) if marker is not None else {}
    with TestEnvironment(durable_app, **options) as env:
        yield env
