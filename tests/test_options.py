"""MetricsLogger's explicit signature and LoggerOptions name the same options."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from metricsbuf import InvalidMetricError, MetricsLogger
from metricsbuf._options import LoggerOptions


def test_the_signature_names_exactly_the_fields_of_logger_options() -> None:
    # MetricsLogger.__init__ builds its options from locals(): a field missing from the
    # signature would raise KeyError, and an option missing from the fields would be ignored.
    parameters = list(inspect.signature(MetricsLogger.__init__).parameters)
    assert parameters[:2] == ["self", "trial_component_name"]
    assert parameters[2:] == [field.name for field in dataclasses.fields(LoggerOptions)]


def test_options_reach_the_logger_as_given() -> None:
    metrics = MetricsLogger("run-1", max_batch_size=3, flush_interval=0.5, on_full="raise", offline=False)
    options = metrics._options
    assert (options.max_batch_size, options.flush_interval, options.on_full) == (3, 0.5, "raise")
    assert options.close_timeout == 30.0  # a default


def test_the_adaptive_rate_is_off_unless_asked_for() -> None:
    assert MetricsLogger("run-1")._sender.adaptive_rate is False
    assert MetricsLogger("run-1", adaptive_rate=True)._sender.adaptive_rate is True


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_adaptive_rate_must_be_a_bool(value: object) -> None:
    with pytest.raises(InvalidMetricError, match=r"adaptive_rate must be True or False, got"):
        MetricsLogger("run-1", adaptive_rate=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["false", 0, None])
def test_offline_must_be_a_bool(value: object, tmp_path: object) -> None:
    # offline="false" from a config file used to mean True (bool("false")): a logger that
    # silently never sent anything.
    with pytest.raises(InvalidMetricError, match=r"offline must be True or False, got"):
        MetricsLogger("run-1", spool_dir=str(tmp_path), offline=value)  # type: ignore[arg-type]
