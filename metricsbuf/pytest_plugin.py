"""pytest plugin providing the ``fake_metrics_service`` fixture (needs pytest and pytest-asyncio).

Enable it in a ``conftest.py``::

    pytest_plugins = ["metricsbuf.pytest_plugin"]

or on the command line with ``-p metricsbuf.pytest_plugin``. The fixture yields a running
`metricsbuf.testing.FakeMetricsService`, stopped after the test. Its options (the keyword
arguments of `FakeMetricsService`) come from an optional marker, or from indirect
parametrization, and can be changed in the test by assigning attributes::

    @pytest.mark.fake_metrics_service(throttle_rate=0.2, seed=3)
    async def test_it(fake_metrics_service):
        fake_metrics_service.latency = 0.01
        ...

    @pytest.mark.parametrize("fake_metrics_service", [{"reset_rate": 0.1}, {"latency": 0.05}], indirect=True)
    async def test_each(fake_metrics_service):
        ...

The marker is registered when the plugin is loaded from a ``conftest.py`` (``pytest_plugins``)
or with ``-p``; a test module that only imports the fixture should use the parametrization.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from .testing._server import FakeMetricsService

__all__ = ["fake_metrics_service"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_metrics_service`` marker."""
    config.addinivalue_line(
        "markers",
        "fake_metrics_service(**options): options for the fake_metrics_service fixture "
        "(the keyword arguments of metricsbuf.testing.FakeMetricsService)",
    )


@pytest_asyncio.fixture
async def fake_metrics_service(request: pytest.FixtureRequest) -> AsyncIterator[FakeMetricsService]:
    """A running `FakeMetricsService`; options from the marker, then from indirect parametrization."""
    marker = request.node.get_closest_marker("fake_metrics_service")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    options.update(getattr(request, "param", None) or {})
    async with FakeMetricsService(**options) as service:
        yield service
