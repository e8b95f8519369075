"""What the adapters share: what counts as a metric, names, the logger's ownership."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recording import RecordingLogger

from metricsbuf import InvalidMetricError
from metricsbuf.integrations import rank_suffixed
from metricsbuf.integrations._common import MetricsWriter, metric_value


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (0.5, 0.5),
        (np.float32(0.25), 0.25),
        (np.int64(3), 3.0),
        (torch.tensor(1.5), 1.5),
        (torch.tensor([2.0]), 2.0),
        (np.array([[4.0]]), 4.0),
        (True, None),
        (np.bool_(True), None),
        (torch.tensor(True), None),
        ("1.0", None),
        (None, None),
        (torch.ones(2), None),
        (np.ones(3), None),
        (10**400, None),
        (1 + 2j, None),
    ],
)
def test_metric_value(value: object, expected: float | None) -> None:
    assert metric_value(value) == expected


def test_nan_is_a_metric_for_the_loggers_non_finite_policy() -> None:
    result = metric_value(float("nan"))
    assert result is not None and result != result


def test_rank_suffixed_names_stay_within_the_service_rules() -> None:
    assert rank_suffixed("loss", 3) == "loss[rank=3]"
    writer = MetricsWriter(
        "test", logger=RecordingLogger(), trial_component_name=None, options={}, prefix="", all_ranks=True
    )
    # 250 characters fit alone but not with "[rank=12]": skipped, not sent, training goes on.
    assert writer.write({"a" * 250: 1.0, "b": 2.0}, 1, rank=12) == {"b[rank=12]": 2.0}


def test_the_callers_logger_is_flushed_and_never_closed() -> None:
    logger = RecordingLogger()
    writer = MetricsWriter(
        "test", logger=logger, trial_component_name=None, options={}, prefix="", all_ranks=False
    )
    writer.write({"loss": 1.0}, 1)
    writer.end_run()
    writer.end_run()
    writer.write({"eval_loss": 2.0}, 2, in_run=False)
    assert logger.calls == ["log_many", "flush", "flush", "log_many", "flush"]
    assert not logger.closed


def test_refuses_a_logger_without_the_contracts_methods() -> None:
    with pytest.raises(InvalidMetricError, match="lacks log_many, flush, close"):
        MetricsWriter(
            "test", logger=object(), trial_component_name=None, options={}, prefix="", all_ranks=False
        )  # type: ignore[arg-type]
