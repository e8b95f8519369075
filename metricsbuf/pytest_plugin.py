"""pytest plugin providing the ``fake_metrics_service`` fixture (needs pytest and pytest-asyncio).

Enable it in a ``conftest.py``::

    pytest_plugins = ["metricsbuf.pytest_plugin"]

or on the command line with ``-p metricsbuf.pytest_plugin``. The fixture yields a running
`metricsbuf.testing.FakeMetricsService`, stopped after the test. Its options come from an
optional marker; they can also be changed in the test by assigning attributes::

    @pytest.mark.fake_metrics_service(throttle_rate=0.2, seed=3)
    async def test_it(fake_metrics_service):
        fake_metrics_service.latency = 0.01
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ._fake_service import FakeMetricsService

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
    """A running `FakeMetricsService`; options from ``@pytest.mark.fake_metrics_service(...)``."""
    marker = request.node.get_closest_marker("fake_metrics_service")
    options = dict(marker.kwargs) if marker is not None else {}
    async with FakeMetricsService(**options) as service:
        yield service
