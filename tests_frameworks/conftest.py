"""Fixtures for the framework adapters' tests: real frameworks, a recording logger.

These tests need the frameworks (``pip install -e ".[frameworks]"``) and are run on their own:
``python -m pytest -q tests_frameworks``.

Swapping in the real logger: ``metrics_logger`` is the one place that makes the logger the
adapters are given; the tests read what it received from its ``points`` (name, value, step).
``sync_metrics_logger_class`` is what an adapter building its own logger gets as
``metricsbuf.SyncMetricsLogger``.
"""

from __future__ import annotations

import os

# Keras picks its backend once, when first imported: torch, which the other frameworks bring.
os.environ["KERAS_BACKEND"] = "torch"

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from recording import RecordingLogger  # noqa: E402

import metricsbuf  # noqa: E402

# The suite turns warnings into errors (pyproject.toml). These come from the frameworks
# themselves, about their own code or the tiny data here, not from metricsbuf: let them pass.
FRAMEWORK_WARNINGS = [
    # Lightning 2.6 on torch 2.13 (lightning/pytorch/utilities/_pytree.py).
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning",
    # Lightning's "could be a false positive" advice about the tiny setups here ("does not have
    # many workers", "validation_step but no val_dataloader"), from both of its packages.
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore::lightning_fabric.utilities.warnings.PossibleUserWarning",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for spec in FRAMEWORK_WARNINGS:
            item.add_marker(pytest.mark.filterwarnings(spec))


@pytest.fixture
def metrics_logger() -> Iterator[RecordingLogger]:
    """The logger handed to an adapter with ``logger=``."""
    with RecordingLogger("frameworks-test") as logger:
        yield logger


@pytest.fixture
def sync_metrics_logger_class(monkeypatch: pytest.MonkeyPatch) -> type[RecordingLogger]:
    """Stands in for ``metricsbuf.SyncMetricsLogger``; ``RecordingLogger.built`` lists the instances."""
    RecordingLogger.built.clear()
    monkeypatch.setattr(metricsbuf, "SyncMetricsLogger", RecordingLogger, raising=False)
    return RecordingLogger
