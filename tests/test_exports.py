"""The public surface is exactly what __all__ says (as httpx and anyio keep theirs honest)."""

from __future__ import annotations

import metricsbuf
import metricsbuf.testing


def test_all_names_exist_and_are_sorted() -> None:
    for name in metricsbuf.__all__:
        assert hasattr(metricsbuf, name), name
    assert metricsbuf.__all__ == sorted(metricsbuf.__all__)


def test_public_names_are_in_all() -> None:
    public = {n for n in vars(metricsbuf) if not n.startswith("_")} - {
        "testing",
        "pytest_plugin",
        "integrations",
    }
    assert public <= set(metricsbuf.__all__)


def test_exception_tree() -> None:
    assert issubclass(metricsbuf.InvalidMetricError, metricsbuf.MetricsBufError)
    assert issubclass(metricsbuf.InvalidMetricError, ValueError)
    for exc in (
        metricsbuf.BufferFullError,
        metricsbuf.LoggerClosedError,
        metricsbuf.TrialComponentNotFoundError,
        metricsbuf.SageMakerJobError,
    ):
        assert issubclass(exc, metricsbuf.MetricsBufError)


def test_contract_names_are_exported() -> None:
    for name in (
        "MetricsLogger",
        "MetricsStats",
        "FailedMetric",
        "MetricsBufError",
        "InvalidMetricError",
        "BufferFullError",
        "LoggerClosedError",
        "SyncMetricsLogger",
        "drain_on_sigterm",
    ):
        assert name in metricsbuf.__all__


def test_failure_codes_are_exported() -> None:
    for code in ("CLOSE_TIMEOUT", "DELIVERY_TIMEOUT", "FLUSHER_CRASHED", "SPOOL_CORRUPT", "SPOOL_ERROR"):
        assert getattr(metricsbuf, code) == code


def test_testing_surface_is_exactly_its_all() -> None:
    testing = metricsbuf.testing
    for name in testing.__all__:
        assert hasattr(testing, name), name
    assert testing.__all__ == sorted(testing.__all__)
    own = {
        name
        for name, value in vars(testing).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("metricsbuf.")
    }
    assert own <= set(testing.__all__)
